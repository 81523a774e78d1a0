"""How faithful SInGE's cheap paths are to the exact one, and what they cost.

The `unit` path integrates each channel's removal alone (one pass per channel and step); `frozen` (the default)
is the unit path with each channel's gradient held at mu = 1 (one pass per batch for all channels); `group` moves
a whole dependency group along the path together, `network` every group at once (m passes per batch).
For each path: seconds to score, and the Spearman rank correlation of its scores with the unit path's,
over all channels and within each group (the ranking the planner uses). A quadrature sweep compares the
network path's right Riemann sums (m = 1..16) and Gauss-Legendre sums (m = 1..8) with a 32-point
Gauss-Legendre reference: how many passes the integral needs.

    python tools/path_fidelity.py                                    # demo model, Fashion-MNIST
    python tools/path_fidelity.py --model torchvision:resnet18 --data synthetic --input-shape 1,3,32,32 \
        --batch-size 16 --steps 4
    python tools/path_fidelity.py --rules-only                       # only the quadrature sweep
    python tools/path_fidelity.py --oracle --calib-batches 1 --batch-size 64   # every criterion vs removal
    python tools/path_fidelity.py --device cuda --replicas 8 --no-rules      # the cost on a GPU, x Taylor
    python tools/path_fidelity.py --model torchvision:resnet18 ... --unit-sample 256   # exact path on 256 channels
    python tools/path_fidelity.py --model torchvision:mobilenet_v2 --input-shape 1,3,64,64 --checkpoint W.pt \
        --batch-size 64 --unit-sample 96 --no-rules                # any model; W.pt a state dict
    python tools/path_fidelity.py --calib-batches 4 --calib-sweep 16,40,128   # fewer images against all of them

`--oracle` measures each channel's removal damage (the loss change of zeroing it alone, `--singe-variant
removal`, R channels per forward through activation hooks) and ranks every criterion against it: the
SInGE forms and paths (spec, completeness; frozen, network, unit), Taylor, l1, l2. The completeness form on the
unit path converges to the removal damage as m grows (integrated gradients' completeness axiom).

`--calib-sweep N,...` asks what a smaller calibration set costs in ranking: each criterion (SInGE's default
network path, Taylor) scores N images drawn at random (3 draws) and is ranked against its own scores on all
calibration images.

Every path's seconds are also given as a multiple of Taylor's (one pass per batch, timed after a warm-up pass).
`--replicas R,...` adds the unit path in its completeness form, R units per pass (the form the replicas can
serve), and the measured removal damage, against the spec unit path.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

from bench_scoring import load  # tools/ is on the path when run as a script
from singe_deploy.pruning.groups import all_groups, default_ignored, param_names, slices
from singe_deploy.scoring.importance import SInGE, make_criterion


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


def _sync(batches):
    if batches[0][0].is_cuda:
        torch.cuda.synchronize()


def scores(model, groups, batches, path, steps, rule="riemann", crit=None):
    crit = crit or SInGE(steps=steps, path=path, rule=rule)
    _sync(batches)
    t = time.perf_counter()
    crit.fit(model, groups, batches)
    _sync(batches)
    seconds = time.perf_counter() - t
    per_group = [crit(g) for g in groups]
    return [s.double().numpy() for s in per_group if s is not None], seconds


def sampled_unit_path(model, groups, batches, steps, n, seed=0):
    """The exact unit path for n channels drawn at random (seeded) instead of all: per group, the drawn channel
    indices and their scores, and the seconds. Its time, scaled by channels / n, estimates the whole path's."""
    crit = SInGE(steps=steps, path="unit")
    names = param_names(model)
    group_slices = [slices(g, names) for g in groups]
    sizes = [len(g[0].idxs) for g in groups]
    units = [(i, j) for i, gs in enumerate(group_slices) if gs for j in range(sizes[i])]
    pick = sorted(torch.randperm(len(units), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    drawn = {}
    _sync(batches)
    t = time.perf_counter()
    for i, j in (units[k] for k in pick):
        drawn.setdefault(i, []).append((j, crit._integrate(model, [group_slices[i]], [sizes[i]], batches, [j])[0][j]))
    _sync(batches)
    seconds = time.perf_counter() - t
    keep = [i for i, gs in enumerate(group_slices) if gs]  # scores() lists these groups, in this order
    idx = [np.array([j for j, _ in drawn.get(i, [])], dtype=int) for i in keep]
    ref = [np.array([float(v) for _, v in drawn.get(i, [])]) for i in keep]
    return idx, ref, seconds, len(units)


QUICK = 30  # seconds: paths faster than this are timed as the best of 3, like Taylor


def paths(model, groups, batches, steps, result, replicas=(), unit_sample=None):
    """frozen, group and network paths (and the replicated unit paths) against the exact unit path, at `steps`
    Riemann steps; seconds also as a multiple of Taylor's (paths under QUICK seconds: best of 3). With
    unit_sample = n, the unit path covers n channels drawn at random and every Spearman is taken over those
    channels."""
    scores(model, groups, batches, None, None, crit=make_criterion("taylor"))  # warm-up (CUDA, allocator)
    taylor = min(scores(model, groups, batches, None, None, crit=make_criterion("taylor"))[1] for _ in range(3))
    result["taylor_seconds"] = taylor
    if unit_sample:
        idx, ref, ref_s, total = sampled_unit_path(model, groups, batches, steps, unit_sample)
        result["unit_sample"] = {"channels": int(sum(len(i) for i in idx)), "of": total, "seconds": ref_s}
        ref_s *= total / result["unit_sample"]["channels"]  # the whole path's time, estimated
        pick = lambda s: [v[i] for v, i in zip(s, idx)]  # noqa: E731
    else:
        ref, ref_s = scores(model, groups, batches, "unit", steps)
        pick = lambda s: s  # noqa: E731
    result["paths"]["unit"] = {"seconds": ref_s, "spearman_all": 1.0, "spearman_within_group_mean": 1.0}
    rivals = [(path, SInGE(steps=steps, path=path)) for path in ("frozen", "group", "network")]
    for r in replicas:
        rivals.append((f"unit, completeness, R = {r}",
                       SInGE(steps=steps, path="unit", variant="completeness", replicas=r)))
        rivals.append((f"removal (measured), R = {r}", SInGE(variant="removal", replicas=r)))
    for label, crit in rivals:
        s, sec = scores(model, groups, batches, None, None, crit=crit)
        if sec < QUICK:  # timed like Taylor: the best of 3, the first (done) after Taylor's warm-up
            sec = min([sec] + [scores(model, groups, batches, None, None, crit=copy.deepcopy(crit))[1]
                               for _ in range(2)])
        result["paths"][label] = {"seconds": sec, **agreement(pick(s), ref)}
    for v in result["paths"].values():
        v["x_taylor"] = v["seconds"] / taylor


def agreement(s, ref):
    within = [spearman(a, b) for a, b in zip(s, ref) if len(a) > 1]
    flat, ref_flat = np.concatenate(s), np.concatenate(ref)
    scale = np.abs(ref_flat).max()
    return {"spearman_all": spearman(flat, ref_flat), "spearman_within_group_mean": float(np.nanmean(within)),
            "max_rel_error": float(np.abs(flat - ref_flat).max() / scale)}


def rules(model, groups, batches, result):
    """Riemann and Gauss-Legendre sums of the network path against a 32-point Gauss-Legendre reference."""
    ref, _ = scores(model, groups, batches, "network", 32, "gauss")
    for rule, ms in (("riemann", (1, 2, 4, 8, 16)), ("gauss", (1, 2, 3, 4, 8))):
        for m in ms:
            s, sec = scores(model, groups, batches, "network", m, rule)
            result["rules"][f"{rule}-{m}"] = {"rule": rule, "m": m, "seconds": sec, **agreement(s, ref)}


ORACLE_RIVALS = [
    ("singe spec, frozen (the default)", "singe", {"steps": 8, "path": "frozen"}),
    ("singe spec, network, m=8", "singe", {"steps": 8, "path": "network"}),
    ("singe completeness, network, m=8", "singe", {"steps": 8, "variant": "completeness", "path": "network"}),
    ("singe completeness, unit, gauss m=2", "singe", {"steps": 2, "rule": "gauss", "variant": "completeness",
                                                      "path": "unit"}),
    ("taylor", "taylor", {}),
    ("l1", "l1", {}),
    ("l2", "l2", {}),
]


def oracle(model, groups, batches, result):
    """Every criterion's ranking against the measured removal damage of each channel."""
    ref, ref_s = scores(model, groups, batches, None, None, crit=make_criterion("singe", variant="removal"))
    result["oracle"] = {"removal (measured)": {"seconds": ref_s, "spearman_all": 1.0,
                                               "spearman_within_group_mean": 1.0}}
    for label, name, opts in ORACLE_RIVALS:
        s, sec = scores(model, groups, batches, None, None, crit=make_criterion(name, **opts))
        result["oracle"][label] = {"seconds": sec, **agreement(s, ref)}
        print(f"| {label} | {sec:.2f} | {result['oracle'][label]['spearman_all']:.4f} | "
              f"{result['oracle'][label]['spearman_within_group_mean']:.4f} |", flush=True)


SWEEP_CRITERIA = (("singe", {"steps": 8, "path": "network"}), ("taylor", {}))  # the study's setting (2026-12)


def calibration_sweep(model, groups, batches, sizes, result, draws=3, criteria=SWEEP_CRITERIA):
    """Each criterion on n images drawn at random (per n, `draws` seeded draws) against the same criterion on
    every image of `batches`: how far a smaller calibration set moves the ranking."""
    x, y = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    result["calibration"] = {"images": len(x), "draws": draws, "rows": []}
    for name, opts in criteria:
        ref, ref_s = scores(model, groups, batches, None, None, crit=make_criterion(name, **opts))
        for n in sizes:
            if n >= len(x):
                continue
            rows = []
            for seed in range(draws):
                pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n].to(x.device)
                s, sec = scores(model, groups, [(x[pick], y[pick])], None, None, crit=make_criterion(name, **opts))
                rows.append(dict(agreement(s, ref), seconds=sec))
            mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
            result["calibration"]["rows"].append(dict(mean, criterion=name, images=n, reference_seconds=ref_s,
                                                      spearman_all_min=min(r["spearman_all"] for r in rows)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--input-shape", default=None, help="1,C,H,W (default: the data's)")
    ap.add_argument("--checkpoint", default=None,
                    help="state dict to load (default: the shipped baseline for the builtin models, else random init)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--calib-batches", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", help="also write the numbers here")
    ap.add_argument("--oracle", action="store_true",
                    help="only the ranking of every criterion against each channel's measured removal damage")
    ap.add_argument("--rules-only", action="store_true",
                    help="only the quadrature sweep (skips the unit path, the slow part)")
    ap.add_argument("--no-rules", action="store_true", help="skip the quadrature sweep")
    ap.add_argument("--replicas", default="", help="R,...: also the replicated unit paths, R units per pass")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--unit-sample", type=int, default=None, metavar="N",
                    help="the exact unit path for N channels drawn at random (seed 0), not all; Spearman over those, "
                         "its seconds scaled to all channels")
    ap.add_argument("--calib-sweep", default="", metavar="N,...",
                    help="only this: SInGE (network path) and Taylor on N images drawn at random against the same "
                         "criterion on every calibration image")
    args = ap.parse_args()
    model, data, shape = load(args)
    model.to(args.device)
    batches = [(x.to(args.device), y.to(args.device)) for x, y in data.calibration(args.calib_batches)]
    _, groups = all_groups(model, torch.zeros((1,) + shape, device=args.device), default_ignored(model))
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{torch.get_num_threads()} threads"
    result = {"model": args.model, "data": args.data, "samples": args.calib_batches * args.batch_size,
              "steps": args.steps, "threads": torch.get_num_threads(), "device": where, "paths": {}, "rules": {}}
    header = f"{args.model} on {args.data}: {result['samples']} calibration samples, {where}"
    if args.calib_sweep:
        calibration_sweep(model, groups, batches, [int(n) for n in args.calib_sweep.split(",")], result)
        print(header + f"; reference: each criterion on all {result['samples']} images; mean of "
              f"{result['calibration']['draws']} random draws")
        print("| criterion | images | seconds | Spearman vs all images (min of draws) | mean within-group Spearman |")
        print("|---|---:|---:|---:|---:|")
        for v in result["calibration"]["rows"]:
            print(f"| {v['criterion']} | {v['images']} | {v['seconds']:.2f} | {v['spearman_all']:.4f} "
                  f"({v['spearman_all_min']:.4f}) | {v['spearman_within_group_mean']:.4f} |")
        return write(args.json, result)
    if args.oracle:
        print(header + "; reference: each channel's measured removal damage")
        print("| criterion | seconds | Spearman vs removal, all channels | mean within-group Spearman |")
        print("|---|---:|---:|---:|")
        oracle(model, groups, batches, result)
        return write(args.json, result)
    if not args.rules_only:
        paths(model, groups, batches, args.steps, result, [int(r) for r in args.replicas.split(",") if r],
              args.unit_sample)
        print(header + f", m = {args.steps}; Taylor {result['taylor_seconds']:.3f} s")
        if "unit_sample" in result:
            u = result["unit_sample"]
            print(f"unit path on {u['channels']} of {u['of']} channels drawn at random ({u['seconds']:.2f} s; "
                  "its row: that time scaled to all channels, Spearman over the drawn ones)")
        print("| path | seconds | x Taylor | Spearman vs unit, all channels | mean within-group Spearman |")
        print("|---|---:|---:|---:|---:|")
        for path, v in result["paths"].items():
            print(f"| {path} | {v['seconds']:.2f} | {v['x_taylor']:.1f} | {v['spearman_all']:.4f} | "
                  f"{v['spearman_within_group_mean']:.4f} |", flush=True)
    if args.no_rules:
        return write(args.json, result)
    rules(model, groups, batches, result)
    print(f"\n{header}; network path; reference: Gauss-Legendre m = 32")
    print("| rule | m | seconds | Spearman vs reference | mean within-group Spearman | max relative error |")
    print("|---|---:|---:|---:|---:|---:|")
    for v in result["rules"].values():
        print(f"| {v['rule']} | {v['m']} | {v['seconds']:.2f} | {v['spearman_all']:.4f} | "
              f"{v['spearman_within_group_mean']:.4f} | {v['max_rel_error']:.3f} |")
    write(args.json, result)


def write(path, result):
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
