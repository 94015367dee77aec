"""Convert Whisper (CTranslate2 WhisperSpec weights) into two ONNX graphs
that tract runs:

- encoder: `mel` [1, 80, frames] (frames even, at most 3000) →
  `cross_k_L`, `cross_v_L` [1, frames/2, d] for every decoder layer L: the
  cross-attention keys and values, computed once per utterance. The
  positional embedding is sliced to the frame count, so a 3 s press does
  not pay for a 30 s window.
- decoder step: the tokens' embedding rows `embedding` [1, T, d] (one
  token per greedy step; a whole text at once to score it), the
  self-attention cache `past_k_L`, `past_v_L` [1, past, d] (start empty,
  past = 0) and the encoder's cross K/V → `hidden` [T, d] (after the final
  layer norm) and `present_k_L`, `present_v_L` [1, past + T, d]. The
  first token's position is the cache length; each token sees the cache
  and the tokens before it (a causal mask, `MASKED` after that).
- vocabulary: the token embedding matrix [vocab, d], which Whisper uses
  twice (row lookup for the input token, and logits = hidden · Eᵀ). It is
  not in the graph: inside, tract holds it once per use in fp32 (2 × 80 MB
  for tiny.en). `vocab()` returns it as int8 rows with one fp32 scale per
  row (symmetric, scale = max|row| / 127); the firmware does the lookup and
  the projection itself from that one 20 MB copy.

Weights are converted from float16 to float32 (`dtype=np.float16` keeps
them in float16: the fp16 variant, for CPUs with native fp16 arithmetic.
Its inputs and outputs stay float32, cast at the graph's edges, so the
firmware feeds every form alike; as OpenAI's Whisper does in fp16, layer
norms and softmaxes compute in float32, since a float16 variance of the
residual stream overflows). Attention scores are scaled
by 1/sqrt(head_dim) (in the encoder, folded into the query weights, and
attention runs one head at a time to bound memory on 30 s windows); GELU is the exact erf form; layer norms use eps 1e-5.
"""
import re

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
# Added to the score of a key a query must not see (the decoder's later
# tokens when it takes several at once): exp underflows to exactly 0 in
# float32 after it, and float16 holds it.
MASKED = -1e4
# IR version 9 (ONNX 1.14): readable by tract and by onnxruntime 1.22.
IR_VERSION = 9


