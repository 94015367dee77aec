"""onnxruntime running talkie's own ONNX files (the numpy reference decoder
in whisper_ref.py: same log-mel, same 512-frame encoder margin, same greedy
loop and guards), for the side-by-side numbers in `make bench`.

usage: bench_onnxruntime.py MODELS_DIR EVAL_DIR THREADS OUT_JSON

No VAD trim (talkie trims leading/trailing silence first), so its input is
the whole clip. Writes per-file seconds and text plus WER (Whisper's
EnglishTextNormalizer + jiwer).
"""
import csv, json, os, sys, time

import onnxruntime as ort

import whisper_ref
from wer import score


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    models, eval_dir, threads, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    whisper_ref.MARGIN = 512  # talkie's default stt.encoder_margin_frames
    enc, dec, tok, vocab = whisper_ref.load(models, threads)
    with open(os.path.join(eval_dir, "manifest.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    audios = [whisper_ref.read_wav_16k(os.path.join(eval_dir, r["file"])) for r in rows]
    whisper_ref.transcribe(enc, dec, tok, vocab, audios[0])  # warm-up
    files = []
    for r, audio in zip(rows, audios):
        t0 = time.perf_counter()
        text = whisper_ref.transcribe(enc, dec, tok, vocab, audio)
        files.append({"file": r["file"], "audio_s": len(audio) / 16000, "seconds": time.perf_counter() - t0,
                      "text": text, "reference": r["transcript"]})
    result = {
        "engine": "onnxruntime", "version": ort.__version__, "threads": threads,
        "mean_ms": 1e3 * sum(f["seconds"] for f in files) / len(files),
        "wer": score([f["reference"] for f in files], [f["text"] for f in files]),
        "files": files,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"onnxruntime {ort.__version__} on talkie's ONNX ({threads} thread(s)): "
          f"mean {result['mean_ms']:.0f} ms, WER {100 * result['wer']:.1f} %")


if __name__ == "__main__":
    main()
