"""Where an ONNX model's time goes in onnxruntime on this CPU: per operator type, dense beside pruned.

    python tools/profile_onnx.py OUT/dense.onnx OUT/pruned.onnx [--batch 1] [--iters 200] [--threads 2]

Runs each file with onnxruntime's profiler (after a warm-up), sums the kernel time of each node per operator type
(convolutions split by kind: depthwise, grouped, or their kernel size, from the graph onnxruntime optimized) and
prints a table: ms per call of each type in each file (and how many nodes of it), dense / pruned, and the
share of the total. Profiling adds its own cost per node, so the totals run above `bench`'s times.
The files are run one after the other, so compare shares and ratios, not absolute times across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import defaultdict

import numpy as np


WARMUP = 20


def profile(path, batch, iters, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    opts.enable_profiling = True
    opts.log_severity_level = 3  # not the warning that an optimized graph holds this CPU's layouts: it is only read
    tmp = tempfile.mkdtemp()
    opts.profile_file_prefix = os.path.join(tmp, "p")
    opts.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")  # the graph the profiler names nodes of
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    kinds = conv_kinds(opts.optimized_model_filepath)
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch] + [d for d in inp.shape[1:]]).astype(np.float32)
    for _ in range(WARMUP + iters):
        session.run(None, {inp.name: x})
    with open(session.end_profiling()) as f:
        events = json.load(f)
    runs = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run")
    start = runs[WARMUP] if len(runs) > WARMUP else 0  # the warm-up calls are left out
    by_type, nodes = defaultdict(float), defaultdict(set)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            node = e["name"].removesuffix("_kernel_time")
            op = e["args"].get("op_name", "?") + (f" {kinds[node]}" if node in kinds else "")
            by_type[op] += e["dur"] / 1000 / iters
            nodes[op].add(e["name"])
    by_type = {k: (v, len(nodes[k])) for k, v in by_type.items()}
    return by_type


def conv_kinds(path):
    """{node name: 'depthwise' | 'grouped' | '1x1' | 'KxK'} for the convolutions of an (optimized) ONNX graph."""
    import onnx
    from onnx import helper

    graph = onnx.load(path, load_external_data=False).graph
    dims = {t.name: list(t.dims) for t in graph.initializer}
    kinds = {}
    for n in graph.node:
        if "Conv" not in n.op_type:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        group = attrs.get("group", 1)
        w = dims.get(n.input[1], []) if len(n.input) > 1 else []
        kernel = list(attrs.get("kernel_shape", w[2:]))
        if group > 1:
            kinds[n.name] = "depthwise" if w and w[1] == 1 else "grouped"
        elif kernel:
            kinds[n.name] = "x".join(map(str, kernel))
    return kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dense")
    ap.add_argument("pruned")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    d, p = (profile(f, a.batch, a.iters, a.threads) for f in (a.dense, a.pruned))
    td, tp = sum(v for v, _ in d.values()), sum(v for v, _ in p.values())
    print(f"batch {a.batch}, {a.iters} calls each, {a.threads} threads; kernel time per call: dense {td:.3f} ms, "
          f"pruned {tp:.3f} ms ({td / tp:.2f}x)")
    print("| operator | dense ms (nodes) | share | pruned ms (nodes) | share | dense / pruned |")
    print("|---|---:|---:|---:|---:|---:|")
    for op in sorted(set(d) | set(p), key=lambda k: -d.get(k, (0, 0))[0]):
        (a_, na), (b_, nb) = d.get(op, (0.0, 0)), p.get(op, (0.0, 0))
        ratio = f"{a_ / b_:.2f}x" if b_ else ""
        print(f"| {op} | {a_:.3f} ({na}) | {100 * a_ / td:.0f}% | {b_:.3f} ({nb}) | {100 * b_ / tp:.0f}% | {ratio} |")


if __name__ == "__main__":
    main()