class Graph:
    def __init__(self, weights, dtype=np.float32):
        self.w = weights
        self.nodes = []
        self.inits = {}
        self.n = 0
        self.ft = dtype
        self.fp16 = dtype == np.float16
        self.cast_inputs = {}

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def init(self, name, array):
        if name not in self.inits:
            self.inits[name] = numpy_helper.from_array(np.ascontiguousarray(array), name)
        return name

    def const(self, values, dtype=np.int64):
        return self.init(self.name("const"), np.array(values, dtype=dtype))

    def weight(self, key, transpose=False, dtype=None):
        arr = self.w[key].astype(dtype or self.ft)
        if transpose:
            arr = arr.T
        return self.init(key + (".T" if transpose else ""), arr)

    def input(self, name):
        """A float32 graph input as the graph's float type (fp16: one Cast
        per input, made on first use)."""
        if not self.fp16:
            return name
        if name not in self.cast_inputs:
            self.cast_inputs[name] = self.op("Cast", [name], to=TensorProto.FLOAT16)
        return self.cast_inputs[name]

    def output(self, x, name):
        """Make `x` the float32 graph output `name`."""
        if self.fp16:
            self.op("Cast", [x], [name], to=TensorProto.FLOAT)
        else:
            self.nodes.append(helper.make_node("Identity", [x], [name]))

    def to32(self, x):
        return self.op("Cast", [x], to=TensorProto.FLOAT) if self.fp16 else x

    def from32(self, x):
        return self.op("Cast", [x], to=TensorProto.FLOAT16) if self.fp16 else x

    def op(self, op_type, inputs, outputs=1, **attrs):
        outs = [self.name(op_type.lower()) for _ in range(outputs)] if isinstance(outputs, int) else outputs
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if len(outs) == 1 else outs

    # building blocks -------------------------------------------------

    def linear(self, x, prefix, rows=None, scale=None):
        """x @ W[rows].T + b[rows] with CTranslate2's [out, in] weights,
        times `scale` folded into W and b."""
        w = self.w[prefix + "/weight"].astype(np.float32)
        b = self.w.get(prefix + "/bias")
        tag = prefix if rows is None else f"{prefix}[{rows.start}:{rows.stop}]"
        if rows is not None:
            w = w[rows]
            b = None if b is None else b[rows]
        if scale is not None:
            tag += f"*{scale:.6g}"
            w = w * np.float32(scale)
            b = None if b is None else b.astype(np.float32) * np.float32(scale)
        y = self.op("MatMul", [x, self.init(tag + "/weight.T", w.T.astype(self.ft))])
        if b is not None:
            y = self.op("Add", [y, self.init(tag + "/bias", b.astype(np.float32).astype(self.ft))])
        return y

    def layer_norm(self, x, prefix):
        f32 = np.float32
        return self.from32(self.op(
            "LayerNormalization",
            [self.to32(x), self.weight(prefix + "/gamma", dtype=f32), self.weight(prefix + "/beta", dtype=f32)],
            axis=-1,
            epsilon=1e-5,
        ))

    def softmax(self, x):
        return self.from32(self.op("Softmax", [self.to32(x)], axis=-1))

    def gelu(self, x):
        half = self.init("half", np.array(0.5, self.ft))
        one = self.init("one", np.array(1.0, self.ft))
        inv_sqrt2 = self.init("inv_sqrt2", np.array(1 / np.sqrt(2), np.float32).astype(self.ft))
        erf = self.op("Erf", [self.op("Mul", [x, inv_sqrt2])])
        return self.op("Mul", [self.op("Mul", [x, half]), self.op("Add", [erf, one])])

    def heads(self, x, n_heads, head_dim):
        """[1, S, d] → [1, H, S, hd]"""
        shape = self.const([1, -1, n_heads, head_dim])
        return self.op("Transpose", [self.op("Reshape", [x, shape])], perm=[0, 2, 1, 3])

    def attention(self, q, k, v, n_heads, head_dim, mask=None):
        """Attention over heads side by side; `mask` [Sq, Sk], if given, is
        added to the scaled scores (0 where a query sees a key)."""
        d = n_heads * head_dim
        qh, kh, vh = (self.heads(t, n_heads, head_dim) for t in (q, k, v))
        kt = self.op("Transpose", [kh], perm=[0, 1, 3, 2])
        scale = self.init("attn_scale", np.array(1 / np.sqrt(head_dim), np.float32).astype(self.ft))
        scores = self.op("Mul", [self.op("MatMul", [qh, kt]), scale])
        if mask is not None:
            scores = self.op("Add", [scores, mask])
        probs = self.softmax(scores)
        out = self.op("Transpose", [self.op("MatMul", [probs, vh])], perm=[0, 2, 1, 3])
        return self.op("Reshape", [out, self.const([1, -1, d])])

    def causal_mask(self, past, end, positions):
        """[T, P + T]: 0 where query i (at position P + i) sees key j (j ≤
        P + i), MASKED after it. `past` (P) and `end` (P + T) are [1] int64;
        the rows and columns are sliced from a constant [positions,
        positions] table (tract plans a Slice with symbolic bounds, as for
        the positional embedding; a mask built with Range it does not)."""
        table = np.triu(np.full((positions, positions), MASKED, np.float32), k=1).astype(self.ft)
        starts = self.op("Concat", [past, self.const([0])], axis=0)
        ends = self.op("Concat", [end, end], axis=0)
        return self.op("Slice", [self.init("causal_mask", table), starts, ends, self.const([0, 1])])

    def attention_per_head(self, q, k, v, n_heads, head_dim):
        """Attention one head at a time, `q` already scaled by
        1/sqrt(head_dim): [1, S, d] each → [1, S, d]. Each head's chain
        (scores, softmax, · V) is independent, so tract evaluates and frees
        one [S, S] score matrix at a time instead of holding all heads'
        (6 × 1500² × 4 bytes = 54 MB, twice with the softmax, for a 30 s
        window)."""
        outs = []
        for h in range(n_heads):
            lo, hi = self.const([h * head_dim]), self.const([(h + 1) * head_dim])
            axis = self.const([2])
            qh, kh, vh = (self.op("Slice", [t, lo, hi, axis]) for t in (q, k, v))
            scores = self.op("MatMul", [qh, self.op("Transpose", [kh], perm=[0, 2, 1])])
            probs = self.softmax(scores)
            outs.append(self.op("MatMul", [probs, vh]))
        return self.op("Concat", outs, axis=2)


