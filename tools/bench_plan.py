"""Time to plan one pruning step (find the level that meets the step's target), beside the time to score it.

    OMP_NUM_THREADS=1 python tools/bench_plan.py
    OMP_NUM_THREADS=1 python tools/bench_plan.py --models torchvision:resnet50 --input-shape 1,3,224,224

For each model (random weights, synthetic data: planning does not depend on them): Taylor scoring of
--calib-batches x --batch-size images, then the first step of a --steps-step run to --macs-reduction, planned
twice from the same scores: as compress plans (levels costed from channel counts, the chosen one measured)
and with every level tried measured on a pruned copy. Both must choose the same channels; prints seconds
(best of --repeat).
"""
import argparse
import time

import torch

from singe_deploy.pruning import plan as P
from singe_deploy.data.specs import make_data
from singe_deploy.pruning.groups import all_groups, default_ignored
from singe_deploy.scoring.importance import make_criterion
from singe_deploy.models.specs import build_model
from singe_deploy.pruning.entwined import Schedule

MODELS = "torchvision:mobilenet_v3_small,torchvision:mobilenet_v2,torchvision:efficientnet_b0,torchvision:resnet50"


def best(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--input-shape", default="1,3,224,224")
    ap.add_argument("--macs-reduction", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--ranking", default="global", choices=P.RANKINGS)
    ap.add_argument("--calib-batches", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    shape = [int(v) for v in args.input_shape.split(",")]
    example = torch.zeros(shape)
    print("| model | Taylor score s | plan s (compress) | plan s (every level measured) | speedup | same plan |")
    print("|---|---:|---:|---:|---:|---|")
    for spec in args.models.split(","):
        model = build_model(spec, 10, shape[1]).eval()
        data = make_data("synthetic", args.batch_size, tuple(shape[1:]), num_classes=10)
        batches = data.calibration(args.calib_batches)
        _, groups = all_groups(model, example, default_ignored(model))
        score_s, scores = best(lambda: make_criterion("taylor").score(model, groups, batches), args.repeat)
        names = {id(m): n for n, m in model.named_modules()}
        costs = P.channel_costs(model, groups, shape, "macs") if args.ranking == "cost" else None
        planner = P.Planner(model, groups, scores, {}, Schedule(ranking=args.ranking), names, costs)
        target = P.measure(model, shape, "macs") / args.macs_reduction ** (1 / args.steps)
        fast_s, fast = best(lambda: P.search(planner, model, example, shape, "macs", target, None), args.repeat)
        slow_s, slow = best(lambda: P._bisect(planner, P._Measured(planner, model, example, shape, "macs"),
                                              target, None), args.repeat)
        same = fast[0] == planner.removals(slow[0])
        print(f"| {spec} | {score_s:.2f} | {fast_s:.2f} | {slow_s:.2f} | {slow_s / fast_s:.1f}x | "
              f"{'yes' if same else 'NO'}{'' if not fast[3] else ' (measured every level)'} |")


if __name__ == "__main__":
    main()
