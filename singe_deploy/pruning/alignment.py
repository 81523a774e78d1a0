"""`--round-to auto`: the channel alignment that runs fastest on the target, found by measuring it.

A CPU's convolution kernels are fast at some channel counts and slow between them: onnxruntime's blocked (NCHWc)
kernels need multiples of 16 floats on AVX-512 and 8 on AVX2, and fall back to a slower path otherwise. The probe
takes the model's heaviest convolutions (their kernel, stride and input size), and for each times a chain of DEPTH
convolutions of n input and n output channels at every n of a window near half the layer's width, all interleaved
in one loop.
A straight line fitted through a layer's times is what an alignment-blind count costs; an alignment a is scored
by how its multiples compare with that line (mean of time / line), which is what a model pruned to multiples of
a pays or saves against one pruned to any count. The smallest alignment within TOLERANCE of the best score wins:
a finer step prunes closer to the target and keeps more choice of channels.

Results are cached per layer shapes, backend, runtime version, device and threads, like latency tables.
Grouped and depthwise convolutions keep their own rule (plan.Planner._quantum).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from ..measure import bench
from ..measure.device import cpu_model
from .latency import CACHE as TABLES
from .latency import cache_path, measured_once

CANDIDATES = (1, 2, 4, 8, 16, 32)
TOLERANCE = 0.01  # an alignment within 1% of the best score counts as good as it
DEPTH = 3  # convolutions chained in one probe graph
LAYERS = 3  # the heaviest convolutions of distinct shapes that the probe times
CACHE = TABLES.parent / "alignment"


def probe_shapes(model, input_shape, layers=LAYERS):
    """[(width, kernel, stride, padding, H, W)] of the model's heaviest ungrouped 2-D convolutions (by MACs),
    distinct shapes only, heaviest first."""
    convs = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1}
    seen, hooks = {}, []

    def record(name, m):
        def hook(module, args, out):
            h, w = args[0].shape[-2:]
            shape = (m.out_channels, m.kernel_size[0], m.stride[0], _pad(m), int(h), int(w))
            macs = m.in_channels * m.out_channels * m.kernel_size[0] * m.kernel_size[1] * out.shape[-1] * out.shape[-2]
            seen[shape] = seen.get(shape, 0) + int(macs)
        return hook

    for n, m in convs.items():
        hooks.append(m.register_forward_hook(record(n, m)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(input_shape))
    finally:
        for h in hooks:
            h.remove()
    ranked = sorted(seen, key=lambda s: -seen[s])
    return [s for s in ranked if s[0] >= 16][:layers]


def _pad(m):
    p = m.padding
    return p if isinstance(p, str) else int(p[0])


def window(width):
    """The channel counts timed for a layer of `width` channels: 32 consecutive counts from a multiple of 16 near
    half its width, where pruned widths fall (64 from a multiple of 32 for layers of 256+ channels, so that
    multiples of 32 are timed twice too)."""
    size, step = (64, 32) if width >= 256 else (32, 16)
    low = max(16, (width // 2) // step * step)
    return list(range(low, low + size))


def score(counts, times, candidates=CANDIDATES):
    """{alignment: mean of time / fitted line at its multiples} for one layer (only alignments with 2+ multiples)."""
    n, t = np.asarray(counts, float), np.asarray(times, float)
    slope, intercept = np.polyfit(n, t, 1)
    ratio = t / np.maximum(slope * n + intercept, 1e-12)
    out = {}
    for a in candidates:
        at = ratio[n % a == 0]
        if len(at) >= 2:
            out[a] = float(at.mean())
    return out


def choose(layer_scores, tolerance=TOLERANCE):
    """(alignment, {alignment: mean score over layers}): the smallest alignment within `tolerance` of the best."""
    common = set.intersection(*(set(s) for s in layer_scores)) if layer_scores else set()
    mean = {a: float(np.mean([s[a] for s in layer_scores])) for a in sorted(common)}
    if not mean:
        return 1, mean
    best = min(mean.values())
    return min(a for a, v in mean.items() if v <= best * (1 + tolerance)), mean


class OnnxProbe:
    """Chains of DEPTH convolutions as ONNX graphs in onnxruntime on this CPU, sessions that do not spin."""

    def __init__(self, batch=1, threads=None):
        self.batch, self.threads = batch, threads or bench.default_threads()

    def runner(self, n, kernel, stride, pad, h, w):
        import tempfile

        import onnx
        from onnx import TensorProto, helper, numpy_helper

        same = {"pads": [kernel // 2] * 4}
        pads = {"pads": [pad] * 4} if isinstance(pad, int) else {"auto_pad": "SAME_UPPER"}
        rng, nodes, weights, x = np.random.default_rng(n), [], [], "x"
        for i in range(DEPTH):  # a chain, as in a model: layout changes around it are paid once, not per layer
            weights.append(numpy_helper.from_array(
                (rng.standard_normal((n, n, kernel, kernel)) * 0.05).astype(np.float32), f"w{i}"))
            nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], kernel_shape=[kernel, kernel],
                                       strides=[stride if i == 0 else 1] * 2, **(pads if i == 0 else same)),
                      helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
            x = f"r{i}"
        graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                 [self.batch, n, h, w])],
                                  [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], weights)
        # IR 8 is opset 18's: onnx's newest IR (11 from onnx 1.18) does not load in an onnxruntime older than onnx
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "probe.onnx"
            onnx.save(model, str(path))
            return bench.OnnxRuntime(path, self.threads, spinning=False)

    def key(self):
        import onnxruntime

        return {"backend": "onnxruntime", "version": onnxruntime.__version__, "device": cpu_model(),
                "threads": self.threads, "batch": self.batch}


class TorchProbe:
    """Chains of DEPTH convolutions in PyTorch on the CPU or a CUDA GPU."""

    def __init__(self, batch=1, device="cpu", threads=None, cuda_graph=False):
        self.batch, self.device, self.threads, self.cuda_graph = batch, device, threads, cuda_graph

    def runner(self, n, kernel, stride, pad, h, w):
        layers = []
        for i in range(DEPTH):
            layers += [torch.nn.Conv2d(n, n, kernel, stride if i == 0 else 1, pad if i == 0 else kernel // 2,
                                       bias=False), torch.nn.ReLU()]
        return bench.Torch(torch.nn.Sequential(*layers), self.device, self.threads, self.cuda_graph)

    def key(self):
        name = torch.cuda.get_device_name() if self.device == "cuda" else cpu_model()
        return {"backend": "torch", "version": str(torch.__version__), "device": f"{self.device}: {name}",
                "threads": self.threads or torch.get_num_threads(), "batch": self.batch,
                **({"cuda_graph": True} if self.cuda_graph else {})}


def measure(probe, shapes, min_iters=20, min_seconds=0.05):
    """The probe's figures: per layer shape, the counts timed and their median ms (interleaved within a layer)."""
    layers = []
    for width, kernel, stride, pad, h, w in shapes:
        counts = window(width)
        runners = [probe.runner(n, kernel, stride, pad, h, w) for n in counts]
        if all(r.device == "cpu" for r in runners):
            stats = bench.measure_interleaved(runners, [[1, n, h, w] for n in counts], probe.batch, warmup_iters=3,
                                              min_iters=min_iters, min_seconds=min_seconds / len(runners))
        else:
            stats = [None] * len(runners)
        times = []
        for n, r, st in zip(counts, runners, stats):
            if st is None:
                st = bench.measure(r, [1, n, h, w], probe.batch, warmup_iters=3, min_iters=min_iters,
                                   min_seconds=min_seconds / len(runners))
            times.append(round(st["median_ms"], 5))
        layers.append({"shape": {"width": width, "kernel": kernel, "stride": stride, "padding": pad, "hw": [h, w]},
                       "counts": counts, "ms": times})
    return layers


