"""How much noise a latency table's pairs carry on this machine: the same model timed against itself, interleaved
(bench.measure_interleaved), as a fresh session against a fresh one and against one session kept for every pair
(as a table's dense reference would be). A ratio far from 1 is noise or bias; per-group effects smaller than its
spread cannot be measured by timing the whole model. First, the model alone and interleaved with a copy of itself,
with onnxruntime's thread spinning on and off (why paired sessions do not spin).

    python tools/latency_noise.py --model torchvision:mobilenet_v2 --input-shape 1,3,224,224 --iters 30,100
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

from singe_deploy.measure import bench
from singe_deploy.pruning.latency import OnnxTimer, export_fast
from singe_deploy.models.specs import build_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="torchvision:mobilenet_v2")
    ap.add_argument("--input-shape", default="1,3,224,224")
    ap.add_argument("--num-classes", type=int, default=1000)
    ap.add_argument("--iters", default="30,100", help="timed iterations per pair (a comma list)")
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args()
    shape = [int(v) for v in args.input_shape.split(",")]
    model = build_model(args.model, args.num_classes, shape[1]).eval()
    timer = OnnxTimer(shape)
    make = timer.factory(model)
    kept = make()
    print("| spinning | alone ms | interleaved with a copy ms |")
    print("|---|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.onnx"
        export_fast(model, shape, path, timer.opset)
        for spinning in (True, False):
            a, b = (bench.OnnxRuntime(path, timer.threads, spinning=spinning) for _ in range(2))
            alone = bench.measure(a, shape, 1, min_iters=50, min_seconds=1)["median_ms"]
            both = bench.measure_interleaved([a, b], shape, 1, min_iters=50, min_seconds=1)[0]["median_ms"]
            print(f"| {'on' if spinning else 'off'} | {alone:.2f} | {both:.2f} |")
    print(f"{args.model} {args.input_shape}, onnxruntime, {timer.threads} threads: ratio of medians, second / first")
    print("| iterations | pair | ratios | mean | sd |")
    print("|---:|---|---|---:|---:|")
    for iters in [int(v) for v in args.iters.split(",")]:
        for name, first in (("fresh / fresh", make), ("fresh / one kept session", lambda: kept)):
            ratios = []
            for _ in range(args.pairs):
                stats = bench.measure_interleaved([first(), make()], shape, 1, min_iters=iters, min_seconds=0.5)
                ratios.append(stats[1]["median_ms"] / stats[0]["median_ms"])
            print(f"| {iters} | {name} | {' '.join(f'{r:.3f}' for r in ratios)} | {np.mean(ratios):.3f} | "
                  f"{np.std(ratios):.3f} |")


if __name__ == "__main__":
    main()
