"""MACs and params read from an ONNX graph: an independent check of the model-level counter.

Needs only `onnx` (no torch), so it also runs where only a runtime is installed. Shapes come from
ONNX shape inference with every batch dimension set to 1. MACs per node:
- Conv: output elements x (input channels / group) x kernel elements;
- ConvTranspose: input elements x (output channels / group) x kernel elements;
- Gemm and MatMul: output elements x the reduced dimension K;
- Einsum of two operands: the product of the sizes of every index in the equation.
Nodes that read only initializers and constants, never the input, are not counted: a runtime folds them
into constants (the model counter leaves out the same work).
Params are the elements of the float initializers the nodes read (each once), less BatchNormalization's
running mean and variance (buffers, not parameters) and less single-element constants (scales, epsilons).
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError, first_line

CONVENTION = ("MACs per sample (batch 1) from the graph: Conv = output elements x input channels per group x "
              "kernel elements; ConvTranspose = input elements x output channels per group x kernel elements; "
              "Gemm/MatMul = output elements x K; two-operand Einsum = product of all index sizes; nodes that read "
              "only weights and constants are not counted; FLOPs = 2 x MACs. params = float initializer elements "
              "the nodes "
              "read, each once, less BatchNormalization running statistics and single-element constants.")
MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "Einsum")
# ops that multiply-accumulate but that this counter does not read: reported, never silently zero
UNCOUNTED = ("Attention", "MultiHeadAttention", "FusedMatMul", "QLinearConv", "QLinearMatMul",
             "MatMulInteger", "ConvInteger", "LSTM", "GRU", "RNN")
_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


@dataclass
class GraphCosts:
    macs: int
    params: int
    input_shape: list
    layers: dict = field(default_factory=dict)  # module (or node) name -> MACs
    folded_norms: list = field(default_factory=list)  # (norm, conv) module pairs the exporter folded
    uncounted: list = field(default_factory=list)  # node names of MAC-like ops not counted
    opset: int | None = None

    def to_dict(self, per_layer=False):
        d = {"macs": self.macs, "params": self.params, "input_shape": self.input_shape,
             "folded_norms": len(self.folded_norms), "uncounted_ops": self.uncounted, "opset": self.opset}
        if per_layer:
            d["layers"] = self.layers
        return d


def load(path):
    """onnx.load with one-line errors for a missing or unreadable file."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file {path} does not exist; fix the path")
    try:
        model = onnx.load(str(path), load_external_data=False)  # shapes only; weights stay on disk
    except Exception as e:
        raise UserError(f"{path} is not a readable ONNX model ({e.__class__.__name__}); export it again") from None
    if not model.graph.node:
        raise UserError(f"{path} holds no ONNX graph; export it again")
    return model


def input_shape(model, shape=None):
    """The first real input's shape with batch 1; `shape` (1,C,H,W) fixes the other dims."""
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise UserError("the ONNX graph has no input")
    dims = inputs[0].type.tensor_type.shape.dim
    found = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    if shape is not None:
        shape = [1] + list(shape)[1:]
        if len(shape) != len(found) or any(f is not None and f != s for f, s in zip(found[1:], shape[1:])):
            raise UserError(f"--input-shape {','.join(map(str, shape))} does not fit the graph's input "
                            f"{_show(found)}; pass the shape it was exported with")
        return shape
    if any(d is None for d in found[1:]):
        raise UserError(f"the graph's input {_show(found)} has dynamic dimensions besides the batch; "
                        "pass --input-shape 1,C,H,W")
    return [1] + found[1:]


def _show(dims):
    return "[" + ",".join("?" if d is None else str(d) for d in dims) + "]"


def _with_static_shapes(model, shape):
    """Shape-inferred copy of the graph with batch 1; large float weights enter as typed inputs, not data."""
    import onnx
    from onnx import helper

    g = model.graph
    small = [i for i in g.initializer if i.data_type not in _FLOAT_TYPES or math.prod(i.dims) <= 64]
    large = [helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
             for i in g.initializer if i.data_type in _FLOAT_TYPES and math.prod(i.dims) > 64]
    names = {i.name for i in g.initializer}
    inputs = []
    for i in g.input:
        if i.name in names:
            continue
        v = onnx.ValueInfoProto()
        v.CopyFrom(i)
        if not inputs:  # the first real input gets the static shape
            for d, s in zip(v.type.tensor_type.shape.dim, shape):
                d.Clear()
                d.dim_value = s
        inputs.append(v)
    outputs = [helper.make_tensor_value_info(o.name, o.type.tensor_type.elem_type, None) for o in g.output]
    graph = helper.make_graph(list(g.node), g.name or "graph", inputs + large, outputs, small)
    copy = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    copy.functions.extend(model.functions)
    try:
        return onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception as e:
        raise UserError(f"ONNX shape inference failed ({first_line(e)}); "
                        "check the graph with onnx.checker") from None


def _shapes(model):
    shapes = {}
    for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[v.name] = [d.dim_value for d in dims]
    for i in model.graph.initializer:
        shapes[i.name] = list(i.dims)
    return shapes


