"""Moonshine base as lean graphs for talkie's recognizer (issue 31, step three).

usage: moonshine_lean.py DIR [EVAL_DIR]

From the graphs `moonshine_onnx.py` wrote to DIR, writes to DIR the form
talkie loads, shaped like talkie's Whisper graphs:

- `moonshine_encoder_kv.onnx`: raw 16 kHz audio `input_values` [1, n] in,
  every decoder layer's cross-attention keys and values out
  (`cross.{l}.key`, `cross.{l}.value`, [1, heads, frames, head_dim]): the
  encoder followed by the first-step graph's cross-attention projections,
  computed once per utterance;
- `moonshine_decoder.onnx`: one decoder step for every position, the first
  included: `embedding` [1, T, d] (the tokens' rows of the vocabulary
  matrix: one per greedy step, a whole text to score it), then per layer
  `past.{l}.key`, `past.{l}.value` (the self-attention cache, length 0 at
  the first step), `cross.{l}.key`, `cross.{l}.value`; out `hidden`
  [1, T, d] (after the final norm) and the grown cache
  `present.{l}.key`, `present.{l}.value`;
- `moonshine_vocab_int8.npy` [vocab, d] and `moonshine_vocab_scale.npy`
  [vocab]: the tied token embedding / output projection as int8 rows with
  one scale each, outside the graphs (one 13 MB copy instead of two fp32
  54 MB ones).

Then checks in onnxruntime that greedy decoding with the lean graphs and
the int8 vocabulary gives the split graphs' tokens on a random input and,
with EVAL_DIR, on its first clips.
"""
import os, sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

EMBED = "model.decoder.embed_tokens.weight_merged_0_add_tensor"


def producers(graph):
    return {o: n for n in graph.node for o in n.output}


def slice_nodes(graph, outputs, stop):
    """The nodes `outputs` need, in graph order, walking back to `stop`
    (names computed elsewhere) and initializers."""
    prod = producers(graph)
    need, todo = set(), list(outputs)
    while todo:
        name = todo.pop()
        n = prod.get(name)
        if n is None or id(n) in need or name in stop:
            continue
        need.add(id(n))
        todo.extend(i for i in n.input if i)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                todo.extend(i for m in a.g.node for i in m.input)
    return [n for n in graph.node if id(n) in need]


def used_inits(graph, nodes):
    names = {i for n in nodes for i in n.input}
    return [t for t in graph.initializer if t.name in names]


def layers_of(graph):
    return sorted({int(o.name.split(".")[1]) for o in graph.output if o.name.startswith("present.")})


