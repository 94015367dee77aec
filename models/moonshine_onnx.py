"""Moonshine base as graphs tract can run (issue 31, step two).

usage: moonshine_onnx.py DIR

From DIR/encoder_model.onnx and DIR/decoder_model_merged.onnx (made by
`moonshine_fetch.py`), writes to DIR:

- `moonshine_encoder.onnx`: the encoder with its int8→float weight
  conversion (Cast, Mul, Add on initializers) folded into float
  initializers — tract does not fold it and would redo it on every run;
- `moonshine_decoder_first.onnx` and `moonshine_decoder_step.onnx`: the
  merged decoder's two `If` branches as graphs of their own (tract's shape
  check refuses the `If`), the first taking `input_ids` and
  `encoder_hidden_states` and giving the logits and every layer's
  self- and cross-attention K/V, the step taking `input_ids` and those K/V;
  the weight conversion folded the same way.

Then checks in onnxruntime that the split graphs give the merged graph's
outputs on a first step and a second step (the same float operations, so
equal to within float rounding of the folded products).
"""
import os, sys

import numpy as np
import onnx
from onnx import helper, numpy_helper

FOLDABLE = {"Cast", "Mul", "Add", "Sub"}


def _eval(node, vals):
    x = [vals[i] for i in node.input]
    if node.op_type == "Cast":
        to = onnx.helper.get_attribute_value(next(a for a in node.attribute if a.name == "to"))
        return x[0].astype(onnx.helper.tensor_dtype_to_np_dtype(to))
    if node.op_type == "Mul":
        return x[0] * x[1]
    if node.op_type == "Add":
        return x[0] + x[1]
    if node.op_type == "Sub":
        return x[0] - x[1]
    raise ValueError(node.op_type)


def fold(graph, extra_consts=None):
    """Evaluate every Cast/Mul/Add/Sub whose inputs are all constant; the
    results become initializers and the nodes go. Returns the folded
    values by name (for the subgraphs that use them)."""
    vals = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    vals.update(extra_consts or {})
    keep, folded = [], {}
    for n in graph.node:
        if n.op_type in FOLDABLE and n.input and all(i in vals for i in n.input):
            out = _eval(n, vals)
            vals[n.output[0]] = out
            folded[n.output[0]] = out
        else:
            keep.append(n)
    used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    for n in keep:
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= {i for m in a.g.node for i in m.input}
    del graph.node[:]
    graph.node.extend(keep)
    original = {t.name for t in graph.initializer}
    inits = [numpy_helper.from_array(v, k) for k, v in vals.items() if k in used and (k in folded or k in original)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    kept = {t.name for t in inits}
    return {k: v for k, v in vals.items() if k in folded or k in kept}


def branch_model(merged, which, consts):
    """One `If` branch of the merged decoder as a model of its own."""
    g = merged.graph
    node = next(n for n in g.node if n.op_type == "If")
    sub = next(a.g for a in node.attribute if a.name == which)
    produced = {o for n in sub.node for o in n.output} | {t.name for t in sub.initializer}
    needed = [i for n in sub.node for i in n.input if i and i not in produced]
    inputs, inits, seen = [], [], set()
    graph_inputs = {i.name: i for i in g.input}
    for name in needed:
        if name in seen:
            continue
        seen.add(name)
        if name in consts:
            inits.append(numpy_helper.from_array(consts[name], name))
        elif name in graph_inputs:
            inputs.append(graph_inputs[name])
        else:
            raise SystemExit(f"{which}: {name} is neither an input nor a constant")
    # Inputs in the merged graph's order (input_ids, then layer by layer).
    order = [i.name for i in g.input]
    inputs.sort(key=lambda v: order.index(v.name))
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.FLOAT, None) for o in node.output]
    # The branch's outputs carry its own names: rename them to the If's.
    renames = dict(zip([o.name for o in sub.output], node.output))
    nodes = []
    for n in sub.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        for k, o in enumerate(m.output):
            if o in renames:
                m.output[k] = renames[o]
        for k, i in enumerate(m.input):
            if i in renames:
                m.input[k] = renames[i]
        nodes.append(m)
    graph = helper.make_graph(nodes, which, inputs, outputs, initializer=list(sub.initializer) + inits)
    model = helper.make_model(graph, opset_imports=merged.opset_import)
    model.ir_version = merged.ir_version
    fold(model.graph)
    return model


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = sys.argv[1]
    enc = onnx.load(os.path.join(d, "encoder_model.onnx"))
    fold(enc.graph)
    onnx.save(enc, os.path.join(d, "moonshine_encoder.onnx"))
    merged = onnx.load(os.path.join(d, "decoder_model_merged.onnx"))
    consts = fold(merged.graph)
    first = branch_model(merged, "else_branch", consts)
    step = branch_model(merged, "then_branch", consts)
    onnx.save(first, os.path.join(d, "moonshine_decoder_first.onnx"))
    onnx.save(step, os.path.join(d, "moonshine_decoder_step.onnx"))
    for name in ["moonshine_encoder", "moonshine_decoder_first", "moonshine_decoder_step"]:
        m = onnx.load(os.path.join(d, name + ".onnx"))
        print(f"moonshine_onnx: {name}.onnx: {len(m.graph.node)} nodes, inputs {[i.name for i in m.graph.input][:3]}…")
    check(d)