def _run_shapes(model, shape, names, folder=None):
    """Shapes that inference could not resolve (as_strided, computed indices), read from one
    onnxruntime run on zeros at batch 1."""
    import numpy as np
    import onnx
    from onnx.external_data_helper import uses_external_data

    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"ONNX shape inference cannot resolve {len(names)} tensor shapes and onnxruntime is not "
                        "installed to run the graph; pip install onnxruntime") from None
    m = onnx.ModelProto()
    m.CopyFrom(model)
    if folder is not None and any(uses_external_data(t) for t in m.graph.initializer):
        onnx.load_external_data_for_model(m, str(folder))
    known = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in known)
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        first = sess.get_inputs()[0]
        dtype = {"tensor(float16)": np.float16, "tensor(double)": np.float64}.get(first.type, np.float32)
        outs = sess.run(names, {first.name: np.zeros(shape, dtype)})
    except Exception as e:
        raise UserError(f"running the graph to read its shapes failed ({first_line(e)}); "
                        "check it with onnx.checker and --input-shape") from None
    return {n: list(o.shape) for n, o in zip(names, outs)}


def node_macs(node, shapes):
    """MACs of one node, or None when a shape it needs is unknown."""
    def get(i):
        return shapes.get(node.input[i]) if len(node.input) > i else None

    out = shapes.get(node.output[0])
    if node.op_type == "Conv":
        w = get(1)
        return None if w is None or out is None else math.prod(out) * w[1] * math.prod(w[2:])
    if node.op_type == "ConvTranspose":
        x, w = get(0), get(1)
        return None if w is None or x is None else math.prod(x) * w[1] * math.prod(w[2:])
    if node.op_type == "Gemm":
        a = get(0)
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        return None if a is None or out is None else math.prod(out) * (a[0] if trans_a else a[-1])
    if node.op_type == "MatMul":
        a = get(0)
        return None if a is None or out is None else math.prod(out) * a[-1]
    if node.op_type == "Einsum":
        eq = next((at.s.decode() for at in node.attribute if at.name == "equation"), "")
        return einsum_macs(eq, [shapes.get(i) for i in node.input])
    return None


def einsum_macs(equation, shapes):
    """Product of every index's size for a two-operand einsum ('...' aligned from the right); None otherwise."""
    terms = equation.replace(" ", "").split("->")[0].split(",")
    if len(terms) != 2 or any(s is None for s in shapes[:2]):
        return None
    sizes = {}
    for term, shape in zip(terms, shapes):
        head, _, tail = term.partition("...")
        n_ell = len(shape) - len(head) - len(tail) if "..." in term else 0
        letters = list(head) + [f"...{n_ell - i}" for i in range(n_ell)] + list(tail)
        for letter, dim in zip(letters, shape):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    return math.prod(sizes.values())


def _scopes(node):
    """The module path the torch exporter recorded for a node: ['', 'layer1', 'layer1.0', ..., op]."""
    text = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    try:
        scopes = ast.literal_eval(text) if text else []
    except (ValueError, SyntaxError):
        return []
    return scopes if isinstance(scopes, list) else []


def _module(node, weight_names):
    """The PyTorch module a node came from: its weight's owner, else the exporter's name scope."""
    for name in node.input[1:2]:
        if name in weight_names and name.endswith(".weight"):
            return name[: -len(".weight")]
    scopes = _scopes(node)
    if len(scopes) >= 2:
        return scopes[-2] or "(model)"
    return node.name or node.output[0]


def _folded(node):
    """Name of a norm module the exporter folded into this conv, if any."""
    rules = next((p.value for p in node.metadata_props if p.key == "pkg.onnxscript.rewriter.rule_name"), "")
    scopes = _scopes(node)
    return scopes[-2] if "FuseBatchNorm" in rules and len(scopes) >= 2 else None


def count(model_or_path, shape=None):
    """GraphCosts of an ONNX model (path or ModelProto) for one sample."""
    is_path = isinstance(model_or_path, (str, Path))
    model = load(model_or_path) if is_path else model_or_path
    shape = input_shape(model, shape)
    inferred = _with_static_shapes(model, shape)
    shapes = _shapes(inferred)
    weights = {i.name: i for i in model.graph.initializer}
    layers, folded, uncounted, macs = {}, [], [], 0
    used, buffers = set(), set()
    needed = [n for node in inferred.graph.node if node.op_type in MAC_OPS for n in list(node.input[:2]) + [node.output[0]]]
    if any(n not in shapes for n in needed):
        folder = Path(model_or_path).parent if is_path else None
        shapes.update(_run_shapes(model, shape, sorted({n for n in needed if n not in shapes}), folder))
    fixed = set(weights)  # values that do not depend on the graph's input
    for node in inferred.graph.node:
        used.update(n for n in node.input if n in weights)
        if node.op_type == "BatchNormalization":
            buffers.update(node.input[3:5])
        if all(n in fixed for n in node.input if n):  # weights only: a runtime folds it into a constant
            fixed.update(node.output)
            continue
        if node.op_type in UNCOUNTED or (node.domain not in ("", "ai.onnx") and node.op_type in MAC_OPS):
            uncounted.append(node.name or node.op_type)
            continue
        if node.op_type not in MAC_OPS:
            continue
        m = node_macs(node, shapes)
        if m is None:
            raise UserError(f"shape inference left the shapes of {node.op_type} node '{node.name}' unknown; "
                            "pass --input-shape 1,C,H,W or simplify the graph (onnxsim)")
        where = _module(node, weights)
        layers[where] = layers.get(where, 0) + m
        macs += m
        if node.op_type == "Conv" and (norm := _folded(node)):
            folded.append((norm, where))
    params = sum(math.prod(weights[n].dims) for n in used - buffers
                 if weights[n].data_type in _FLOAT_TYPES and math.prod(weights[n].dims) > 1)  # scalars: constants
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
    return GraphCosts(macs, params, shape, layers, folded, uncounted, opset)
