"""Can the vocabulary projection read fewer bytes and keep its logits?
(issue 30; docs/performance.md, "Fewer bytes, the same logits?")

Runs Whisper tiny.en greedily with onnxruntime on talkie's int8 graphs
(whisper_ref.py) over every third dev clip and, at each decoder step,
quantizes the hidden state to 15 bits as talkie's kernels do
(speech/src/stt/dot.rs, `Hidden`), then asks two questions of talkie's
int8 vocabulary rows `q` (q = 16 n + r, n the high nibble in -8..7, r
the low one in 0..15):

- how wide is the exact bound on a logit that reading only the high
  nibbles gives (16 n.h plus r.h in [15 sum(h<0), 15 sum(h>0)], or
  Cauchy-Schwarz on r - 7.5 with each row's norm), i.e. how many rows
  such a first pass could skip without changing a logit that matters;
- how many rows lie within 20 (natural-log units) of the step's top
  logit, i.e. carry weight in the log-softmax talkie takes over the
  whole vocabulary (scores, no-speech probability).

usage: python projection_bounds.py MODELS_DIR EVAL_DIR
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whisper_ref as W  # noqa: E402


def main():
    models, evals = sys.argv[1], sys.argv[2]
    enc, dec, tok, vocab = W.load(models, threads=2, suffix="_int8")
    q = np.load(os.path.join(models, "whisper_vocab_int8.npy")).astype(np.int64)
    scale = vocab.scale.astype(np.float64)
    n4, r4 = q >> 4, q & 15
    r_norm = np.sqrt(((r4 - 7.5) ** 2).sum(1))
    rows = []
    project = vocab.logits

    def observe(hidden):
        h = hidden[0].reshape(-1).astype(np.float64)
        hs = np.abs(h).max() / 16383
        hq = np.round(h / hs).astype(np.int64)
        exact = (q @ hq) * hs * scale
        high = 16 * (n4 @ hq)
        lo = (high + 15 * hq[hq < 0].sum()) * hs * scale
        hi = (high + 15 * hq[hq > 0].sum()) * hs * scale
        mid = high + 7.5 * hq.sum()
        rad = r_norm * np.sqrt((hq.astype(np.float64) ** 2).sum())
        lo2, hi2 = (mid - rad) * hs * scale, (mid + rad) * hs * scale
        top = exact.max()
        rows.append([top, np.median(exact), (hi - lo).max(), (hi2 - lo2).max(),
                     (hi >= lo.max()).sum(), (hi2 >= lo2.max()).sum(),
                     (exact >= top - 20).sum()])
        return project(hidden)

    vocab.logits = observe
    for i in range(0, 30, 3):
        audio = W.read_wav_16k(os.path.join(evals, f"dev_{i:02d}.wav"))
        print(f"dev_{i:02d}: {W.transcribe(enc, dec, tok, vocab, audio)}", flush=True)
    s = np.array(rows, dtype=np.float64)
    print(f"{len(s)} decoder steps, {len(q)} rows")
    names = ["top logit", "median logit", "nibble bound, widest row", "Cauchy-Schwarz, widest row",
             "rows the nibble bound keeps", "rows Cauchy-Schwarz keeps", "rows within 20 of the top"]
    for j, name in enumerate(names):
        print(f"{name:>28}: median {np.median(s[:, j]):9.1f}  min {s[:, j].min():9.1f}  max {s[:, j].max():9.1f}")


if __name__ == "__main__":
    main()
