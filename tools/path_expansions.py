"""Which cheap expansion of SInGE's exact unit path ranks channels like it: the study behind the `frozen` path.

For N channels drawn at random (seed 0, the draw of `path_fidelity.py --unit-sample N`) the exact unit path's
gradient G_g(mu_k) is computed at every Riemann node (one pass per channel and node), and each candidate is ranked
against the exact score R(g) = mean_k ||mu_k W_g|| ||G_g(mu_k)||:

- frozen: G_g(mu) ~ G_g(1), the gradient at the current weights (one pass for all channels: Taylor's cost);
- second order, G_g(mu) ~ G_g(1) + (mu - 1) b_g, with the slope b_g = H_gg W_g estimated three ways:
  the network direction (one Hessian-vector product along every unit's weights at once, cross terms included),
  one random-sign probe (one product along sum_h s_h W_h, read as s_g (Hv)_g), and the unit's own slope from its
  exact path (a finite difference at mu = 1; the best a second-order expansion can do, not a cheap method);
- the exact path at two nodes, mu = 1/2 and 1 (2 passes per channel).

    python tools/path_expansions.py                                       # the demo model
    python tools/path_expansions.py --model builtin:resnet56
    python tools/path_expansions.py --model torchvision:mobilenet_v2 --input-shape 1,3,64,64 --checkpoint W.pt \\
        --batch-size 64

Costs are multiples of Taylor's pass on the same batch (best of 3 after a warm-up).
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

from bench_scoring import load  # tools/ is on the path when run as a script
from path_fidelity import spearman
from singe_deploy.pruning.groups import all_groups, default_ignored, param_names, slices
from singe_deploy.scoring.importance import _loss_grads


def unit_masks(group_slices, i, j):
    masks = {}
    for s in group_slices[i]:
        m = s.mask(s.root_idxs == j)
        masks[s.name] = masks[s.name] | m if s.name in masks else m
    return masks


def take(tensors, masks):
    return torch.cat([tensors[n][m] for n, m in masks.items()])


def best_of(fn, n=3):
    fn()  # warm-up
    times = []
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, min(times)


def second_order(mus, wnorm, a, b):
    """mean_k mu_k ||W|| ||a + (mu_k - 1) b||."""
    a, b = a.double(), b.double()
    aa, ab, bb = (a @ a).item(), (a @ b).item(), (b @ b).item()
    d = mus - 1
    return float(np.mean(mus * wnorm * np.sqrt(np.maximum(aa + 2 * d * ab + d * d * bb, 0))))


def study(model, groups, x, y, n, m, seed=0):
    names = param_names(model)
    gsl = [slices(g, names) for g in groups]
    units = [(i, j) for i, gs in enumerate(gsl) if gs for j in range(len(groups[i][0].idxs))]
    pick = sorted(torch.randperm(len(units), generator=torch.Generator().manual_seed(seed))[:n].tolist())
    drawn = [units[k] for k in pick]
    weights = {p: w.detach() for p, w in model.named_parameters()}
    touched = sorted({s.name for gs in gsl for s in gs})
    params = {p: weights[p] for p in touched}
    mus = np.arange(1, m + 1) / m
    masks = {u: unit_masks(gsl, *u) for u in drawn}
    curves, wnorm = {}, {}
    for u in drawn:  # the exact unit path: G_g(mu_k) at every node
        mk = masks[u]
        wnorm[u] = take(weights, mk).norm().item()
        rows = []
        for mu in mus:
            moved = {p: torch.where(k, weights[p] * mu, weights[p]).requires_grad_() for p, k in mk.items()}
            rows.append(take(_loss_grads(model, moved, x, y), mk))
        curves[u] = torch.stack(rows)
    exact = [float(np.mean(mus * wnorm[u] * curves[u].norm(dim=1).numpy())) for u in drawn]

    gradient = grad(lambda p: F.cross_entropy(functional_call(model, p, (x,)), y))
    at_one, taylor_s = best_of(lambda: gradient(params))
    every = {p: torch.zeros_like(weights[p], dtype=torch.bool) for p in touched}
    for gs in gsl:
        for s in gs:
            every[s.name] |= s.mask()
    along_all = {p: weights[p] * every[p] for p in touched}
    (_, h_all), hvp_s = best_of(lambda: jvp(gradient, (params,), (along_all,)))
    signs = {u: float(v) for u, v in zip(units, torch.randint(0, 2, (len(units),),
                                                              generator=torch.Generator().manual_seed(seed)) * 2 - 1)}
    probe = {p: torch.zeros_like(weights[p]) for p in touched}
    for (i, j), sign in signs.items():
        for s in gsl[i]:
            probe[s.name] += sign * weights[s.name] * s.mask(s.root_idxs == j)
    _, h_probe = jvp(gradient, (params,), (probe,))

    a = {u: take(at_one, masks[u]) for u in drawn}
    half = m // 2 - 1  # the node mu = 1/2 (m even)
    rows = {
        "frozen (gradient at mu = 1)": (1.0, [wnorm[u] * a[u].norm().item() * mus.mean() for u in drawn]),
        "second order, slope along every unit at once (1 HVP)": (
            hvp_s / taylor_s, [second_order(mus, wnorm[u], a[u], take(h_all, masks[u])) for u in drawn]),
        "second order, slope from one random-sign probe (1 HVP)": (
            hvp_s / taylor_s, [second_order(mus, wnorm[u], a[u], signs[u] * take(h_probe, masks[u])) for u in drawn]),
        "second order, each unit's own slope (from its exact path)": (
            None, [second_order(mus, wnorm[u], a[u], (curves[u][-1] - curves[u][-2]) * m) for u in drawn]),
        "exact path at mu = 1/2 and 1 (2 passes per channel)": (
            2 * len(units), [wnorm[u] * (curves[u][-1].norm().item() + 0.5 * curves[u][half].norm().item())
                             for u in drawn]),
    }
    return {"channels": len(drawn), "of": len(units), "steps": m, "taylor_seconds": taylor_s, "hvp_seconds": hvp_s,
            "rows": {k: {"x_taylor": c, "spearman": spearman(s, exact)} for k, (c, s) in rows.items()}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:resnet20")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--input-shape", default=None, help="1,C,H,W (default: the data's)")
    ap.add_argument("--checkpoint", default=None, help="state dict to load (default: the shipped baseline, if any)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--unit-sample", type=int, default=96, metavar="N", help="channels drawn at random (seed 0)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    model, data, shape = load(args)
    x, y = data.calibration(1)[0]
    _, groups = all_groups(model, torch.zeros((1,) + shape), default_ignored(model))
    result = dict(study(model, groups, x, y, args.unit_sample, args.steps), model=args.model,
                  threads=torch.get_num_threads(), samples=len(x))
    print(f"{args.model}: {result['channels']} of {result['of']} channels drawn, {len(x)} images, m = {args.steps}, "
          f"{result['threads']} threads; Taylor {result['taylor_seconds']:.3f} s, one HVP "
          f"{result['hvp_seconds']:.3f} s")
    print("| candidate | cost, x Taylor | Spearman vs the exact unit path |")
    print("|---|---:|---:|")
    for label, v in result["rows"].items():
        cost = "-" if v["x_taylor"] is None else f"{v['x_taylor']:.1f}"
        print(f"| {label} | {cost} | {v['spearman']:.4f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
