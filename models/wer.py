"""Word error rate as shared/eval/README.md defines it: both sides through
Whisper's EnglishTextNormalizer (PyPI whisper-normalizer), then jiwer.wer
over the whole set.

usage: wer.py EVAL_DIR TALKIE_JSONL   (lines from `talkie transcribe --json`)
"""
import csv, json, os, sys

import jiwer
from whisper_normalizer.english import EnglishTextNormalizer

_norm = EnglishTextNormalizer()


def score(references, hypotheses):
    refs = [_norm(r) for r in references]
    hyps = [_norm(h) for h in hypotheses]
    return jiwer.wer(refs, hyps)


def main():
    eval_dir, jsonl = sys.argv[1], sys.argv[2]
    with open(os.path.join(eval_dir, "manifest.tsv"), newline="") as f:
        refs = {r["file"]: r["transcript"] for r in csv.DictReader(f, delimiter="\t")}
    pairs = []
    with open(jsonl) as f:
        for line in f:
            if line.strip():
                o = json.loads(line)
                name = os.path.basename(o["file"])
                if name not in refs:
                    sys.exit(f"{name}: not in {eval_dir}/manifest.tsv")
                pairs.append((refs[name], o["text"]))
    if not pairs:
        sys.exit(f"{jsonl}: no transcripts")
    print(json.dumps({"files": len(pairs), "wer": score(*zip(*pairs))}))


if __name__ == "__main__":
    main()
