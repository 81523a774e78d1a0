"""The entwined flowchart: S pruning steps towards a MACs or params target, K fine-tuning
iterations after each, then E epochs of fine-tuning.

Each step scores every dependency group with the criterion, then finds by bisection the smallest
pruning level whose result meets the step's target (dense / X^(s/S)); plan.py turns levels into channels
per group (`global` removes chunks of `round_to` channels in order of their score normalised by the group's
mean, `raw` in order of the score itself, `cost` in order of score per MAC (or per param, for a params
target) a channel costs, `local` removes the same fraction from every group) and checks the chosen level
with the real counter, so the target holds for any topology. Every pruned channel count stays a multiple
of `round_to` (per block for grouped convolutions).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import torch

from .data import first_samples
from .errors import UserError
from .flops import count
from .groups import all_groups, default_ignored
from .plan import RANKINGS, Planner, apply_plan, channel_costs, measure, measure_pruned, search
from .train import Recipe, cycle, evaluate, train_epochs, train_iters


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
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    distill: bool = False  # fine-tune against the dense model's logits too (prune() gets it as `teacher`)
    distill_t: float = 4.0
    distill_alpha: float = 0.5
    amp: str = "auto"  # fine-tuning precision and memory format, see train.precision
    channels_last: str = "auto"

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


def in_window(pruned, dense, reduction):
    """The target counts as met when dense/X * 0.9 <= pruned <= dense/X * 1.03."""
    return dense / reduction * 0.9 <= pruned <= dense / reduction * 1.03


def prune(model, input_shape, criterion, target, schedule, data=None, ignored_layers=None, start_step=0,
          history=None, on_step=None, log=print, finetuned=False, dense_channels=None, teacher=None):
    """Run the entwined flowchart in place on `model`; returns a PruneResult with one record per step.

    input_shape: the full input shape (1, C, H, W). target: a Target or {"macs_reduction": X} /
    {"params_reduction": X}. schedule: a Schedule or a dict of its fields. data: a `Data`
    (calibration batches, fine-tuning and evaluation) or None (scoring needs no data and nothing is
    fine-tuned). on_step(step, model, records, phase="prune") is called after each step and after
    the final fine-tuning (phase "finetuned"), to checkpoint; start_step, history, finetuned and
    dense_channels (the dict this run fills) resume from such a checkpoint. teacher: the dense model, which
    fine-tuning distils from when schedule.distill (prune() copies `model` when it is not given).
    """
    target, schedule = as_target(target), as_schedule(schedule)
    if schedule.distill and teacher is None:
        teacher = copy.deepcopy(model).eval()
    recipe = Recipe(schedule.weight_decay, schedule.momentum, schedule.label_smoothing,
                    teacher if schedule.distill else None, schedule.distill_t, schedule.distill_alpha, schedule.amp,
                    schedule.channels_last)
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
        graph, groups = all_groups(model, example, ignored)
        batches = data.calibration(schedule.calib_batches) if data is not None else []
        batches, n_calib = calibration(batches, schedule, criterion, model, groups, shape, log if s == start_step else None)
        scores = criterion.score(model, groups, batches, sharded)
        t1 = time.time()
        costs = channel_costs(model, groups, shape, target.metric) if schedule.ranking == "cost" else None
        planner = Planner(model, groups, scores, dense_channels, schedule, names, costs)
        plan, cost, reached, _ = search(planner, model, example, shape, target.metric, step_target,
                                        desc=f"plan step {s + 1}/{schedule.steps}")
        if s == 0 and not reached and schedule.steps == 1:
            _unreachable(target, dense_cost, cost)
        apply_plan(model, plan, example, graph)
        del graph, groups, planner
        t2 = time.time()
        if real and schedule.finetune_iters > 0:
            train_iters(model, None, schedule.finetune_iters, schedule.lr, batches=finetune_batches,
                        desc=f"fine-tune step {s + 1}", sharded=sharded, recipe=recipe)
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
            f"accuracy {_fmt(acc)}; score {t1 - t0:.1f} s, plan {t2 - t1:.1f} s, fine-tune {t3 - t2:.1f} s")
    finetune_seconds = 0.0
    if real and schedule.epochs > 0 and not finetuned:
        t = time.time()
        train_epochs(model, data.train, schedule.epochs, schedule.lr, desc="final fine-tune", recipe=recipe)
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
    return first_samples([tuple(b) for b in batches], cap), cap


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
