"""Channel-importance criteria over torch-pruning dependency groups, behind one interface.

Every criterion is a `torch_pruning` importance: `criterion(group)` returns one score per root
channel of the group (higher = keep). Criteria that need data (`singe`, `taylor`, `hessian`) are
first fitted on calibration batches with `fit(model, groups, batches)`; `score` does both.

Scores of a unit g (its parameter slices W_g, see groups.py), with p the `norm` option:
- l1 / l2:  ||W_g||_1 / ||W_g||_2 over every slice of the group.
- bn:       sum of |gamma| over the group's BatchNorm/GroupNorm/LayerNorm slices (groups with no
            norm layer get no score and are not pruned by this criterion).
- taylor:   ||W_g * grad_g||_p at the current weights, averaged over calibration batches.
- hessian:  sum of 1/2 * W_g^2 * F_g, F the diagonal empirical Fisher, accumulated over every
            calibration batch (torch-pruning 1.6.1 keeps only the last batch).
- singe:    (1/m) sum_k ||mu_k W_g||_p * ||grad_g L(theta(mu_k))||_p, mu_k = k/m, averaged over
            batches; `elementwise` uses ||mu_k W_g * grad_g||_p. `path` says which units move
            along mu together: `unit` (exact), `group` (one dependency group), `network` (all);
            `frozen` (the default) is the unit path with each unit's gradient held at mu = 1, so one
            pass per batch scores every unit (docs/criteria.md has its measured fidelity).
            `batch_steps` path points go through one vmapped pass (auto: 1 on CPU, where batching
            measured slower; on CUDA the faster of batched and one-by-one on the first batch;
            halved on CUDA out-of-memory).
- random:   seeded uniform scores.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
import torch_pruning as tp
from torch.func import functional_call, grad, vmap

from ..errors import UserError, first_line
from ..progress import progress
from ..pruning.groups import NORMS, UnitMap, param_names, per_unit, slices
from ..training import distributed
from .unitpath import UnitScaler


def group_key(group):
    dep = group[0].dep
    return id(dep.target.module), getattr(dep.handler, "__name__", str(dep.handler))


class Criterion(tp.importance.Importance):
    """Base: subclasses implement `_score(model, groups, slices_per_group, batches)`."""

    name = "base"
    uses_data = False

    def __init__(self, **options):
        self.options = options
        self._scores = {}

    def fit(self, model, groups, batches=(), sharded=False):
        """Score every group on `batches`; afterwards criterion(group) returns the cached scores.

        Under torchrun each rank scores its share of the batches (all of its own when `sharded`: the
        data is already split by rank) on its device, and the per-batch means are combined across
        ranks, so every rank holds the same scores."""
        batches = list(batches)
        if self.uses_data and not batches:
            raise UserError(f"criterion '{self.name}' needs calibration data; pass a dataset")
        ctx = distributed.current()
        names = param_names(model)
        group_slices = [slices(g, names) for g in groups]
        was_training, home = model.training, next(model.parameters()).device
        mine = batches if sharded or not self.uses_data else distributed.my_share(batches)
        model.to(ctx.device).eval()
        try:
            if mine or not self.uses_data:
                mine = [(x.to(ctx.device), y.to(ctx.device)) for x, y in mine]
                scores = self._score(model, groups, group_slices, mine)
            else:  # more ranks than calibration batches: this one adds nothing
                scores = [torch.zeros(_n(g), dtype=torch.float64) if gs else None
                          for g, gs in zip(groups, group_slices)]
            if self.uses_data:
                scores = distributed.combine_means(scores, len(mine))
            scores = self._finish(scores)
        finally:
            model.to(home).train(was_training)
        self._scores = {group_key(g): s for g, s in zip(groups, scores)}
        return scores

    def score(self, model, groups, batches=(), sharded=False):
        return self.fit(model, groups, batches, sharded)

    def passes_per_sample(self, groups):
        """Forward-pass equivalents one calibration sample costs (a backward counts as two forwards)."""
        return 3 if self.uses_data else 0

    def _finish(self, scores):
        """Scores after the batch means are combined (all ranks): the identity unless a criterion says otherwise."""
        return scores

    def __call__(self, group):
        return self._scores.get(group_key(group))

    def describe(self):
        return {"name": self.name, "options": dict(self.options)}


def _n(group):
    return len(group[0].idxs)


def _norm(t, p):
    return t.abs().pow(p)


class Magnitude(Criterion):
    uses_data = False

    def __init__(self, norm=2):
        super().__init__(norm=norm)
        self.name = "l1" if norm == 1 else "l2"

    def _score(self, model, groups, group_slices, batches):
        p = self.options["norm"]
        weights = {n: w.detach() for n, w in model.named_parameters()}
        powered = {n: _norm(w, p) for n, w in weights.items()}
        return [per_unit(gs, powered, _n(g)).pow(1 / p) if gs else None for g, gs in zip(groups, group_slices)]


class BNScale(Criterion):
    name = "bn"

    def _score(self, model, groups, group_slices, batches):
        out = []
        for g, gs in zip(groups, group_slices):
            bn = [s for s in gs if s.name.endswith("weight") and s.param.dim() == 1 and s.dim == 0
                  and _is_norm_weight(model, s.name)]
            out.append(per_unit(bn, {s.name: s.param.detach().abs() for s in bn}, _n(g)) if bn else None)
        return out


def _is_norm_weight(model, name):
    module = model.get_submodule(name.rpartition(".")[0])
    return isinstance(module, NORMS)


class RandomScores(Criterion):
    name = "random"

    def __init__(self, seed=0):
        super().__init__(seed=seed)
        self._calls = 0

    def _score(self, model, groups, group_slices, batches):
        gen = torch.Generator().manual_seed(self.options["seed"] * 7919 + self._calls)
        self._calls += 1
        return [torch.rand(_n(g), generator=gen, dtype=torch.float64) if gs else None
                for g, gs in zip(groups, group_slices)]


def _loss_grads(model, overrides, x, y):
    """Gradients of the cross-entropy loss w.r.t. the tensors in `overrides` (name -> leaf tensor)."""
    out = functional_call(model, overrides, (x,))
    loss = F.cross_entropy(out, y)
    grads = torch.autograd.grad(loss, list(overrides.values()))
    return dict(zip(overrides.keys(), grads))


def _touched(group_slices):
    names = {}
    for gs in group_slices:
        for s in gs:
            names[s.name] = s.param
    return names


class Taylor(Criterion):
    name = "taylor"
    uses_data = True

    def __init__(self, norm=1):
        super().__init__(norm=norm)

    def _score(self, model, groups, group_slices, batches):
        p = self.options["norm"]
        params = _touched(group_slices)
        weights = {n: w.detach() for n, w in params.items()}
        totals = [torch.zeros(_n(g), dtype=torch.float64) for g in groups]
        for x, y in progress(batches, desc="score taylor", unit="batch"):
            leaves = {n: w.clone().requires_grad_() for n, w in weights.items()}
            grads = _loss_grads(model, leaves, x, y)
            prod = {n: _norm(weights[n] * grads[n], p) for n in weights}
            for t, g, gs in zip(totals, groups, group_slices):
                t += per_unit(gs, prod, _n(g)).pow(1 / p)
        return [t / len(batches) if gs else None for t, gs in zip(totals, group_slices)]


class Hessian(Criterion):
    name = "hessian"
    uses_data = True

    def _score(self, model, groups, group_slices, batches):
        params = _touched(group_slices)
        weights = {n: w.detach() for n, w in params.items()}
        fisher = {n: torch.zeros_like(w) for n, w in weights.items()}
        for x, y in progress(batches, desc="score hessian", unit="batch"):
            leaves = {n: w.clone().requires_grad_() for n, w in weights.items()}
            for n, gr in _loss_grads(model, leaves, x, y).items():
                fisher[n] += gr.pow(2)  # accumulate: every batch counts
        obd = {n: 0.5 * weights[n].pow(2) * fisher[n] / len(batches) for n in weights}
        return [per_unit(gs, obd, _n(g)) if gs else None for g, gs in zip(groups, group_slices)]


class SInGE(Criterion):
    name = "singe"
    uses_data = True
    PATHS = ("frozen", "unit", "group", "network")
    RULES = ("riemann", "gauss")
    VARIANTS = ("spec", "completeness", "removal")

    def __init__(self, steps=8, norm=2, path="frozen", elementwise=False, batch_steps="auto", rule="riemann",
                 variant="spec", replicas=8):
        if path not in self.PATHS:
            raise UserError(f"unknown SInGE path '{path}'; use one of {', '.join(self.PATHS)}")
        if rule not in self.RULES:
            raise UserError(f"unknown SInGE rule '{rule}'; use one of {', '.join(self.RULES)}")
        if variant not in self.VARIANTS:
            raise UserError(f"unknown SInGE variant '{variant}'; use one of {', '.join(self.VARIANTS)}")
        if int(steps) < 1:
            raise UserError(f"SInGE steps must be >= 1, got {steps}")
        if int(replicas) < 1:
            raise UserError(f"SInGE replicas must be >= 1, got {replicas}")
        if batch_steps != "auto" and (not str(batch_steps).isdigit() or int(batch_steps) < 1):
            raise UserError(f"SInGE batch_steps must be 'auto' or a positive integer, got {batch_steps}")
        super().__init__(steps=int(steps), norm=norm, path=path, elementwise=bool(elementwise),
                         batch_steps=batch_steps if batch_steps == "auto" else int(batch_steps), rule=rule,
                         variant=variant, replicas=int(replicas))
        self._no_vmap = False
        self.fallback = None  # why batched steps (or replicated unit paths) were abandoned, if they were
        self.passes = 0  # forward/backward passes of the last fit (a forward alone for 'removal')

    def passes_per_sample(self, groups):
        m, path, variant = self.options["steps"], self.options["path"], self.options["variant"]
        units = sum(_n(g) for g in groups)
        if variant == "removal":
            return units
        if path == "frozen":
            return 3
        return 3 * m * {"network": 1, "group": len(groups), "unit": units}[path]

    def _finish(self, scores):
        if self.options["variant"] == "spec":
            return scores
        return [None if s is None else s.abs() for s in scores]  # estimated damage, in loss units

    def _score(self, model, groups, group_slices, batches):
        path, variant = self.options["path"], self.options["variant"]
        self.passes = 0
        if variant == "removal" or (path == "unit" and variant == "completeness"):
            scaler = UnitScaler(model, group_slices)
            if scaler.unsupported is None:
                return self._replicated(model, groups, group_slices, batches, scaler)
            self.fallback = scaler.unsupported
            if variant == "removal":
                return self._removed_one_by_one(model, groups, group_slices, batches)
        if path in ("network", "frozen"):
            return self._network(groups, group_slices, batches, model)
        out = []
        for g, gs in progress(list(zip(groups, group_slices)), desc=f"score singe/{path}", unit="group"):
            if not gs:
                out.append(None)
            elif path == "group":
                out.append(self._integrate(model, [gs], [_n(g)], batches, [None])[0])
            else:
                n = _n(g)
                umap = UnitMap([gs], [n])
                out.append(torch.stack([self._integrate(model, [gs], [n], batches, [j], umap)[0][j] for j in range(n)]))
        return out

    def _replicated(self, model, groups, group_slices, batches, scaler):
        """The unit path (completeness) or the removal loss change for every unit, R units per pass: the batch
        is repeated R times and replica r sees only its unit scaled, through activation hooks (exact: a unit's
        parameter slices scale its channels' activations)."""
        units = [(i, j) for i, (g, gs) in enumerate(zip(groups, group_slices)) if gs for j in range(_n(g))]
        removal = self.options["variant"] == "removal"
        points = [(0.0, 1.0)] if removal else self.nodes()
        jobs = [(u, mu, w) for u in units for mu, w in points]
        totals = {u: 0.0 for u in units}
        R = self.options["replicas"]
        for x, y in progress(batches, desc="score singe/unit", unit="batch"):
            with torch.no_grad():
                base = F.cross_entropy(model(x), y).item() if removal else 0.0
            for part in _chunks(jobs, R):
                values = scaler.losses(model, x, y, [u for u, _, _ in part], [mu for _, mu, _ in part],
                                       grad=not removal)
                self.passes += 1
                for (u, _, w), v in zip(part, values):
                    totals[u] += w * (v - base if removal else v)
        out = [None] * len(groups)
        for i, (g, gs) in enumerate(zip(groups, group_slices)):
            if gs:
                out[i] = torch.tensor([totals[(i, j)] / len(batches) for j in range(_n(g))], dtype=torch.float64)
        return out

    def _removed_one_by_one(self, model, groups, group_slices, batches):
        """The removal loss change by zeroing each unit's weights in turn (models the hooks cannot serve)."""
        weights = {n: w.detach() for n, w in _touched(group_slices).items()}
        out = []
        with torch.no_grad():
            bases = [F.cross_entropy(model(x), y).item() for x, y in batches]
            for g, gs in zip(groups, group_slices):
                if not gs:
                    out.append(None)
                    continue
                scores = torch.zeros(_n(g), dtype=torch.float64)
                for j in range(_n(g)):
                    zeroed = dict(weights)
                    for s in gs:
                        zeroed[s.name] = zeroed[s.name].masked_fill(s.mask(s.root_idxs == j), 0)
                    for (x, y), base in zip(batches, bases):
                        scores[j] += F.cross_entropy(functional_call(model, zeroed, (x,)), y).item() - base
                        self.passes += 1
                out.append(scores / len(batches))
        return out

    def _network(self, groups, group_slices, batches, model):
        active = [i for i, gs in enumerate(group_slices) if gs]
        scores = self._integrate(model, [group_slices[i] for i in active], [_n(groups[i]) for i in active],
                                 batches, [None] * len(active), bar=True)
        out = [None] * len(groups)
        for i, s in zip(active, scores):
            out[i] = s
        return out

    def _integrate(self, model, moved, sizes, batches, units, umap=None, bar=False):
        """Quadrature of the SInGE integrand for the groups in `moved`, all scaled together by mu.

        units[i] is None to scale all channels of group i, or one root channel index. Per-unit sums go
        through one UnitMap (one gather and index_add per parameter per path point).
        """
        p, elementwise = self.options["norm"], self.options["elementwise"]
        completeness = self.options["variant"] == "completeness"
        nodes = dict(self.nodes())
        params = _touched(moved)
        weights = {n: w.detach() for n, w in params.items()}
        umap = umap or UnitMap(moved, sizes)
        wnorm = umap.sums({n: _norm(w, p) for n, w in weights.items()}).pow(1 / p)
        total = torch.zeros(umap.total, dtype=torch.float64)

        def value(mu, grads):
            """The integrand of every unit at mu, given the loss gradients there."""
            if completeness:  # d/dmu L(theta(mu)) = <W_g, grad L>: the signed integral is the loss change
                return umap.sums({n: weights[n] * grads[n] for n in weights})
            if elementwise:
                return umap.sums({n: _norm(mu * weights[n] * grads[n], p) for n in weights}).pow(1 / p)
            return mu * wnorm * umap.sums({n: _norm(g, p) for n, g in grads.items()}).pow(1 / p)

        def add(mu, grads):
            nonlocal total
            total += nodes[mu] * value(mu, grads)

        if self.options["path"] == "frozen":
            return self._frozen(model, weights, umap, batches, value, bar)
        masks = {n: torch.zeros_like(w, dtype=torch.bool) for n, w in weights.items()}
        for gs, unit in zip(moved, units):
            for s in gs:
                select = None if unit is None else (s.root_idxs == unit)
                masks[s.name] |= s.mask(select)
        device = next(iter(weights.values())).device
        for x, y in progress(batches, desc="score singe", unit="batch", disable=not bar or None):
            grads_at = lambda mus: self._path_grads(model, weights, masks, mus, x, y)  # noqa: E731
            if self.options["batch_steps"] == "auto":
                self._choose_batch_steps(device, list(nodes), grads_at, add)
                continue
            for part in _chunks(list(nodes), self.options["batch_steps"]):
                for mu, grads in zip(part, grads_at(part)):
                    add(mu, grads)
        return umap.split(total / len(batches))

    def _frozen(self, model, weights, umap, batches, value, bar):
        """Every unit's own path with its gradient held at mu = 1: R(g) ~ ||W_g|| ||grad_g L|| sum_k w_k mu_k.

        The zeroth-order expansion of the unit path's gradient in mu. One forward/backward per batch scores
        every unit, and no unit's score is disturbed by the others moving (the network path's flaw). Measured
        against the exact unit path: Spearman 0.93-0.95 on three models (docs/criteria.md). A second-order term
        costs a Hessian-vector product (3.5-5.5x Taylor) and ranked worse; the gradient is not linear along mu.
        """
        nodes = self.nodes()
        # the integrand's own dependence on mu with the gradient fixed: ||mu W|| (spec, elementwise), 1 (completeness)
        factor = sum(w * (1.0 if self.options["variant"] == "completeness" else mu) for mu, w in nodes)
        total = torch.zeros(umap.total, dtype=torch.float64)
        for x, y in progress(batches, desc="score singe", unit="batch", disable=not bar or None):
            grads = _loss_grads(model, {n: w.clone().requires_grad_() for n, w in weights.items()}, x, y)
            self.passes += 1
            total += factor * value(1.0, grads)
        return umap.split(total / len(batches))

    def nodes(self):
        """(mu, weight) pairs of the quadrature over [0, 1]: the right Riemann sum mu_k = k/m with weights 1/m,
        or m-point Gauss-Legendre (exact for polynomials of degree 2m - 1)."""
        m = self.options["steps"]
        if self.options["rule"] == "riemann":
            return [(k / m, 1 / m) for k in range(1, m + 1)]
        x, w = np.polynomial.legendre.leggauss(m)
        return [(float((xi + 1) / 2), float(wi / 2)) for xi, wi in zip(x, w)]

    def _choose_batch_steps(self, device, mus, grads_at, add):
        """batch_steps 'auto': 1 on CPU (batching measured slower there); on CUDA the first batch runs half
        its steps in one vmapped pass and half one by one, and the faster way is kept (no pass is wasted)."""
        m = len(mus)
        if device.type != "cuda" or m == 1:
            self.options["batch_steps"] = 1
            parts = [[mu] for mu in mus]
        else:
            parts = [mus[:(m + 1) // 2]] + [[mu] for mu in mus[(m + 1) // 2:]]
        per_step = []
        for i, part in enumerate(parts):
            if i < 2 and device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            for mu, grads in zip(part, grads_at(part)):
                add(mu, grads)
            if i < 2 and device.type == "cuda":
                torch.cuda.synchronize(device)
                per_step.append((time.perf_counter() - t) / len(part))
        if per_step:
            batched, single = per_step
            self.options["batch_steps"] = len(parts[0]) if batched < single and self.fallback is None else 1

    def _path_grads(self, model, weights, masks, mus, x, y):
        """Loss gradients at each mu in `mus`: one pass per mu, or one vmapped pass for all of them."""
        def point(mu):
            return {n: torch.where(masks[n], weights[n] * mu, weights[n]) for n in weights}

        cap = self.options["batch_steps"]
        if isinstance(cap, int) and len(mus) > cap:
            return [g for part in _chunks(mus, cap) for g in self._path_grads(model, weights, masks, part, x, y)]
        if len(mus) > 1 and not self._no_vmap:
            try:
                grads = _vmapped_grads(model, {n: torch.stack([point(mu)[n] for mu in mus]) for n in weights}, x, y)
                self.passes += 1
                return grads
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                half = len(mus) // 2
                self.options["batch_steps"] = half
                return (self._path_grads(model, weights, masks, mus[:half], x, y)
                        + self._path_grads(model, weights, masks, mus[half:], x, y))
            except RuntimeError as e:  # an op vmap cannot batch: one pass per step from here on
                self._no_vmap = True
                self.fallback = first_line(e, 200)
        self.passes += len(mus)
        return [_loss_grads(model, {n: t.requires_grad_() for n, t in point(mu).items()}, x, y) for mu in mus]


def _chunks(seq, size):
    seq = list(seq)
    return [seq[i:i + size] for i in range(0, len(seq), size)]


def _vmapped_grads(model, stacked, x, y):
    """Loss gradients for each leading-dim slice of the tensors in `stacked`, in one batched pass."""
    def loss(overrides):
        return F.cross_entropy(functional_call(model, overrides, (x,)), y)

    grads = vmap(grad(loss))(stacked)
    return [{n: g[i] for n, g in grads.items()} for i in range(len(next(iter(stacked.values()))))]


CRITERIA = {
    "singe": SInGE,
    "l1": lambda **kw: Magnitude(norm=1, **kw),
    "l2": lambda **kw: Magnitude(norm=2, **kw),
    "taylor": Taylor,
    "hessian": Hessian,
    "bn": BNScale,
    "random": RandomScores,
}


def make_criterion(name, **options):
    """A criterion by name; options are the criterion's own (e.g. singe: steps, norm, path, elementwise)."""
    if name not in CRITERIA:
        raise UserError(f"unknown criterion '{name}'; use one of {', '.join(CRITERIA)}")
    try:
        return CRITERIA[name](**options)
    except TypeError as e:
        raise UserError(f"criterion '{name}' does not take those options ({e}); see docs") from None