def dims(weights):
    d = weights["encoder/conv1/weight"].shape[0]
    n_heads = int(weights["encoder/num_heads"]) if weights["encoder/num_heads"].size else 6
    def layers(side):
        return len({k.split("/")[1] for k in weights if re.match(side + r"/layer_\d+/", k)})

    enc_layers, dec_layers = layers("encoder"), layers("decoder")
    vocab = weights["decoder/embeddings/weight"].shape[0]
    return d, n_heads, d // n_heads, enc_layers, dec_layers, vocab


def encoder(weights, dtype=np.float32):
    d, H, hd, n_enc, n_dec, _ = dims(weights)
    g = Graph(weights, dtype)
    x = g.input("mel")
    x = g.gelu(g.op("Conv", [x, g.weight("encoder/conv1/weight"), g.weight("encoder/conv1/bias")], pads=[1, 1], kernel_shape=[3]))
    x = g.gelu(g.op("Conv", [x, g.weight("encoder/conv2/weight"), g.weight("encoder/conv2/bias")], pads=[1, 1], strides=[2], kernel_shape=[3]))
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # [1, S, d]
    ctx = g.op("Gather", [g.op("Shape", [x]), g.const([1])], axis=0)  # [S]
    pos = g.op("Slice", [g.weight("encoder/position_encodings/encodings"), g.const([0]), ctx, g.const([0])])
    x = g.op("Add", [x, pos])
    for i in range(n_enc):
        p = f"encoder/layer_{i}"
        h = g.layer_norm(x, p + "/self_attention/layer_norm")
        qkv = p + "/self_attention/linear_0"
        q = g.linear(h, qkv, slice(0, d), scale=1 / np.sqrt(hd))
        k, v = (g.linear(h, qkv, slice(j * d, (j + 1) * d)) for j in (1, 2))
        x = g.op("Add", [x, g.linear(g.attention_per_head(q, k, v, H, hd), p + "/self_attention/linear_1")])
        h = g.layer_norm(x, p + "/ffn/layer_norm")
        h = g.linear(g.gelu(g.linear(h, p + "/ffn/linear_0")), p + "/ffn/linear_1")
        x = g.op("Add", [x, h])
    x = g.layer_norm(x, "encoder/layer_norm")
    outputs = []
    for i in range(n_dec):
        kv = f"decoder/layer_{i}/attention/linear_1"
        g.output(g.linear(x, kv, slice(0, d)), f"cross_k_{i}")
        g.output(g.linear(x, kv, slice(d, 2 * d)), f"cross_v_{i}")
        outputs += [f"cross_k_{i}", f"cross_v_{i}"]
    graph = helper.make_graph(
        g.nodes,
        "whisper_encoder" + ("_f16" if g.fp16 else ""),
        [helper.make_tensor_value_info("mel", TensorProto.FLOAT, [1, 80, "frames"])],
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, [1, "ctx", d]) for o in outputs],
        list(g.inits.values()),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="talkie", ir_version=IR_VERSION)