def probe_for(target, batch=1, device="cpu", threads=None, cuda_graph=False):
    """The probe of a deployment target, or None where it cannot time one here (TensorRT)."""
    if target == "onnx":
        return OnnxProbe(batch, threads)
    if target == "torch":
        return TorchProbe(batch, device, threads, cuda_graph and device == "cuda")
    return None


def resolve(model, input_shape, target, batch=1, device="cpu", threads=None, cache=None, log=print,
            cuda_graph=False, int8=False):
    """The alignment for `--round-to auto`, and its record for the report: {round_to, source, ...}. TensorRT is
    not probed (it cannot be installed here): its tensor cores want multiples of 8, or 32 for int8."""
    probe = probe_for(target, batch, device, threads, cuda_graph)
    if probe is None:
        value = 32 if int8 else 8
        log(f"round-to auto: {value} (TensorRT's tensor cores want channel multiples of {value} at this precision)")
        return value, {"round_to": value, "source": "rule", "why": f"TensorRT: channel multiples of {value}"}
    shapes = probe_shapes(model, input_shape)
    if not shapes:
        log("round-to auto: 1 (no ungrouped convolution of 16+ channels to probe)")
        return 1, {"round_to": 1, "source": "no convolution to probe"}
    key = dict(probe.key(), shapes=[list(s) for s in shapes], candidates=list(CANDIDATES), tolerance=TOLERANCE)
    path = Path(cache) if cache else cache_path(CACHE, key)

    def probed():
        layers = measure(probe, shapes)
        value, scores = choose([score(l["counts"], l["ms"]) for l in layers])
        return {"round_to": value, "source": "probe", "scores": {str(a): round(v, 4) for a, v in scores.items()},
                "layers": layers}

    record, how = measured_once(path, key, "round_to", probed)
    scores = ", ".join(f"{a}: {v:.3f}" for a, v in record["scores"].items())
    log(f"round-to auto: {record['round_to']} on {key['backend']} {key['device']} ({how}; time at multiples of "
        f"each alignment / fitted line: {scores})")
    return record["round_to"], dict(record, cache=str(path))


def resolved(schedule, model, input_shape, timer=None, log=print):
    """`schedule` (prune.Schedule) with round_to 'auto' measured: on the latency timer's backend when there is one,
    else on onnxruntime on this CPU (compress resolves it for its --target before pruning)."""
    if schedule.round_to != "auto":
        return schedule
    kind = type(timer).__name__
    target = {"TorchTimer": "torch", "TrtTimer": "trt"}.get(kind, "onnx")
    value, _ = resolve(model, input_shape, target, getattr(timer, "batch", 1), getattr(timer, "device", "cpu"),
                       getattr(timer, "threads", None), log=log)
    return dataclasses.replace(schedule, round_to=value)
