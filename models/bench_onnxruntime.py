"""onnxruntime running talkie's own ONNX files (the numpy reference decoder
in whisper_ref.py: same log-mel, same 512-frame encoder margin, same greedy
loop and guards), for the side-by-side numbers in `make bench`.

usage: bench_onnxruntime.py MODELS_DIR EVAL_DIR THREADS OUT_JSON

No VAD trim (talkie trims leading/trailing silence first), so its input is
the whole clip. Writes per-file seconds and text plus WER (Whisper's
EnglishTextNormalizer + jiwer), and the graphs' own time: encoder ms per
clip and decoder-graph ms per step (the session runs alone, without the
numpy vocabulary projection), which `make bench` sets beside talkie's.
"""
import csv, json, os, sys, time

import onnxruntime as ort

import whisper_ref
from wer import score


class Timed:
    """An onnxruntime session that adds up the time of its runs."""

    def __init__(self, session):
        self.session, self.seconds, self.runs = session, 0.0, 0

    def run(self, *args, **kwargs):
        t0 = time.perf_counter()
        out = self.session.run(*args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.runs += 1
        return out


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
    enc, dec = Timed(enc), Timed(dec)
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
        "encoder_ms_per_clip": 1e3 * enc.seconds / max(enc.runs, 1),
        "decoder_graph_ms_per_step": 1e3 * dec.seconds / max(dec.runs, 1),
        "decoder_steps": dec.runs,
        "files": files,
    }
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"onnxruntime {ort.__version__} on talkie's ONNX ({threads} thread(s)): "
          f"mean {result['mean_ms']:.0f} ms, WER {100 * result['wer']:.1f} %, encoder "
          f"{result['encoder_ms_per_clip']:.1f} ms/clip, decoder graph {result['decoder_graph_ms_per_step']:.2f} ms/step")


if __name__ == "__main__":
    main()