def decoder(weights, dtype=np.float32):
    d, H, hd, _, n_dec, _ = dims(weights)
    g = Graph(weights, dtype)
    x = g.input("embedding")  # [1, T, d]: the tokens' rows of the vocabulary matrix
    past = g.op("Gather", [g.op("Shape", ["past_k_0"]), g.const([1])], axis=0)  # [1]
    tokens = g.op("Gather", [g.op("Shape", ["embedding"]), g.const([1])], axis=0)  # [1]
    end = g.op("Add", [past, tokens])
    pos = g.op("Slice", [g.weight("decoder/position_encodings/encodings"), past, end, g.const([0])])  # [T, d]
    x = g.op("Add", [x, pos])
    mask = g.causal_mask(past, end, g.w["decoder/position_encodings/encodings"].shape[0])
    inputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [1, "tokens", d])]
    outputs = [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["tokens", d])]
    for i in range(n_dec):
        p = f"decoder/layer_{i}"
        h = g.layer_norm(x, p + "/self_attention/layer_norm")
        qkv = p + "/self_attention/linear_0"
        q, k, v = (g.linear(h, qkv, slice(j * d, (j + 1) * d)) for j in range(3))
        if g.fp16:
            k_all = g.op("Concat", [g.input(f"past_k_{i}"), k], axis=1)
            v_all = g.op("Concat", [g.input(f"past_v_{i}"), v], axis=1)
            g.output(k_all, f"present_k_{i}")
            g.output(v_all, f"present_v_{i}")
        else:
            k_all = g.op("Concat", [f"past_k_{i}", k], [f"present_k_{i}"], axis=1)
            v_all = g.op("Concat", [f"past_v_{i}", v], [f"present_v_{i}"], axis=1)
        x = g.op("Add", [x, g.linear(g.attention(q, k_all, v_all, H, hd, mask), p + "/self_attention/linear_1")])
        h = g.layer_norm(x, p + "/attention/layer_norm")
        q = g.linear(h, p + "/attention/linear_0")
        cross = (g.input(f"cross_k_{i}"), g.input(f"cross_v_{i}"))
        x = g.op("Add", [x, g.linear(g.attention(q, *cross, H, hd), p + "/attention/linear_2")])
        h = g.layer_norm(x, p + "/ffn/layer_norm")
        h = g.linear(g.gelu(g.linear(h, p + "/ffn/linear_0")), p + "/ffn/linear_1")
        x = g.op("Add", [x, h])
        for name, dim in ((f"past_k_{i}", "past"), (f"past_v_{i}", "past"), (f"cross_k_{i}", "ctx"), (f"cross_v_{i}", "ctx")):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, dim, d]))
        for name in (f"present_k_{i}", f"present_v_{i}"):
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, "present", d]))
    x = g.layer_norm(x, "decoder/layer_norm")
    if g.fp16:
        g.output(g.op("Reshape", [x, g.const([-1, d])]), "hidden")
    else:
        g.op("Reshape", [x, g.const([-1, d])], ["hidden"])
    name = "whisper_decoder_step" + ("_f16" if g.fp16 else "")
    graph = helper.make_graph(g.nodes, name, inputs, outputs, list(g.inits.values()))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="talkie", ir_version=IR_VERSION)


def vocab(weights):
    """The vocabulary matrix as (int8 [vocab, d], fp32 scales [vocab])."""
    return quantize_rows(weights["decoder/embeddings/weight"].astype(np.float32))


def quantize_rows(e):
    """A [vocab, d] float matrix as int8 rows with one fp32 scale each
    (symmetric, the row's largest magnitude at 127)."""
    scale = np.abs(e).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(e / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale.astype(np.float32)


def save(model, path):
    onnx.checker.check_model(model)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
