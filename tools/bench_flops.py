"""How long counting takes: the model counter on torchvision:resnet50 at 224 (real CPU tensors and the
meta device) and the ONNX-graph counter on its export. Goal: the model count under 2 s.

    python tools/bench_flops.py [--model torchvision:resnet50] [--repeats 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from singe_deploy.measure import onnx_flops
from singe_deploy.deploy.export import export_onnx
from singe_deploy.measure.flops import count
from singe_deploy.models.specs import build_model, default_input_shape


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), max(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="torchvision:resnet50")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    shape = [1, *default_input_shape(args.model)]
    t = time.perf_counter()
    model = build_model(args.model).eval()
    print(f"build {args.model}: {time.perf_counter() - t:.2f} s (not part of counting)")
    med, worst = timed(lambda: count(model, shape), args.repeats)
    print(f"count on CPU tensors, {'x'.join(map(str, shape))}: median {med:.3f} s, max {worst:.3f} s "
          f"({args.repeats} runs, {torch.get_num_threads()} threads) -> goal < 2 s: {'met' if worst < 2 else 'MISSED'}")
    with torch.device("meta"):
        meta = build_model(args.model).eval()
    med, worst = timed(lambda: count(meta, shape), args.repeats)
    print(f"count on the meta device: median {med:.3f} s, max {worst:.3f} s")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_onnx(model, shape, path)
        med, worst = timed(lambda: onnx_flops.count(path), args.repeats)
    print(f"count the ONNX graph (load + shape inference): median {med:.3f} s, max {worst:.3f} s")


if __name__ == "__main__":
    main()
