"""Time to score every channel of a model with each criterion, on the same calibration batches.

    python tools/bench_scoring.py                       # the demo model, SInGE vs Taylor
    python tools/bench_scoring.py --criteria singe,taylor,hessian,l2 --calib-batches 4
    python tools/bench_scoring.py --model torchvision:resnet50 --data synthetic --input-shape 1,3,224,224 \
        --batch-size 8 --calib-batches 1 --repeat 1

Prints seconds per criterion (best of --repeat) and the ratio to Taylor.
"""
import argparse
import time

import torch

from singe_deploy.compress import prepare
from singe_deploy.config import defaults, validate
from singe_deploy.groups import all_groups, default_ignored
from singe_deploy.importance import make_criterion


def load(args):
    """Model, data and sample shape exactly as compress loads them (the demo's baseline for the demo)."""
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    cfg = validate(dict(defaults(), model=args.model, data=args.data, batch_size=args.batch_size, input_shape=shape))
    p = prepare(cfg, log=lambda *a: None)
    return p["model"].eval(), p["data"], p["shape"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criteria", default="singe,taylor")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--singe-steps", type=int, default=8)
    ap.add_argument("--singe-path", default="network")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--input-shape", help="1,C,H,W (default: the data's)")
    args = ap.parse_args()
    model, data, shape = load(args)
    batches = data.calibration(args.calib_batches)
    _, groups = all_groups(model, torch.zeros((1,) + shape), default_ignored(model))
    times = {}
    for name in args.criteria.split(","):
        opts = {"steps": args.singe_steps, "path": args.singe_path} if name == "singe" else {}
        best = float("inf")
        for _ in range(args.repeat):
            crit = make_criterion(name, **opts)
            t = time.perf_counter()
            crit.score(model, groups, batches)
            best = min(best, time.perf_counter() - t)
        times[name] = best
    ref = times.get("taylor")
    print(f"{args.model} at {'x'.join(map(str, shape))}, {args.calib_batches} x {args.batch_size} calibration samples, "
          f"{torch.get_num_threads()} threads")
    for name, t in times.items():
        ratio = f"{t / ref:.2f}x taylor" if ref else ""
        print(f"{name:>8}: {t:.3f} s  {ratio}")


if __name__ == "__main__":
    main()