def check(d):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    s = lambda f: ort.InferenceSession(os.path.join(d, f), opts)
    merged, first, step = s("decoder_model_merged.onnx"), s("moonshine_decoder_first.onnx"), s("moonshine_decoder_step.onnx")
    rng = np.random.default_rng(7)
    audio = (rng.standard_normal(16000 * 2) * 0.05).astype(np.float32)
    h_a = s("encoder_model.onnx").run(None, {"input_values": audio[None]})[0]
    h_b = s("moonshine_encoder.onnx").run(None, {"input_values": audio[None]})[0]
    print(f"moonshine_onnx: encoder folded vs original: max |Δ| {np.max(np.abs(h_a - h_b)):.2e}")
    names_in = [i.name for i in merged.get_inputs()]
    names_out = [o.name for o in merged.get_outputs()]
    feeds = {"input_ids": np.array([[1]], np.int64), "encoder_hidden_states": h_a, "use_cache_branch": np.array([False])}
    for n in names_in:
        if n.startswith("past_key_values."):
            feeds[n] = np.zeros((1, 8, 0 if ".decoder." in n else h_a.shape[1], 52), np.float32)
    a = dict(zip(names_out, merged.run(None, feeds)))
    fi = {i.name for i in first.get_inputs()}
    b = dict(zip([o.name for o in first.get_outputs()], first.run(None, {k: v for k, v in feeds.items() if k in fi})))
    worst = max(float(np.max(np.abs(a[k] - b[k]))) for k in names_out)
    print(f"moonshine_onnx: first step, split vs merged: max |Δ| {worst:.2e} over {len(names_out)} outputs")
    feeds2 = {"input_ids": np.array([[int(np.argmax(a["logits"][0, -1]))]], np.int64), "encoder_hidden_states": h_a,
              "use_cache_branch": np.array([True])}
    for n in names_in:
        if n.startswith("past_key_values."):
            feeds2[n] = a[n.replace("past_key_values.", "present.")]
    a2 = dict(zip(names_out, merged.run(None, feeds2)))
    si = {i.name for i in step.get_inputs()}
    b2 = dict(zip([o.name for o in step.get_outputs()], step.run(None, {k: v for k, v in feeds2.items() if k in si})))
    worst2 = max(float(np.max(np.abs(a2[k] - b2[k]))) for k in names_out if ".encoder." not in k)
    print(f"moonshine_onnx: second step, split vs merged: max |Δ| {worst2:.2e}")
    if worst > 1e-3 or worst2 > 1e-3:
        raise SystemExit("moonshine_onnx: the split graphs do not reproduce the merged one")


if __name__ == "__main__":
    main()
