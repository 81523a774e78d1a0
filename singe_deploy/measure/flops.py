"""Analytic MACs and params, counted at the dispatcher so no op is silently missed.

Convention (also written into every report):
- MACs: multiply-accumulates per sample (batch 1) of convolution (groups, stride, dilation;
  transposed convolution per input element), linear/matmul/bmm and attention (QK^T and AV).
  FLOPs = 2 x MACs. Biases are not counted.
- other_ops: one op per output element of every other computing op (norms, activations,
  elementwise adds, pooling); views and copies count zero. A BatchNorm folded into its conv at
  deploy time costs nothing, so other_ops is an upper bound for deployed models.
- params: unique parameter elements (shared weights once); buffers are not parameters. unused_params:
  those the counted forward never reads (auxiliary heads in eval mode); an export leaves them out.
- work that reads weights and buffers only, never the input (Swin V2's relative position bias MLP over fixed
  coordinates), is not counted: it is the same for every input, and the exported graph folds it into a constant.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

CONVENTION = ("MACs = multiply-accumulates per sample (batch 1) of conv, linear, matmul/bmm and attention, "
              "counted at the aten dispatcher; FLOPs = 2 x MACs; biases not counted. other_ops = one op per "
              "output element of every other computing op (norms, activations, adds, pooling); views/copies "
              "count zero; work on weights alone (folded into constants on export) is not counted. "
              "params = unique parameter elements.")

aten = torch.ops.aten
_FREE = {
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "squeeze", "unsqueeze", "alias",
    "detach", "clone", "contiguous", "_to_copy", "copy_", "empty", "empty_like", "zeros", "zeros_like", "ones",
    "ones_like", "slice", "select", "split", "split_with_sizes", "unbind", "as_strided", "cat", "stack", "flatten",
    "_reshape_alias", "lift_fresh", "new_empty", "new_zeros", "fill_", "zero_", "arange", "full", "scalar_tensor",
    "lift_fresh_copy", "index_select", "narrow", "chunk", "unsafe_split", "_local_scalar_dense", "sym_size",
    "sym_stride", "is_same_size", "empty_strided", "set_", "resize_", "_unsafe_index",
}
_SDPA = {"_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
         "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
         "_scaled_dot_product_attention_math", "_scaled_dot_product_fused_attention_overrideable"}


def _shape(t):
    return tuple(t.shape) if isinstance(t, torch.Tensor) else ()


def op_macs(name, args, out):
    """MACs of one aten op, or None if it is not a MAC op."""
    if name in ("convolution", "_convolution", "mkldnn_convolution", "_convolution_mode", "conv2d", "conv1d",
                "conv3d"):
        x, w = args[0], args[1]
        transposed = bool(args[6]) if name in ("convolution", "_convolution") else False
        k = math.prod(w.shape[2:])
        if transposed:
            return x.numel() * w.shape[1] * k
        o = out[0] if isinstance(out, (tuple, list)) else out
        return o.numel() * w.shape[1] * k
    if name == "mm":
        (n, k), m = _shape(args[0]), _shape(args[1])[1]
        return n * k * m
    if name == "addmm":
        (n, k), m = _shape(args[1]), _shape(args[2])[1]
        return n * k * m
    if name in ("bmm", "baddbmm"):
        a, b = (args[0], args[1]) if name == "bmm" else (args[1], args[2])
        bs, n, k = _shape(a)
        return bs * n * k * _shape(b)[2]
    if name == "linear":
        w = args[1]
        return args[0].numel() // w.shape[1] * w.shape[0] * w.shape[1]
    if name == "_native_multi_head_attention":  # fused nn.MultiheadAttention (eval, no grad)
        q, k, v, e = args[0], args[1], args[2], args[3]
        bq, lq, ls = q.numel() // (q.shape[-2] * e), q.shape[-2], k.shape[-2]
        proj = bq * (lq * e * e + 2 * ls * e * e + lq * e * e)
        return proj + bq * lq * ls * 2 * e
    if name in _SDPA:
        q, k, v = args[0], args[1], args[2]
        lead = math.prod(q.shape[:-2])
        return lead * q.shape[-2] * k.shape[-2] * (q.shape[-1] + v.shape[-1])
    return None


@dataclass
class Layer:
    name: str
    type: str
    macs: int = 0
    other_ops: int = 0
    params: int = 0
    in_channels: int | None = None
    out_channels: int | None = None


@dataclass
class Costs:
    macs: int
    params: int
    other_ops: int
    input_shape: list
    layers: list = field(default_factory=list)
    unused_params: int = 0  # params this forward never reads (e.g. auxiliary heads in eval mode)
    convention: str = CONVENTION

    def to_dict(self, per_layer=True):
        d = asdict(self)
        if not per_layer:
            d.pop("layers")
        return d


class _Counter(TorchDispatchMode):
    def __init__(self, weights=()):
        super().__init__()
        self.stack = [""]
        self.macs, self.other = {}, {}
        self.seen = set()  # ids of the tensors ops read: parameters never read are unused in this forward
        self.fixed = {id(t): t for t in weights}  # tensors that do not depend on the input (kept alive: ids stay)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.update(id(a) for a in args if isinstance(a, torch.Tensor))
        self.seen.update(id(a) for a in (kwargs or {}).values() if isinstance(a, torch.Tensor))
        out = func(*args, **(kwargs or {}))
        if all(id(t) in self.fixed for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)):
            # weights only (a bias MLP over fixed coordinates): the exported graph folds it into a constant
            self.fixed.update((id(t), t) for t in tree_leaves(out) if isinstance(t, torch.Tensor))
            return out
        name = func.__name__.split(".")[0]
        where = self.stack[-1]
        macs = op_macs(name, args, out)
        if macs is not None:
            self.macs[where] = self.macs.get(where, 0) + int(macs)
        elif name not in _FREE and not name.startswith("_foreach"):
            o = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                self.other[where] = self.other.get(where, 0) + o.numel()
        return out


def channels_of(m):
    if isinstance(m, nn.modules.conv._ConvNd):
        return m.in_channels, m.out_channels
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, nn.modules.batchnorm._NormBase):
        return m.num_features, m.num_features
    return None, None


@torch.no_grad()
def count(model, input_shape):
    """Costs of `model` for one sample; input_shape is the full input shape, its batch is set to 1."""
    shape = [1] + list(input_shape)[1:]
    counter = _Counter(list(model.parameters()) + list(model.buffers()))
    handles = []
    for name, m in model.named_modules():
        handles.append(m.register_forward_pre_hook(lambda mod, a, n=name: counter.stack.append(n)))  # returns None
        handles.append(m.register_forward_hook(lambda mod, a, o: counter.stack.pop() and None))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        x = torch.zeros(shape, dtype=param.dtype if param is not None else torch.float32,
                        device=param.device if param is not None else "cpu")
        with counter:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = []
    modules = dict(model.named_modules())
    for name, m in modules.items():
        own = sum(p.numel() for p in m.parameters(recurse=False))
        macs, other = counter.macs.get(name, 0), counter.other.get(name, 0)
        if macs or other or own:
            cin, cout = channels_of(m)
            layers.append(Layer(name or "(model)", type(m).__name__, macs, other, own, cin, cout))
    params = sum(p.numel() for p in model.parameters())
    unused = sum(p.numel() for p in model.parameters() if id(p) not in counter.seen)
    return Costs(sum(counter.macs.values()), params, sum(counter.other.values()), shape, layers, unused)


def rolled(layers):
    """Totals per module subtree: 'a.b' also counts into 'a' and into '' (the whole model)."""
    out = {}
    for name, value in layers.items():
        parts = [] if name in ("", "(model)") else name.split(".")
        for i in range(len(parts) + 1):
            key = ".".join(parts[:i])
            out[key] = out.get(key, 0) + value
    return out


def layer_differences(a, b):
    """Deepest modules whose MACs differ between two {module: MACs} maps, where the difference reaches
    the whole model (work moved between a module and its child, as fused attention does, is not listed)."""
    ra, rb = rolled(a), rolled(b)
    differ = {k for k in set(ra) | set(rb) if ra.get(k, 0) != rb.get(k, 0)}
    out = []
    for k in sorted(differ):
        parts = k.split(".") if k else []
        ancestors = all(".".join(parts[:i]) in differ for i in range(len(parts)))
        deepest = not any(d != k and (d.startswith(k + ".") or (k == "" and d)) for d in differ)
        if ancestors and deepest:
            out.append({"layer": k or "(model)", "model": ra.get(k, 0), "onnx": rb.get(k, 0)})
    return out


def randomized(model):
    """A copy with random, distinct weights and positive variances: the exporter then cannot merge equal
    constants (fresh norms are all ones and zeros) and folding a norm leaves a real bias."""
    import copy

    m = copy.deepcopy(model).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in list(m.parameters()) + [b for b in m.buffers() if b.is_floating_point()]:
            t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * 0.1 + 0.05)
    return m


def cross_check(model, costs, opset=18, tolerance=1e-3):
    """Count `model` again from the ONNX graph of a randomized copy and compare (see `compare`)."""
    import tempfile
    from pathlib import Path

    from ..deploy.export import export_onnx
    from . import onnx_flops

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(randomized(model), costs.input_shape, path, opset)
        graph = onnx_flops.count(path, costs.input_shape)
    return compare(model, costs, graph, tolerance)


def compare(model, costs, graph, tolerance=1e-3):
    """The model counter's Costs against an ONNX GraphCosts of the same model. MACs agree within
    `tolerance`; params are expected to differ by exactly the params the forward never reads and the
    norms the exporter folded into convs (their weight and bias go, the conv gains a bias if it had none)."""
    modules = dict(model.named_modules())
    folded = sum(p.numel() for norm, _ in graph.folded_norms if norm in modules for p in modules[norm].parameters())
    bias = sum(getattr(modules.get(conv), "out_channels", 0) for _, conv in graph.folded_norms
               if conv in modules and getattr(modules[conv], "bias", 0) is None)
    expected = costs.params - costs.unused_params - folded + bias
    rel = (graph.macs - costs.macs) / costs.macs if costs.macs else float(graph.macs != 0)
    ours = {l.name: l.macs for l in costs.layers if l.macs}
    result = dict(graph.to_dict(), macs_rel_diff=rel, macs_agree=abs(rel) <= tolerance,
                  params_expected=expected, params_agree=graph.params == expected,
                  folded_params=folded, added_biases=bias,
                  layer_differences=layer_differences(ours, graph.layers))
    result["agree"] = result["macs_agree"] and not graph.uncounted
    return result


def disagreement(check, where=None):
    """One line saying how a `compare` result disagrees; `where` says where the layers are listed."""
    parts = []
    if not check["macs_agree"]:
        layers = check["layer_differences"]
        named = where or ", ".join(d["layer"] for d in layers[:5]) + (" ..." if len(layers) > 5 else "")
        parts.append(f"ONNX graph MACs {check['macs']:,} differ from the model's by {100 * check['macs_rel_diff']:+.3f}% "
                     f"(> 0.1%) in {len(layers)} layer(s): {named}")
    if check["uncounted_ops"]:
        parts.append(f"the graph has MAC ops this counter does not read: {', '.join(check['uncounted_ops'][:5])}")
    return "; ".join(parts)
