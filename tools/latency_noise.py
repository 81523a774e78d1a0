"""How much noise a latency table's pairs carry on this machine: the same model timed against itself, interleaved
(bench.measure_interleaved), as a fresh session against a fresh one and against one session kept for every pair
(as a table's dense reference would be). A ratio far from 1 is noise or bias; per-group effects smaller than its
spread cannot be measured by timing the whole model.

    python tools/latency_noise.py --model torchvision:mobilenet_v2 --input-shape 1,3,224,224 --iters 30,100
"""
import argparse

import numpy as np

from singe_deploy import bench
from singe_deploy.latency import OnnxTimer
from singe_deploy.models import build_model


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
