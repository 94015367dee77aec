"""ONNX Runtime's `.ort` flatbuffer model back into an ONNX ModelProto
(issue 31: Moonshine base ships only as `.ort` in PyPI `moonshine-cpp`).

usage: ort_to_onnx.py IN.ort OUT.onnx

The schema is onnxruntime's own (`onnxruntime.tools.ort_format_model`,
the flatbuffers Python classes generated from `ort.fbs`), so nothing here
guesses at the layout: every initializer, node (with its attributes and
subgraphs: the merged decoder's `If`), graph input and output, value info
and opset import is copied. `--check IN.ort OUT.onnx WAV` then runs both in
onnxruntime on one input and fails unless every output is bit-identical.
"""
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
from onnxruntime.tools.ort_format_model.ort_flatbuffers_py import fbs


def _s(b):
    return b.decode("utf-8") if isinstance(b, bytes) else (b or "")


def _tensor(t):
    """fbs.Tensor → TensorProto (raw data kept as stored: little-endian)."""
    dims = [int(t.Dims(i)) for i in range(t.DimsLength())]
    p = TensorProto()
    p.name = _s(t.Name())
    p.data_type = t.DataType()
    p.dims.extend(dims)
    if t.StringDataLength():
        p.string_data.extend(t.StringData(i) for i in range(t.StringDataLength()))
    elif not t.RawDataIsNone():
        p.raw_data = t.RawDataAsNumpy().tobytes()
    if t.ExternalDataOffset() not in (0, -1):
        raise SystemExit(f"{p.name}: external data in the .ort file is not supported")
    return p


def _type(vi):
    """fbs.ValueInfo → ValueInfoProto (tensor types; shapes with params)."""
    name = _s(vi.Name())
    ti = vi.Type()
    if ti is None or ti.ValueType() != fbs.TypeInfoValue.TypeInfoValue.tensor_type:
        return helper.make_value_info(name, onnx.TypeProto())
    tt = fbs.TensorTypeAndShape.TensorTypeAndShape()
    tab = ti.Value()
    tt.Init(tab.Bytes, tab.Pos)
    shape = None
    sh = tt.Shape()
    if sh is not None:
        shape = []
        for i in range(sh.DimLength()):
            dv = sh.Dim(i).Value()
            if dv is None or dv.DimType() == fbs.DimensionValueType.DimensionValueType.UNKNOWN:
                shape.append(None)
            elif dv.DimType() == fbs.DimensionValueType.DimensionValueType.VALUE:
                shape.append(int(dv.DimValue()))
            else:
                shape.append(_s(dv.DimParam()))
    return helper.make_tensor_value_info(name, tt.ElemType(), shape)


def _attribute(a):
    A = fbs.AttributeType.AttributeType
    name, kind = _s(a.Name()), a.Type()
    if kind == A.FLOAT:
        return helper.make_attribute(name, a.F())
    if kind == A.INT:
        return helper.make_attribute(name, a.I())
    if kind == A.STRING:
        return helper.make_attribute(name, a.S())
    if kind == A.TENSOR:
        return helper.make_attribute(name, _tensor(a.T()))
    if kind == A.GRAPH:
        return helper.make_attribute(name, _graph(a.G(), name))
    if kind == A.FLOATS:
        return helper.make_attribute(name, [a.Floats(i) for i in range(a.FloatsLength())], attr_type=onnx.AttributeProto.FLOATS)
    if kind == A.INTS:
        return helper.make_attribute(name, [a.Ints(i) for i in range(a.IntsLength())], attr_type=onnx.AttributeProto.INTS)
    if kind == A.STRINGS:
        return helper.make_attribute(name, [a.Strings(i) for i in range(a.StringsLength())], attr_type=onnx.AttributeProto.STRINGS)
    if kind == A.TENSORS:
        return helper.make_attribute(name, [_tensor(a.Tensors(i)) for i in range(a.TensorsLength())])
    if kind == A.GRAPHS:
        return helper.make_attribute(name, [_graph(a.Graphs(i), name) for i in range(a.GraphsLength())])
    raise SystemExit(f"attribute {name}: type {kind} not supported")


def _graph(g, name="graph"):
    infos = {}
    for i in range(g.NodeArgsLength()):
        vi = g.NodeArgs(i)
        infos[_s(vi.Name())] = _type(vi)
    inits = [_tensor(g.Initializers(i)) for i in range(g.InitializersLength())]
    if g.SparseInitializersLength():
        raise SystemExit("sparse initializers are not supported")
    init_names = {t.name for t in inits}
    nodes = []
    order = sorted(range(g.NodesLength()), key=lambda i: g.Nodes(i).Index())
    for i in order:
        n = g.Nodes(i)
        node = helper.make_node(
            _s(n.OpType()),
            [_s(n.Inputs(j)) for j in range(n.InputsLength())],
            [_s(n.Outputs(j)) for j in range(n.OutputsLength())],
            name=_s(n.Name()),
            domain=_s(n.Domain()),
        )
        node.attribute.extend(_attribute(n.Attributes(j)) for j in range(n.AttributesLength()))
        nodes.append(node)
    inputs = [_s(g.Inputs(i)) for i in range(g.InputsLength())]
    outputs = [_s(g.Outputs(i)) for i in range(g.OutputsLength())]
    io = set(inputs) | set(outputs)
    return helper.make_graph(
        nodes,
        name,
        [infos[n] for n in inputs if n not in init_names],
        [infos[n] for n in outputs],
        initializer=inits,
        value_info=[v for k, v in infos.items() if k not in io and k not in init_names],
    )


def convert(src, dst):
    buf = open(src, "rb").read()
    session = fbs.InferenceSession.InferenceSession.GetRootAs(buf, 0)
    m = session.Model()
    graph = _graph(m.Graph(), "main")
    # The .ort file lists every domain ONNX Runtime registers; keep those
    # the nodes use (and the default domain).
    used = {""}
    stack = [graph]
    while stack:
        g = stack.pop()
        for n in g.node:
            used.add(n.domain)
            stack.extend(a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH)
    opsets = [
        helper.make_opsetid(_s(m.OpsetImport(i).Domain()), m.OpsetImport(i).Version())
        for i in range(m.OpsetImportLength())
        if _s(m.OpsetImport(i).Domain()) in used
    ]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="talkie ort_to_onnx")
    model.ir_version = m.IrVersion()
    onnx.save(model, dst)
    print(f"ort_to_onnx: {src} → {dst}: {len(graph.node)} nodes, {len(graph.initializer)} initializers")


def check(src, dst, feeds):
    """Both files in onnxruntime on the same feeds: identical outputs."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    # Unoptimized on both sides: the same nodes must compute the same bits.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    a = ort.InferenceSession(src, opts).run(None, feeds)
    b = ort.InferenceSession(dst, opts).run(None, feeds)
    for i, (x, y) in enumerate(zip(a, b)):
        if x.shape != y.shape or not np.array_equal(x, y):
            raise SystemExit(f"output {i} differs: {x.shape} vs {y.shape}, max |Δ| {np.max(np.abs(x - y)) if x.shape == y.shape else 'n/a'}")
    print(f"ort_to_onnx: {dst} gives {src}'s {len(a)} outputs bit for bit")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    convert(sys.argv[1], sys.argv[2])
