#!/usr/bin/env python3
"""Convert CTranslate2 Whisper weights to talkie's ONNX graphs.

    python convert_whisper.py MODEL.BIN OUT_DIR

Writes OUT_DIR/whisper_encoder.onnx and OUT_DIR/whisper_decoder.onnx
(float32). Run by build.py inside models/.venv (numpy, onnx pinned in
requirements.txt).
"""
import os
import sys

import ct2
import whisper_onnx


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    model_bin, out = sys.argv[1:]
    spec, weights = ct2.load(model_bin)
    if spec != "WhisperSpec":
        sys.exit(f"{model_bin}: spec {spec}, expected WhisperSpec")
    d, heads, _, enc, dec, vocab = whisper_onnx.dims(weights)
    print(f"convert: Whisper d={d} heads={heads} encoder layers={enc} decoder layers={dec} vocab={vocab}", flush=True)
    whisper_onnx.save(whisper_onnx.encoder(weights), os.path.join(out, "whisper_encoder.onnx"))
    whisper_onnx.save(whisper_onnx.decoder(weights), os.path.join(out, "whisper_decoder.onnx"))


if __name__ == "__main__":
    main()
