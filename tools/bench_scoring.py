"""Time to score every channel of a model with each criterion, on the same calibration batches.

    python tools/bench_scoring.py                       # the demo model, SInGE vs Taylor
    python tools/bench_scoring.py --criteria singe,taylor,hessian,l2 --calib-batches 4
    python tools/bench_scoring.py --singe-batch-steps 1,2,8 --repeat 1   # batched path steps vs one by one
    python tools/bench_scoring.py --model torchvision:resnet50 --data synthetic --input-shape 1,3,224,224 \
        --batch-size 8 --calib-batches 1 --repeat 1

Prints seconds per criterion (best of --repeat) and the ratio to Taylor. Before any timing, --warmup untimed Taylor
scorings (default 1) warm the allocator and the kernels, so that the first criterion timed does not pay for that.
"""
import argparse
import time

import torch

from singe_deploy.config import defaults, validate
from singe_deploy.pruning.groups import all_groups, default_ignored
from singe_deploy.scoring.importance import make_criterion
from singe_deploy.source import Source


def load(args):
    """Model, data and sample shape exactly as compress loads them (the demo's baseline for the demo)."""
    shape = [int(v) for v in args.input_shape.split(",")] if args.input_shape else None
    cfg = validate(dict(defaults(), model=args.model, data=args.data, batch_size=args.batch_size, input_shape=shape,
                        checkpoint=getattr(args, "checkpoint", None) or "auto"))
    model, data, shape, _ = Source.from_config(cfg).load(log=lambda *a: None)
    return model.eval(), data, shape


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--criteria", default="singe,taylor")
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--singe-steps", type=int, default=8)
    ap.add_argument("--singe-path", default="frozen")
    ap.add_argument("--singe-rule", default="riemann")
    ap.add_argument("--singe-batch-steps", default="auto", help="N or auto; a list like 1,2,8 times each")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed Taylor scorings before any timing (default 1)")
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--input-shape", help="1,C,H,W (default: the data's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    args = ap.parse_args()
    model, data, shape = load(args)
    model.to(args.device)
    batches = [(x.to(args.device), y.to(args.device)) for x, y in data.calibration(args.calib_batches)]
    _, groups = all_groups(model, torch.zeros((1,) + shape, device=args.device), default_ignored(model))
    for _ in range(args.warmup):
        make_criterion("taylor").score(model, groups, batches)
    times = {}
    for name in args.criteria.split(","):
        for bs in args.singe_batch_steps.split(",") if name == "singe" else [None]:
            opts = {"steps": args.singe_steps, "path": args.singe_path, "rule": args.singe_rule,
                    "batch_steps": bs} if name == "singe" else {}
            label = f"singe (batch_steps {bs})" if "," in args.singe_batch_steps and bs else name
            best = float("inf")
            for _ in range(args.repeat):
                crit = make_criterion(name, **opts)
                t = time.perf_counter()
                crit.score(model, groups, batches)
                if args.device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t)
            if name == "singe" and bs == "auto":
                label += f" -> {crit.options['batch_steps']}"
            times[label] = best
    ref = times.get("taylor")
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"{args.model} at {'x'.join(map(str, shape))}, {args.calib_batches} x {args.batch_size} calibration samples, "
          f"{where}")
    for name, t in times.items():
        ratio = f"{t / ref:.2f}x taylor" if ref else ""
        print(f"{name:>8}: {t:.3f} s  {ratio}")


if __name__ == "__main__":
    main()
