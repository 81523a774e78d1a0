"""How faithful SInGE's cheap paths are to the exact one, and what they cost.

The `unit` path integrates each channel's removal alone (one pass per channel and step); `group` moves a
whole dependency group along the path together, `network` every group at once (m passes per batch).
For each path: seconds to score, and the Spearman rank correlation of its scores with the unit path's,
over all channels and within each group (the ranking the planner uses). A steps sweep compares the
network path at m = 1, 2, 4, 8 with m = 16.

    python tools/path_fidelity.py                                    # demo model, Fashion-MNIST
    python tools/path_fidelity.py --model torchvision:resnet18 --data synthetic --input-shape 1,3,32,32 \
        --batch-size 16 --steps 4
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bench_scoring import load  # tools/ is on the path when run as a script
from singe_deploy.groups import all_groups, default_ignored
from singe_deploy.importance import SInGE


def ranks(v):
    order = np.argsort(v, kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(len(v))
    return r


def spearman(a, b):
    if len(a) < 2:
        return float("nan")
    ra, rb = ranks(np.asarray(a)), ranks(np.asarray(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def scores(model, groups, batches, path, steps):
    crit = SInGE(steps=steps, path=path)
    t = time.perf_counter()
    crit.fit(model, groups, batches)
    seconds = time.perf_counter() - t
    per_group = [crit(g) for g in groups]
    return [s.double().numpy() for s in per_group if s is not None], seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--input-shape", default=None, help="1,C,H,W (default: the data's)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--calib-batches", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    model, data, shape = load(args)
    batches = data.calibration(args.calib_batches)
    _, groups = all_groups(model, torch.zeros((1,) + shape), default_ignored(model))
    result = {"model": args.model, "data": args.data, "samples": args.calib_batches * args.batch_size,
              "steps": args.steps, "threads": torch.get_num_threads(), "paths": {}, "steps_sweep": {}}
    ref, ref_s = scores(model, groups, batches, "unit", args.steps)
    result["paths"]["unit"] = {"seconds": ref_s, "spearman_all": 1.0, "spearman_within_group_mean": 1.0}
    flat = np.concatenate(ref)
    for path in ("group", "network"):
        s, sec = scores(model, groups, batches, path, args.steps)
        within = [spearman(a, b) for a, b in zip(s, ref) if len(a) > 1]
        result["paths"][path] = {"seconds": sec, "spearman_all": spearman(np.concatenate(s), flat),
                                 "spearman_within_group_mean": float(np.nanmean(within))}
    top, _ = scores(model, groups, batches, "network", 16)
    for m in (1, 2, 4, 8):
        s, sec = scores(model, groups, batches, "network", m)
        result["steps_sweep"][m] = {"seconds": sec, "spearman_vs_m16": spearman(np.concatenate(s), np.concatenate(top))}
    print(f"{args.model} on {args.data}: {result['samples']} calibration samples, m = {args.steps}, "
          f"{len(flat)} channels in {len(ref)} groups, {result['threads']} threads")
    print("| path | seconds | Spearman vs unit, all channels | mean within-group Spearman |")
    print("|---|---:|---:|---:|")
    for path, v in result["paths"].items():
        print(f"| {path} | {v['seconds']:.2f} | {v['spearman_all']:.4f} | {v['spearman_within_group_mean']:.4f} |")
    print("\n| network path, m | seconds | Spearman vs m = 16 |\n|---:|---:|---:|")
    for m, v in result["steps_sweep"].items():
        print(f"| {m} | {v['seconds']:.2f} | {v['spearman_vs_m16']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
