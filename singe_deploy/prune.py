"""The entwined flowchart: S pruning steps towards a MACs or params target, K fine-tuning
iterations after each, then E epochs of fine-tuning.

Each step scores every dependency group with the criterion, then finds by bisection the smallest
pruning level whose result meets the step's target (dense / X^(s/S)); candidate levels are tried
on a copy of the model and measured with the real counter, so the target holds for any topology.
A level is turned into per-group channel counts by ranking (see Planner): `global` removes chunks of
`round_to` channels in order of their score normalised by the group's mean, `raw` in order of the
score itself, `cost` in order of score per MAC (or per param, for a params target) a channel costs,
`local` removes the same fraction from every group. Every pruned channel count stays a multiple of `round_to` (per block for
grouped convolutions).
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import torch

from .errors import UserError
from torch import nn

from .flops import channels_of, count
from .groups import UnitMap, is_out_handler, all_groups, channel_groups, default_ignored, param_names, slices
from .train import cycle, evaluate, progress, train_epochs, train_iters


# how a pruning level becomes channel counts per group (see Planner)
RANKINGS = ("global", "raw", "cost", "local")


@dataclass
class Target:
    metric: str  # "macs" or "params"
    reduction: float

    def __post_init__(self):
        if self.metric not in ("macs", "params"):
            raise UserError(f"unknown target metric '{self.metric}'; use macs or params")
        if not self.reduction > 1:
            raise UserError(f"--{self.metric}-reduction must be > 1 (it divides the dense {self.metric}), "
                            f"got {self.reduction}")


@dataclass
class Schedule:
    """The flowchart's knobs; the defaults are the CLI's (a test keeps them equal)."""

    steps: int = 4
    finetune_iters: int = 150
    epochs: float = 4.0
    lr: float = 0.05
    ranking: str = "global"
    round_to: int | None = 8
    max_layer_ratio: float = 0.9
    calib_batches: int = 4
    step_eval: bool = True  # accuracy after every step (off: after the last one only)
    calib_samples: int | None = None  # at most this many calibration samples (None: all calib_batches)
    calib_macs: float | None = None  # or, when set and calib_samples is not, as many as this budget affords

    def __post_init__(self):
        if self.ranking not in RANKINGS:
            raise UserError(f"ranking must be one of {', '.join(RANKINGS)}, got {self.ranking!r}")


@dataclass
class StepRecord:
    step: int
    target: float
    macs: int
    params: int
    accuracy: float | None
    removed_channels: int
    score_seconds: float
    plan_seconds: float
    finetune_seconds: float
    calib_samples: int = 0


@dataclass
class PruneResult:
    model: torch.nn.Module
    steps: list = field(default_factory=list)
    target_met: bool = True  # see in_window
    finetune_seconds: float = 0.0  # the final fine-tuning


def as_target(target):
    """A Target from a Target or a dict like {"macs_reduction": 2} / {"params_reduction": 3}."""
    if isinstance(target, Target):
        return target
    if isinstance(target, dict) and len(target) == 1:
        (key, value), = target.items()
        if key in ("macs_reduction", "params_reduction"):
            return Target(key.split("_")[0], float(value))
    raise UserError(f"target {target!r} must be {{'macs_reduction': X}} or {{'params_reduction': X}}")


def as_schedule(schedule):
    if isinstance(schedule, Schedule):
        return schedule
    try:
        return Schedule(**(schedule or {}))
    except TypeError as e:
        raise UserError(f"schedule {schedule!r}: {e}") from None


def measure(model, input_shape, metric):
    if metric == "params":
        return sum(p.numel() for p in model.parameters())
    return count(model, input_shape).macs


def measure_pruned(model, input_shape, metric):
    """measure() of a freshly pruned model, whose forward pass must still run (counting MACs runs it)."""
    try:
        if metric == "params":
            with torch.no_grad():
                model.eval()(torch.zeros(input_shape))
        return measure(model, input_shape, metric)
    except Exception as e:
        raise UserError(f"pruning breaks this model's forward pass ({e.__class__.__name__}: {str(e)[:120]}): "
                        "it has static shapes (reshape sizes, head counts) that torch-pruning does not update; "
                        "keep those layers with --ignore-layers or prune another model") from None


def in_window(pruned, dense, reduction):
    """The target counts as met when dense/X * 0.9 <= pruned <= dense/X * 1.03."""
    return dense / reduction * 0.9 <= pruned <= dense / reduction * 1.03


class Planner:
    """Turns group scores and an integer level into channel indices to remove per group.

    Global rankings: each group's channels, sorted by score, are cut into chunks of `round_to`
    channels (per block for grouped convs); level k removes the k chunks of lowest key across all
    groups, so one level more is one chunk more. The key of a chunk is its mean score divided by the
    group's mean score (`global`), its mean score (`raw`: for criteria whose scale is comparable
    across layers), or its mean score divided by what one channel of the group costs (`cost`: MACs or
    params, from channel_costs; removed greedily by damage per unit of cost). Local ranking: level k
    of `levels` removes the fraction k/levels of every group, kept counts rounded up.
    """

    LOCAL_LEVELS = 1000

    def __init__(self, model, groups, scores, dense_channels, schedule, names, costs=None):
        self.schedule = schedule
        self.entries = []  # (name, handler, channels per block, blocks, block scores, most removable)
        self.divisors = []  # per entry: what a chunk's mean score is divided by to rank it
        if schedule.ranking == "cost" and costs is None:
            raise UserError("ranking 'cost' needs the channel costs (prune() passes them)")
        for k, (g, s) in enumerate(zip(groups, scores)):
            if s is None:
                continue
            root = g[0].dep.target.module
            name = names[id(root)]
            blocks = channel_groups(g)
            n = len(g[0].idxs)
            if n % blocks:
                continue
            per_block = s.double().view(blocks, -1).mean(0)
            dense = dense_channels.setdefault(name, n) // blocks
            q = self._quantum(blocks)
            keep_min = max(q, math.ceil((1 - schedule.max_layer_ratio) * dense))
            most = n // blocks - keep_min
            self.entries.append((name, g[0].dep.handler, n // blocks, blocks, per_block, max(most, 0)))
            self.divisors.append(self._divisor(per_block, costs[k] if costs is not None else None))
        self.chunks = self._chunks() if schedule.ranking != "local" else None
        self.levels = len(self.chunks) if self.chunks is not None else self.LOCAL_LEVELS

    def _quantum(self, blocks):
        r = self.schedule.round_to or 1
        return r // math.gcd(r, blocks)

    def _divisor(self, scores, cost):
        ranking = self.schedule.ranking
        if ranking == "global":
            return float(scores.mean()) + 1e-12
        if ranking == "cost":
            return max(float(cost), 1e-12)
        return 1.0

    def _chunks(self):
        """(key, entry index, channels removed after this chunk), in the order they are removed."""
        out = []
        for i, (_, _, n, blocks, s, most) in enumerate(self.entries):
            q = self._quantum(blocks)
            norm = torch.sort(s / self.divisors[i]).values
            removed = n % q  # first bring an unaligned layer to a multiple of q
            if removed and removed <= most:
                out.append((float(norm[:removed].mean()), i, removed))
            elif removed:
                continue
            while removed + q <= most:
                out.append((float(norm[removed:removed + q].mean()), i, removed + q))
                removed += q
        # within a group, chunk means never decrease, so sorting keeps each group's order
        return sorted(out, key=lambda c: (c[0], c[1], c[2]))

    def counts(self, level):
        """Channels removed per block for each entry at an integer level in [0, levels]."""
        if self.chunks is not None:
            out = [0] * len(self.entries)
            for _, i, removed in self.chunks[:level]:
                out[i] = max(out[i], removed)
            return out
        out = []
        for _, _, n, blocks, _, most in self.entries:
            q = self._quantum(blocks)
            r = min(int(math.floor(level / self.levels * n + 1e-9)), most)
            kept = math.ceil((n - r) / q) * q
            out.append(0 if kept >= n else n - kept)
        return out

    def removals(self, counts):
        """(module name, handler, idxs) for every entry that loses channels."""
        plan = []
        for (name, handler, n, blocks, s, _), r in zip(self.entries, counts):
            if r <= 0:
                continue
            positions = torch.argsort(s, stable=True)[:r].tolist()
            idxs = sorted(b * n + p for b in range(blocks) for p in positions)
            plan.append((name, handler, idxs))
        return plan


def channel_costs(model, groups, input_shape, metric):
    """What removing one root channel of each group saves: MACs (per sample) or params, summed over every layer
    slice the group removes with it (each layer's cost split evenly over its channels; a layer that also
    loses channels of another group is counted in full for each, so this is the first-order saving)."""
    if metric == "params":
        names = param_names(model)
        group_slices = [slices(g, names) for g in groups]
        sizes = [len(g[0].idxs) for g in groups]
        umap = UnitMap(group_slices, sizes)
        per = umap.split(umap.sums({n: torch.ones_like(p) for n, p in model.named_parameters()}))
        return [float(p.mean()) if len(p) else 0.0 for p in per]
    layer_macs = {layer.name: layer.macs for layer in count(model, input_shape).layers}
    modules = {id(m): n for n, m in model.named_modules()}
    costs = []
    for g in groups:
        n = len(g[0].idxs)
        total = 0.0
        for item in g:
            layer = item.dep.target.module
            macs = layer_macs.get(modules.get(id(layer)), 0)
            if not macs:
                continue
            cin, cout = channels_of(layer)
            out = is_out_handler(item.dep.handler)
            depthwise = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == layer.in_channels > 1
            if (not out and depthwise) or not (cout if out else cin):
                continue  # a depthwise conv's input channels are its output channels
            total += macs / (cout if out else cin) * len(item.idxs) / n
        costs.append(total)
    return costs


def apply_plan(model, plan, example):
    """Remove the planned channels through the dependency graph (consistent across coupled layers)."""
    if not plan:
        return model
    graph, _ = all_groups(model, example)
    modules = dict(model.named_modules())
    for name, handler, idxs in plan:
        group = graph.get_pruning_group(modules[name], handler, idxs)
        group.prune()
    for p in model.parameters():
        p.grad = None
        if not p.data.is_contiguous():  # pruned 1x1 convs can keep the dense strides
            p.data = p.data.contiguous()
    return model


def _search(planner, model, example, input_shape, metric, target, desc):
    """Lowest level whose pruned copy meets `target` (bisection on levels); returns (plan, cost, reached)."""
    cache = {}

    def cost(counts):
        counts = tuple(counts)
        if counts not in cache:
            pruned = apply_plan(copy.deepcopy(model), planner.removals(counts), example)
            cache[counts] = measure_pruned(pruned, input_shape, metric)
        return cache[counts]

    lo, hi = 0, planner.levels
    if cost(planner.counts(lo)) <= target:
        return [], cost(planner.counts(lo)), True
    best = planner.counts(hi)
    if cost(best) > target:
        return planner.removals(best), cost(best), False
    bar = progress(total=max(1, math.ceil(math.log2(hi + 1))), desc=desc, unit="trial")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(planner.counts(mid)) <= target:
            hi, best = mid, planner.counts(mid)
        else:
            lo = mid
        bar.update()
    bar.close()
    if planner.chunks is not None and cost(best) < 0.97 * target:
        best = _closer(planner, cost, lo, target, best)
    return planner.removals(best), cost(best), True


def _closer(planner, cost, lo, target, best, tries=16):
    """When the next chunk overshoots the target by far, try one later (cheaper) chunk instead."""
    base = planner.counts(lo)
    for _, i, removed in planner.chunks[lo + 1:lo + 1 + tries]:
        if removed <= base[i]:
            continue
        candidate = list(base)
        candidate[i] = removed
        if cost(best) < cost(candidate) <= target:
            best = candidate
    return best


def prune(model, input_shape, criterion, target, schedule, data=None, ignored_layers=None, start_step=0,
          history=None, on_step=None, log=print, finetuned=False, dense_channels=None):
    """Run the entwined flowchart in place on `model`; returns a PruneResult with one record per step.

    input_shape: the full input shape (1, C, H, W). target: a Target or {"macs_reduction": X} /
    {"params_reduction": X}. schedule: a Schedule or a dict of its fields. data: a `Data`
    (calibration batches, fine-tuning and evaluation) or None (scoring needs no data and nothing is
    fine-tuned). on_step(step, model, records, phase="prune") is called after each step and after
    the final fine-tuning (phase "finetuned"), to checkpoint; start_step, history, finetuned and
    dense_channels (the dict this run fills) resume from such a checkpoint.
    """
    target, schedule = as_target(target), as_schedule(schedule)
    shape = [1] + list(input_shape)[1:]
    example = torch.zeros(shape)
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored(model)
    records = list(history or [])
    dense_cost = records[0]["dense"] if records else measure(model, shape, target.metric)
    dense_channels = {} if dense_channels is None else dense_channels  # root layer -> dense channel count
    real = data is not None and data.real
    sharded = getattr(data, "sharded", False)  # the loaders already yield this rank's share
    finetune_batches = cycle(data.train) if real else None
    for s in range(start_step, schedule.steps):
        step_target = dense_cost / target.reduction ** ((s + 1) / schedule.steps)
        names = {id(m): n for n, m in model.named_modules()}
        t0 = time.time()
        _, groups = all_groups(model, example, ignored)
        batches = data.calibration(schedule.calib_batches) if data is not None else []
        batches, n_calib = calibration(batches, schedule, criterion, model, groups, shape, log if s == start_step else None)
        scores = criterion.score(model, groups, batches, sharded)
        t1 = time.time()
        costs = channel_costs(model, groups, shape, target.metric) if schedule.ranking == "cost" else None
        planner = Planner(model, groups, scores, dense_channels, schedule, names, costs)
        plan, cost, reached = _search(planner, model, example, shape, target.metric, step_target,
                                      desc=f"plan step {s + 1}/{schedule.steps}")
        if s == 0 and not reached and schedule.steps == 1:
            _unreachable(target, dense_cost, cost)
        apply_plan(model, plan, example)
        del groups, planner
        t2 = time.time()
        if real and schedule.finetune_iters > 0:
            train_iters(model, None, schedule.finetune_iters, schedule.lr, batches=finetune_batches,
                        desc=f"fine-tune step {s + 1}", sharded=sharded)
        t3 = time.time()
        acc = evaluate(model, data.val) if real and (schedule.step_eval or s + 1 == schedule.steps) else None
        macs = count(model, shape).macs
        params = sum(p.numel() for p in model.parameters())
        rec = StepRecord(s + 1, step_target, macs, params, acc, sum(len(i) for _, _, i in plan),
                         round(t1 - t0, 3), round(t2 - t1, 3), round(t3 - t2, 3), n_calib).__dict__
        rec["dense"] = dense_cost
        records.append(rec)
        if on_step:
            on_step(s + 1, model, records)
        log(f"step {s + 1}/{schedule.steps}: {target.metric} {cost / dense_cost:.3f} of dense "
            f"(target {step_target / dense_cost:.3f}), removed {rec['removed_channels']} channels, "
            f"accuracy {_fmt(acc)}, scored in {t1 - t0:.1f} s")
    finetune_seconds = 0.0
    if real and schedule.epochs > 0 and not finetuned:
        t = time.time()
        train_epochs(model, data.train, schedule.epochs, schedule.lr, desc="final fine-tune")
        finetune_seconds = round(time.time() - t, 2)
        if on_step:
            on_step(schedule.steps, model, records, "finetuned")
    final = measure(model, shape, target.metric)
    return PruneResult(model, records, in_window(final, dense_cost, target.reduction), finetune_seconds)


MIN_CALIB_SAMPLES = 16


def calibration(batches, schedule, criterion, model, groups, shape, log=None):
    """The calibration batches cut to schedule.calib_samples, or to what schedule.calib_macs affords (the
    criterion's forward-equivalent passes x the model's MACs per sample; never under MIN_CALIB_SAMPLES)."""
    total = sum(len(x) for x, _ in batches)
    cap = schedule.calib_samples
    if cap is None and schedule.calib_macs and batches:
        per_sample = criterion.passes_per_sample(groups) * count(model, shape).macs
        if per_sample > 0:
            cap = max(MIN_CALIB_SAMPLES, int(schedule.calib_macs // per_sample))
            if cap < total and log:
                log(f"calibration: {cap} of {total} samples, what {schedule.calib_macs:.0e} MACs of {criterion.name}'s "
                    "passes afford on a CPU (--calib-samples to choose)")
    if cap is None or cap >= total:
        return batches, total
    out, left = [], cap
    for x, y in batches:
        if left <= 0:
            break
        out.append((x[:left], y[:left]))
        left -= len(x[:left])
    return out, cap


def check_reachable(model, input_shape, target, schedule, ignored_layers=None):
    """Fail fast (bad input) when even the most pruning the schedule allows misses the target."""
    target, schedule = as_target(target), as_schedule(schedule)
    shape = [1] + list(input_shape)[1:]
    example = torch.zeros(shape)
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored(model)
    _, groups = all_groups(model, example, ignored)
    names = {id(m): n for n, m in model.named_modules()}
    scores = [torch.ones(len(g[0].idxs)) for g in groups]
    costs = [1.0] * len(groups)  # any costs: the most pruning allowed does not depend on the order
    planner = Planner(model, groups, scores, {}, schedule, names, costs)
    counts = planner.counts(planner.levels)
    pruned = apply_plan(copy.deepcopy(model), planner.removals(counts), example)
    dense = measure(model, shape, target.metric)
    best = measure_pruned(pruned, shape, target.metric)
    if best > dense / target.reduction:
        _unreachable(target, dense, best)
    return dense, best


def _unreachable(target, dense, best):
    raise UserError(f"--{target.metric}-reduction {target.reduction:g} is unreachable: at most "
                    f"{dense / max(best, 1):.2f}x with these layers, --max-layer-ratio and --round-to; "
                    "lower the reduction or raise --max-layer-ratio")


def _fmt(acc):
    return "n/a" if acc is None else f"{acc:.4f}"
