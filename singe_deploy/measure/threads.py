"""`--threads auto`: the intra-op thread count the dense model runs fastest with on this CPU, found by measuring it.

Latency is timed interleaved (bench.measure_interleaved), which needs onnxruntime sessions that do not spin, and a
session that does not spin wakes its worker threads at every operator. On a small model that costs more than the
extra cores give: the demo model at batch 1 runs in 0.57 ms on one thread and 0.65 ms on two on a 2-core AMD EPYC
(docs/latency.md). So the count is measured: the dense model in onnxruntime at 1, 2, 4, ... threads up to the
physical cores, interleaved, at the latency batch; the fewest threads within TOLERANCE of the fastest win (fewer
threads time steadier and leave cores to the rest of the application). Cached per model architecture, input shape,
batch, runtime version and CPU. Other targets keep their runtime's default.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..pruning.latency import CACHE as TABLES
from ..pruning.latency import architecture, cache_path, export_fast, measured_once
from . import bench
from .device import cpu_model

TOLERANCE = 0.03  # a count within 3% of the fastest counts as fast as it
CACHE = TABLES.parent / "threads"


def candidates(cores):
    """1, 2, 4, ... below `cores`, and `cores`."""
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def choose(counts, ms):
    """The fewest threads whose time is within TOLERANCE of the fastest."""
    best = min(ms)
    return next(n for n, t in zip(counts, ms) if t <= best * (1 + TOLERANCE))


def measure(model, input_shape, batch, counts, opset=18, min_iters=10, min_seconds=0.5):
    """The dense model's median ms in onnxruntime at each thread count, timed interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.onnx"
        export_fast(model.eval(), [batch] + list(input_shape[1:]), path, opset)
        runners = [bench.OnnxRuntime(path, n, spinning=False) for n in counts]  # each holds what it read
    stats = bench.measure_interleaved(runners, input_shape, batch, min_iters=min_iters, min_seconds=min_seconds)
    return [round(s["median_ms"], 5) for s in stats]


def resolve(model, input_shape, target, batch=1, cache=None, log=print, opset=18):
    """The thread count for `--threads auto` and its record for the report: {threads, source, ...}. threads is
    None (the runtime's default) on targets other than onnxruntime on this CPU."""
    if target != "onnx":
        return None, {"threads": None, "source": "the runtime's default (measured for onnxruntime only)"}
    import onnxruntime

    counts = candidates(bench.default_threads())
    if len(counts) == 1:
        return counts[0], {"threads": counts[0], "source": "one physical core"}
    key = {"backend": "onnxruntime", "version": onnxruntime.__version__, "device": cpu_model(), "batch": batch,
           "architecture": architecture(model), "input_shape": list(input_shape), "counts": counts,
           "tolerance": TOLERANCE}
    path = Path(cache) if cache else cache_path(CACHE, key)

    def measured():
        ms = measure(model, input_shape, batch, counts, opset)
        return {"threads": choose(counts, ms), "source": "measured", "counts": counts, "ms": ms}

    record, how = measured_once(path, key, "threads", measured)
    times = ", ".join(f"{n} thread{'s' * (n > 1)} {t:.3f} ms" for n, t in zip(record["counts"], record["ms"]))
    log(f"threads auto: {record['threads']} on onnxruntime {key['device']} ({how}; the dense model at batch "
        f"{batch}: {times})")
    return record["threads"], dict(record, cache=str(path))

