#!/usr/bin/env python3
"""Convert CTranslate2 Whisper weights to talkie's ONNX graphs.

    python convert_whisper.py MODEL.BIN OUT_DIR

Writes OUT_DIR/whisper_encoder.onnx and OUT_DIR/whisper_decoder.onnx
(float32), and their int8 variants whisper_encoder_int8.onnx and
whisper_decoder_int8.onnx (onnxruntime's dynamic quantization: int8
weights, DynamicQuantizeLinear + MatMulInteger; the 51864-wide logits
projection stays float32 because quantized it makes every decoder step
about 10x slower in tract). Run by build.py inside models/.venv (numpy,
onnx, onnxruntime pinned in requirements.txt).
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
    for part in ("encoder", "decoder"):
        quantize(os.path.join(out, f"whisper_{part}.onnx"), os.path.join(out, f"whisper_{part}_int8.onnx"))


def quantize(src, dst):
    import logging
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" hint
    model = onnx.load(src)
    keep_fp32 = [n.name for n in model.graph.node if n.op_type == "MatMul" and "logits" in n.output]
    print(f"convert: int8 {os.path.basename(dst)} (fp32 kept: {keep_fp32 or 'none'})", flush=True)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     nodes_to_exclude=keep_fp32)


if __name__ == "__main__":
    main()
