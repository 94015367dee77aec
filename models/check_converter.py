"""The converter's self-check: talkie's fp32 ONNX files give the same
transcripts as faster-whisper on the same CTranslate2 weights.

usage: check_converter.py MODELS_DIR WHEEL EVAL_DIR [OUT_JSON]

Both sides decode alike, so any difference is the conversion's: the same
30 s encoder input (faster-whisper's: the audio's log-mel frames padded
with 0.0 to 3000, whisper_ref.log_mel_whisper_padding), greedy, no
timestamps, no VAD, the model's suppress_ids; faster-whisper in float32
(the wheel's float16 weights widened, as the converter does), onnxruntime
running the ONNX graphs with the numpy reference decoder (whisper_ref.py).
Prints one line per clip that differs and a summary. Where the texts
differ, faster-whisper's tokens are fed to the ONNX decoder and the first
token where the two disagree is scored: the logit gap between the ONNX
graph's choice and faster-whisper's. Two correct implementations of the
same weights differ only on near-ties (float32 sums in another order);
exits 1 if any gap is over TIE_GAP. Needs faster-whisper (make bench-tools).

The fp16 files (whisper_*_f16.onnx, when MODELS_DIR has them) are checked
the same way against talkie's fp32 files: same window, same decoder; where
a transcript differs, fp32's tokens are forced through the fp16 graphs and
the first disagreement must be a near-tie (≤ TIE_GAP). The firmware offers
fp16 only on CPUs with native fp16 arithmetic (aarch64 asimdhp), where
`make cross-test` checks tract's fp16 kernels on three clips; this check
covers every dev clip with onnxruntime on the build machine.
"""
import csv, json, os, sys, tempfile, zipfile

from faster_whisper import WhisperModel

import whisper_ref

TIE_GAP = 0.5  # logits (natural-log units) between the two top choices


def first_divergence(enc, dec, vocab, mel, forced):
    """Force `forced` (faster-whisper's tokens, then EOT) through the ONNX
    decoder; (index, our token, its token, logit gap) at the first step
    where the greedy choice differs, or None."""
    forced = list(forced) + [whisper_ref.EOT]
    found = []

    def pick(logits, out):
        k = len(out)
        if k >= len(forced) or found:
            return None
        ours = int(logits.argmax())
        if ours != forced[k]:
            found.append((k, ours, forced[k], float(logits[ours] - logits[forced[k]])))
            return None
        return None if forced[k] == whisper_ref.EOT else forced[k]
    whisper_ref.decode(enc, dec, vocab, mel, len(forced), pick)
    return found[0] if found else None


def main():
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    models, wheel, eval_dir = sys.argv[1:4]
    with open(os.path.join(eval_dir, "manifest.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if "/model/" in m]
            z.extractall(tmp, members)
        fw = WhisperModel(os.path.join(tmp, os.path.dirname(members[0])), device="cpu",
                          compute_type="float32", cpu_threads=2, num_workers=1)
        enc, dec, tok, vocab = whisper_ref.load(models, threads=2)
        f16 = None
        if os.path.exists(os.path.join(models, "whisper_encoder_f16.onnx")):
            f16 = whisper_ref.load(models, threads=2, suffix="_f16")[:2]
        f16_same, f16_worst, f16_rows = 0, 0.0, []
        results, same, worst = [], 0, 0.0
        for i, r in enumerate(rows):
            audio = whisper_ref.read_wav_16k(os.path.join(eval_dir, r["file"]))
            segs, _ = fw.transcribe(audio, language="en", beam_size=1, best_of=1, temperature=0.0,
                                    vad_filter=False, without_timestamps=True,
                                    condition_on_previous_text=False)
            segs = list(segs)
            want = " ".join(s.text.strip() for s in segs).strip()
            mel = whisper_ref.log_mel_whisper_padding(audio)
            tokens = whisper_ref.transcribe_tokens(enc, dec, vocab, audio, max_tokens=224, mel=mel)
            got = tok.decode(tokens).strip()
            same += got == want
            row = {"file": r["file"], "faster_whisper": want, "onnx": got}
            if got != want:
                fw_tokens = [t for s in segs for t in s.tokens if t < whisper_ref.EOT]
                d = first_divergence(enc, dec, vocab, mel, fw_tokens)
                gap = d[3] if d else 0.0
                worst = max(worst, gap)
                row["first_divergence"] = d
                print(f"differs: {r['file']}\n  faster-whisper: {want!r}\n  talkie ONNX:    {got!r}\n"
                      f"  first different token: #{d[0] if d else '-'}, ONNX {d[1] if d else '-'} vs "
                      f"faster-whisper {d[2] if d else '-'}, logit gap {gap:.3f}", flush=True)
            results.append(row)
            if f16:
                got16 = tok.decode(whisper_ref.transcribe_tokens(*f16, vocab, audio, max_tokens=224, mel=mel)).strip()
                f16_same += got16 == got
                row16 = {"file": r["file"], "fp32": got, "fp16": got16}
                if got16 != got:
                    d = first_divergence(*f16, vocab, mel, tokens)
                    gap = d[3] if d else 0.0
                    f16_worst = max(f16_worst, gap)
                    row16["first_divergence"] = d
                    print(f"fp16 differs: {r['file']}\n  fp32: {got!r}\n  fp16: {got16!r}\n"
                          f"  logit gap at the first different token {gap:.3f}", flush=True)
                f16_rows.append(row16)
            if (i + 1) % 10 == 0 or i + 1 == len(rows):
                print(f"check: {i + 1}/{len(rows)} clips", file=sys.stderr, flush=True)
    ok = worst <= TIE_GAP
    print(f"converter check: {same} of {len(rows)} transcripts identical to faster-whisper (fp32, 30 s window); "
          f"largest logit gap where they differ {worst:.3f} (near-tie if ≤ {TIE_GAP}): {'ok' if ok else 'FAILED'}")
    report = {"identical": same, "clips": len(rows), "largest_gap": worst, "ok": ok, "files": results}
    if f16:
        ok16 = f16_worst <= TIE_GAP
        print(f"fp16 check: {f16_same} of {len(rows)} fp16 transcripts identical to fp32 (same window); "
              f"largest logit gap where they differ {f16_worst:.3f} (near-tie if ≤ {TIE_GAP}): "
              f"{'ok' if ok16 else 'FAILED'}")
        report["fp16"] = {"identical": f16_same, "largest_gap": f16_worst, "ok": ok16, "files": f16_rows}
        ok = ok and ok16
    if len(sys.argv) == 5:
        with open(sys.argv[4], "w") as f:
            json.dump(report, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
