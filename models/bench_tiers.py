"""WER per recognizer tier in three listening conditions, beside
faster-whisper tiny.en, in one run (issue 31's table).

usage: bench_tiers.py TALKIE MODEL_WHEEL EVAL_DIR OUT_DIR

Conditions made from EVAL_DIR (its manifest's 16 kHz WAVs), fixed seed:
`clean`; `pink10`: pink noise (1/f, Voss-McCartney-free FFT shaping) added
at 10 dB SNR over the whole clip; `quiet30`: the clip 30 dB quieter. Each
tier is `talkie transcribe --json --set stt.model=TIER` over every clip
(VAD trim included, as a press); faster-whisper tiny.en int8 greedy on the
same files (bench_faster_whisper.py). Writes OUT_DIR/tiers.json and
OUT_DIR/tiers.md: WER per tier and condition, × faster-whisper's, mean
milliseconds per clip, and the peak RSS of each talkie run.
"""
import csv, json, os, re, subprocess, sys, wave

import numpy as np

from wer import score

TIERS = ["whisper-tiny", "moonshine-base", "agreement"]
SEED = 31


def read(path):
    with wave.open(path, "rb") as w:
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64) / 32768.0


def write(path, x):
    pcm = np.clip(np.round(x * 32767.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())


def pink(n, rng):
    """Pink noise: white noise shaped by 1/sqrt(f) in the frequency domain."""
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    x = np.fft.irfft(spec / np.sqrt(f), n)
    return x / np.sqrt(np.mean(x * x))


def conditions(eval_dir, out):
    with open(os.path.join(eval_dir, "manifest.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rng = np.random.default_rng(SEED)
    made = {}
    for cond in ["clean", "pink10", "quiet30"]:
        d = os.path.join(out, cond)
        os.makedirs(d, exist_ok=True)
        for r in rows:
            x = read(os.path.join(eval_dir, r["file"]))
            if cond == "pink10":
                p = np.sqrt(np.mean(x * x))
                x = x + pink(len(x), rng) * p / 10 ** (10 / 20)
            elif cond == "quiet30":
                x = x * 10 ** (-30 / 20)
            write(os.path.join(d, r["file"]), x)
        with open(os.path.join(d, "manifest.tsv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=rows[0].keys(), delimiter="\t")
            w.writeheader()
            w.writerows(rows)
        made[cond] = (d, rows)
    return made


def run_talkie(talkie, tier, d, rows, config):
    files = [os.path.join(d, r["file"]) for r in rows]
    cmd = ["/usr/bin/time", "-f", "maxrss_kb=%M", talkie, "--config", config, "transcribe", "--json",
           "--set", f"stt.model={tier}", "--set", f"stt.calibration_file={d}/../calibration-{tier}.json"] + files
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"talkie transcribe ({tier}) failed:\n{p.stderr[-2000:]}")
    out = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    rss = re.search(r"maxrss_kb=(\d+)", p.stderr)
    return out, int(rss.group(1)) / 1024 if rss else float("nan")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    talkie, wheel, eval_dir, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    config = os.path.join(out, "talkie.toml")
    with open(config, "w") as f:
        f.write('[device]\nid = "bench-tiers"\n')
    made = conditions(eval_dir, os.path.join(out, "conditions"))
    here = os.path.dirname(os.path.abspath(__file__))
    result = {"conditions": list(made), "tiers": {}, "faster_whisper": {}}
    for cond, (d, rows) in made.items():
        fw = os.path.join(out, f"faster_whisper_{cond}.json")
        subprocess.run([sys.executable, os.path.join(here, "bench_faster_whisper.py"), wheel, d, "1", fw], check=True,
                       stderr=subprocess.DEVNULL)
        result["faster_whisper"][cond] = json.load(open(fw))["wer"]
        refs = {r["file"]: r["transcript"] for r in rows}
        for tier in TIERS:
            lines, rss = run_talkie(talkie, tier, d, rows, config)
            wer = score([refs[os.path.basename(l["file"])] for l in lines], [l["text"] for l in lines])
            won = {}
            for l in lines:
                a = l.get("agreement")
                if a:
                    won[a["winner"]] = won.get(a["winner"], 0) + 1
            t = result["tiers"].setdefault(tier, {})
            t[cond] = {"wer": wer, "mean_ms": float(np.mean([l["total_ms"] for l in lines])), "peak_rss_mb": rss,
                       "winners": won}
            print(f"tiers: {cond} {tier}: WER {100 * wer:.1f} % ({100 * result['faster_whisper'][cond]:.1f} % "
                  f"faster-whisper), {t[cond]['mean_ms']:.0f} ms/clip, {rss:.0f} MB {won or ''}", flush=True)
    with open(os.path.join(out, "tiers.json"), "w") as f:
        json.dump(result, f, indent=1)
    conds = list(made)
    md = ["| tier | " + " | ".join(f"{c} WER %" for c in conds) + " | × faster-whisper (mean of conditions) | ms per clip (clean) | peak RSS MB |",
          "|---|" + "---|" * (len(conds) + 3)]
    fwr = result["faster_whisper"]
    md.append("| faster-whisper tiny.en int8 | " + " | ".join(f"{100 * fwr[c]:.1f}" for c in conds) + " | 1.00 | | |")
    for tier, t in result["tiers"].items():
        ratio = np.mean([t[c]["wer"] / fwr[c] for c in conds if fwr[c] > 0])
        md.append(f"| {tier} | " + " | ".join(f"{100 * t[c]['wer']:.1f}" for c in conds) +
                  f" | {ratio:.2f} | {t['clean']['mean_ms']:.0f} | {max(t[c]['peak_rss_mb'] for c in conds):.0f} |")
    with open(os.path.join(out, "tiers.md"), "w") as f:
        f.write("# Recognizer tiers (issue 31)\n\n" + "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