def tensor(name, dims):
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def encoder_kv(d, heads=8):
    """The encoder, then each layer's cross-attention K and V projections
    of its output (MatMul, then [1, frames, heads, head_dim] → [1, heads,
    frames, head_dim], as the first-step graph does)."""
    enc = onnx.load(os.path.join(d, "moonshine_encoder.onnx"))
    first = onnx.load(os.path.join(d, "moonshine_decoder_first.onnx"))
    layers = layers_of(first.graph)
    hidden = enc.graph.output[0].name
    inits = {t.name: t for t in first.graph.initializer}
    nodes, new_inits, outputs = list(enc.graph.node), list(enc.graph.initializer), []
    shape = "kv/shape"
    for l in layers:
        for kv in ("key", "value"):
            proj = f"/model/decoder/layers.{l}/encoder_attn/{kv[0]}_proj/MatMul"
            mm = next(n for n in first.graph.node if n.output[0] == proj + "_output_0")
            if mm.input[0] != "encoder_hidden_states" or mm.input[1] not in inits:
                raise SystemExit(f"moonshine_lean: {proj} is not a projection of the encoder's output")
            w = numpy_helper.to_array(inits[mm.input[1]])
            wname = f"kv/{l}.{kv}.weight"
            new_inits.append(numpy_helper.from_array(w, wname))
            out = f"cross.{l}.{kv}"
            nodes += [
                helper.make_node("MatMul", [hidden, wname], [out + "/proj"]),
                helper.make_node("Reshape", [out + "/proj", shape], [out + "/heads"]),
                helper.make_node("Transpose", [out + "/heads"], [out], perm=[0, 2, 1, 3]),
            ]
            outputs.append(tensor(out, [1, heads, "frames", w.shape[1] // heads]))
    dim = outputs[0].type.tensor_type.shape.dim[3].dim_value
    new_inits.append(numpy_helper.from_array(np.array([1, -1, heads, dim], np.int64), shape))
    graph = helper.make_graph(nodes, "moonshine_encoder_kv", list(enc.graph.input), outputs, new_inits)
    model = helper.make_model(graph, opset_imports=enc.opset_import)
    model.ir_version = enc.ir_version
    return model


def decoder(d):
    step = onnx.load(os.path.join(d, "moonshine_decoder_step.onnx"))
    g = step.graph
    layers = layers_of(g)
    gather = next(n for n in g.node if "input_ids" in n.input)
    logits = next(n for n in g.node if "logits" in n.output)
    width = next(t for t in g.initializer if t.name == EMBED).dims[1]
    rename = {gather.output[0]: "embedding", logits.input[0]: "hidden"}
    for l in layers:
        for kv in ("key", "value"):
            rename[f"past_key_values.{l}.decoder.{kv}"] = f"past.{l}.{kv}"
            rename[f"past_key_values.{l}.encoder.{kv}"] = f"cross.{l}.{kv}"
            rename[f"present.{l}.decoder.{kv}"] = f"present.{l}.{kv}"
    wanted = [logits.input[0]] + [f"present.{l}.decoder.{kv}" for l in layers for kv in ("key", "value")]
    nodes = slice_nodes(g, wanted, {gather.output[0]})
    new_nodes = []
    for n in nodes:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.input[:] = [rename.get(i, i) for i in n.input]
        m.output[:] = [rename.get(o, o) for o in n.output]
        new_nodes.append(m)
    # [batch, heads, length, head_dim] of the step graph's cache inputs.
    dims = next(i for i in g.input if i.name.startswith("past_key_values.")).type.tensor_type.shape.dim
    heads, dim = dims[1].dim_value, dims[3].dim_value
    # Any number of tokens at once: the exported graph masks each token's
    # self-attention to the cache and the tokens before it (a text is
    # scored in one run; a greedy step is one token).
    inputs = [tensor("embedding", [1, "tokens", width])]
    for l in layers:
        inputs += [tensor(f"past.{l}.{kv}", [1, heads, "past", dim]) for kv in ("key", "value")]
        inputs += [tensor(f"cross.{l}.{kv}", [1, heads, "frames", dim]) for kv in ("key", "value")]
    outputs = [tensor("hidden", [1, "tokens", width])]
    # The grown length left unnamed: tract derives it (past + 1).
    outputs += [tensor(f"present.{l}.{kv}", [1, heads, None, dim]) for l in layers for kv in ("key", "value")]
    graph = helper.make_graph(new_nodes, "moonshine_decoder_step", inputs, outputs, used_inits(g, nodes))
    model = helper.make_model(graph, opset_imports=step.opset_import)
    model.ir_version = step.ir_version
    embed = numpy_helper.to_array(next(t for t in g.initializer if t.name == EMBED)).astype(np.float32)
    return model, embed


def save(model, path):
    onnx.checker.check_model(model)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


class Lean:
    """Greedy decoding with the lean graphs in onnxruntime (start 1, end 2,
    6.5 tokens per second of audio, as moonshine-cpp)."""

    def __init__(self, d, threads=1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        self.enc = ort.InferenceSession(os.path.join(d, "moonshine_encoder_kv.onnx"), opts)
        self.dec = ort.InferenceSession(os.path.join(d, "moonshine_decoder.onnx"), opts)
        self.q = np.load(os.path.join(d, "moonshine_vocab_int8.npy")).astype(np.float32)
        self.scale = np.load(os.path.join(d, "moonshine_vocab_scale.npy"))
        self.layers = len(self.enc.get_outputs()) // 2

    def transcribe(self, audio):
        cross = self.enc.run(None, {"input_values": audio[None, :]})
        heads, dim = cross[0].shape[1], cross[0].shape[3]
        past = [np.zeros((1, heads, 0, dim), np.float32) for _ in range(2 * self.layers)]
        out, token = [], 1
        for _ in range(int(len(audio) / 16000 * 6.5) + 1):
            feeds = {"embedding": (self.q[token] * self.scale[token])[None, None, :]}
            for l in range(self.layers):
                feeds[f"past.{l}.key"], feeds[f"past.{l}.value"] = past[2 * l], past[2 * l + 1]
                feeds[f"cross.{l}.key"], feeds[f"cross.{l}.value"] = cross[2 * l], cross[2 * l + 1]
            res = self.dec.run(None, feeds)
            logits = self.q @ res[0][0, 0] * self.scale
            past = res[1:]
            token = int(np.argmax(logits))
            if token == 2:
                break
            out.append(token)
        return out


def check(d, eval_dir):
    import onnxruntime as ort

    sys.path.insert(0, os.path.dirname(__file__))
    from moonshine_ref import read_wav_16k

    lean = Lean(d)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    enc = ort.InferenceSession(os.path.join(d, "moonshine_encoder.onnx"), opts)
    first = ort.InferenceSession(os.path.join(d, "moonshine_decoder_first.onnx"), opts)
    step = ort.InferenceSession(os.path.join(d, "moonshine_decoder_step.onnx"), opts)
    f_out = [o.name for o in first.get_outputs()]
    s_in = [i.name for i in step.get_inputs()]
    s_out = [o.name for o in step.get_outputs()]

    def split_tokens(audio):
        h = enc.run(None, {"input_values": audio[None, :]})[0]
        res = dict(zip(f_out, first.run(None, {"input_ids": np.array([[1]], np.int64), "encoder_hidden_states": h})))
        out = []
        for _ in range(int(len(audio) / 16000 * 6.5) + 1):
            token = int(np.argmax(res["logits"][0, -1]))
            if token == 2:
                break
            out.append(token)
            feeds = {"input_ids": np.array([[token]], np.int64)}
            for n in s_in[1:]:
                p = n.replace("past_key_values.", "present.")
                feeds[n] = res[p] if ".decoder." in n else cross_kv[n]
            res.update(zip(s_out, step.run(None, feeds)))
        return out

    clips = [("noise", (np.random.default_rng(3).standard_normal(32000) * 0.05).astype(np.float32))]
    if eval_dir:
        clips += [(f, read_wav_16k(os.path.join(eval_dir, f))) for f in sorted(os.listdir(eval_dir))
                  if f.startswith("dev_") and f.endswith(".wav")][:int(os.environ.get("MOONSHINE_CHECK_CLIPS", "8"))]
    same = 0
    for name, audio in clips:
        h = enc.run(None, {"input_values": audio[None, :]})[0]
        r0 = dict(zip(f_out, first.run(None, {"input_ids": np.array([[1]], np.int64), "encoder_hidden_states": h})))
        cross_kv = {n: r0[n.replace("past_key_values.", "present.")] for n in s_in if ".encoder." in n}
        a, b = split_tokens(audio), lean.transcribe(audio)
        same += a == b
        print(f"moonshine_lean: {name}: {'same tokens' if a == b else f'DIFFERENT: {a} vs {b}'} ({len(a)})")
    print(f"moonshine_lean: {same}/{len(clips)} inputs decode to the split graphs' tokens")
    if same < len(clips):
        raise SystemExit("moonshine_lean: the lean graphs do not reproduce the split ones")


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    d = sys.argv[1]
    save(encoder_kv(d), os.path.join(d, "moonshine_encoder_kv.onnx"))
    model, embed = decoder(d)
    save(model, os.path.join(d, "moonshine_decoder.onnx"))
    from whisper_onnx import quantize_rows

    q, scale = quantize_rows(embed)
    np.save(os.path.join(d, "moonshine_vocab_int8.npy"), q)
    np.save(os.path.join(d, "moonshine_vocab_scale.npy"), scale)
    for f in ["moonshine_encoder_kv.onnx", "moonshine_decoder.onnx", "moonshine_vocab_int8.npy"]:
        print(f"moonshine_lean: {f}: {os.path.getsize(os.path.join(d, f)) / 1e6:.1f} MB")
    check(d, sys.argv[2] if len(sys.argv) == 3 else None)


if __name__ == "__main__":
    main()
