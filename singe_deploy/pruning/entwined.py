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
import math
import statistics
import time
from dataclasses import dataclass, field, fields

import torch

from ..data.specs import first_samples
from ..errors import UserError
from ..measure.flops import count
from ..training import distill, precision
from ..training.loops import Recipe, cycle, evaluate, train_epochs, train_iters
from . import alignment
from .budget import MAX_STEPS
from .groups import all_groups, default_ignored
from .latency import time_against
from .plan import (
    RANKINGS,
    Planner,
    apply_plan,
    channel_costs,
    measure,
    measure_pruned,
    search,
)


@dataclass
class Target:
    metric: str  # "macs", "params" or "latency" (measured; see latency.py)
    reduction: float | None
    budget_ms: float | None = None  # latency only, instead of a reduction: prune until latency <= this

    def __post_init__(self):
        if self.metric not in ("macs", "params", "latency"):
            raise UserError(f"unknown target metric '{self.metric}'; use macs, params or latency")
        if self.budget_ms is not None:
            if self.metric != "latency" or not self.budget_ms > 0:
                raise UserError(f"a budget in ms is a latency target and must be > 0, got {self.budget_ms}")
            return
        if self.reduction is None or not self.reduction > 1:
            raise UserError(f"--{self.metric}-reduction must be > 1 (it divides the dense {self.metric}), "
                            f"got {self.reduction}")


@dataclass
class Schedule:
    """The flowchart's knobs; the defaults are the CLI's (a test keeps them equal)."""

    steps: int = 4
    finetune_iters: int = 150
    epochs: float = 3.0
    lr: float = 0.05
    ranking: str = "global"
    round_to: int | str = "auto"  # channel alignment; "auto": alignment.resolve measures it (prune() on onnxruntime)
    narrow_layers: str = "halve"  # layers narrower than 2 x round_to: a finer alignment ("halve") or none pruned
    max_layer_ratio: float = 0.9
    calib_batches: int = 4
    step_eval: bool = True  # accuracy after every step (off: after the last one only)
    calib_samples: int | None = None  # at most this many calibration samples (None: all calib_batches)
    calib_macs: float | None = None  # or, when set and calib_samples is not, as many as this budget affords
    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    distill: bool = True  # fine-tune against the dense model's logits too (prune() gets it as `teacher`)
    distill_t: float = 4.0
    distill_alpha: float = 0.5
    amp: str = "auto"  # fine-tuning precision and memory format, see train.precision
    channels_last: str = "auto"

    @classmethod
    def from_config(cls, cfg, **overrides):
        """The schedule a config holds (its options share these names); `overrides` replace fields."""
        return cls(**{**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg}, **overrides})

    def __post_init__(self):
        if self.round_to != "auto" and not (isinstance(self.round_to, int) and self.round_to >= 1):
            raise UserError(f"round_to must be 'auto' or a positive integer, got {self.round_to!r}")
        if self.narrow_layers not in ("halve", "keep"):
            raise UserError(f"narrow_layers must be 'halve' or 'keep', got {self.narrow_layers!r}")
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
    latency: dict | None = None  # latency targets: dense, predicted and measured ms, the table and how it was timed
    teacher_logits: str | None = None  # distillation: "computed once" (distill.py) or "per batch"; None: no teacher


def recipe_for(schedule, teacher):
    """How fine-tuning trains: the schedule's optimiser settings and precision, distilling from `teacher` when
    schedule.distill."""
    return Recipe(schedule.weight_decay, schedule.momentum, schedule.label_smoothing,
                  teacher if schedule.distill else None, schedule.distill_t, schedule.distill_alpha, schedule.amp,
                  schedule.channels_last)


def training_data(data, recipe, schedule, log=print):
    """The fine-tuning batches: data.train, carrying the teacher's logits computed once where they can be held."""
    if recipe.teacher is not None and (schedule.finetune_iters > 0 or schedule.epochs > 0):
        return distill.with_logits(data.train, recipe, log) or data.train
    return data.train


def as_target(target):
    """A Target from a Target or a dict like {"macs_reduction": 2}, {"params_reduction": 3},
    {"latency_reduction": 2} or {"latency_budget_ms": 5}."""
    if isinstance(target, Target):
        return target
    if isinstance(target, dict) and len(target) == 1:
        (key, value), = target.items()
        if key in ("macs_reduction", "params_reduction", "latency_reduction"):
            return Target(key.split("_")[0], float(value))
        if key == "latency_budget_ms":
            return Target("latency", None, float(value))
    raise UserError(f"target {target!r} must be {{'macs_reduction': X}}, {{'params_reduction': X}}, "
                    "{'latency_reduction': X} or {'latency_budget_ms': T}")


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


def target_hit(pruned, dense, reduction, budget=None):
    """Whether a MACs or params target is met: in the window; with an accuracy budget the target is a floor (pruned
    as far or further), or there is none to miss."""
    if budget is None:
        return in_window(pruned, dense, reduction)
    return not budget.floor or pruned <= dense / reduction * 1.03


def prune(model, input_shape, criterion, target, schedule, data=None, ignored_layers=None, start_step=0,
          history=None, on_step=None, log=print, finetuned=False, dense_channels=None, teacher=None, timer=None,
          latency_table=None, latency_unit="layer", resume=None, save_every=None, budget=None, step_timer=None,
          reductions=None):
    """Run the entwined flowchart in place on `model`; returns a PruneResult with one record per step.

    input_shape: the full input shape (1, C, H, W). target: a Target or {"macs_reduction": X} /
    {"params_reduction": X}. schedule: a Schedule or a dict of its fields. data: a `Data`
    (calibration batches, fine-tuning and evaluation) or None (scoring needs no data and nothing is
    fine-tuned). on_step(step, model, records, phase, extra) is called after each step (phase "prune", extra
    {"stream": the fine-tuning data's place}), every `save_every` seconds of fine-tuning (phase "step-finetune" with
    extra {"pending": the step's plan record, "train": train_iters' state}, or "final-finetune" with {"train": ...})
    and after the final fine-tuning (phase "finetuned"), to checkpoint; start_step, history, finetuned,
    dense_channels (the dict this run fills) and resume (the phase and extra of such a checkpoint) continue from it
    as the uninterrupted run would have gone on. teacher: the dense model, which
    fine-tuning distils from when schedule.distill (prune() copies `model` when it is not given).
    A latency target needs `timer` (latency.timer_for) and measures a latency table first, or reads it from
    `latency_table` (a path) when that holds one for this model and timer (`latency_unit`: latency.UNITS); the
    levels are then chosen by the table's prediction, and the pruned model is timed against the dense one, with
    correction steps while it misses.
    budget: an AccuracyBudget (budget.py): the target's steps are a floor (or none), then steps of the same ratio go on
    while each one, judged on the held-out data after its fine-tuning, stays within the budget; the first that does
    not is rolled back and ends the loop. step_timer (latency.timer_for): every step's model is timed against the
    dense one, for the report's trade-off curve. reductions: one per step, step s pruned to dense / reductions[s] (a
    sweep's points) instead of the target's geometric schedule.
    """
    target, schedule = as_target(target), as_schedule(schedule)
    schedule = alignment.resolved(schedule, model, input_shape, timer, log)
    schedule, _ = precision.resolved(schedule, model, input_shape, data, log)
    if schedule.distill and teacher is None:
        teacher = copy.deepcopy(model).eval()
    recipe = recipe_for(schedule, teacher)
    shape = [1] + list(input_shape)[1:]
    example = torch.zeros(shape)
    ignored = list(ignored_layers) if ignored_layers is not None else default_ignored(model)
    # by name: a step rolled back (_restore) replaces the model's modules with copies, which the objects would miss
    ignored_names = {n for n, m in model.named_modules() if any(m is x for x in ignored)}
    records = list(history or [])
    table, dense_model = None, None
    if target.metric == "latency":
        table, table_path, target = _latency_setup(model, example, shape, ignored, schedule, target, timer,
                                                   latency_table, records, log, latency_unit)
        dense_model = copy.deepcopy(model).eval() if not records else None
    dense_cost = records[0]["dense"] if records else (table.dense_ms if table else measure(model, shape, target.metric))
    dense_channels = {} if dense_channels is None else dense_channels  # root layer -> dense channel count
    real = data is not None and data.real
    sharded = getattr(data, "sharded", False)  # the loaders already yield this rank's share
    train_data = training_data(data, recipe, schedule, log) if real else None
    finetune_batches = cycle(train_data) if real else None
    resume = resume or {}
    if finetune_batches is not None and resume.get("stream"):
        finetune_batches.restore(resume["stream"])
    pending0 = resume.get("pending")  # a step interrupted in its fine-tuning: its plan is applied already
    before = {"model": None, "records": 0}  # latency targets: the model before the last step's plan
    dense_ref = teacher if teacher is not None else copy.deepcopy(model).eval() if step_timer else None

    def one_step(s, step_target, label, correction=False, pending=None, train_state=None, judged=False, kept=None,
                 half=False):
        """Score, plan to step_target, prune and fine-tune; returns whether the plan reached the target. pending
        and train_state: continue a step that was interrupted in its fine-tuning. judged: a budget step, rolled back
        to `kept` (the model before it) when it exceeds the budget; half: the half step after one that did."""
        if pending is None:
            names = {id(m): n for n, m in model.named_modules()}
            t0 = time.time()
            graph, groups = all_groups(model, example, [m for n, m in model.named_modules() if n in ignored_names])
            batches = data.calibration(schedule.calib_batches) if data is not None else []
            batches, n_calib = calibration(batches, schedule, criterion, model, groups, shape,
                                           log if s == start_step else None)
            scores = criterion.score(model, groups, batches, sharded)
            t1 = time.time()
            costs = None
            if schedule.ranking == "cost":
                costs = (table.channel_costs(groups, names) if table
                         else channel_costs(model, groups, shape, target.metric))
            planner = Planner(model, groups, scores, dense_channels, schedule, names, costs)
            plan, cost, reached, timed = search(planner, model, example, shape, target.metric, step_target,
                                                desc=f"plan step {label}",
                                                predict=(lambda c, p=planner: table.predict(p, c)) if table else None,
                                                timed=_timed(timer, dense_model, table) if table else None)
            if s == 0 and not reached and schedule.steps == 1:
                _unreachable(target, dense_cost, cost, schedule)
            if table is not None:  # a latency step that overshoots is undone and planned again (see below)
                before["model"], before["records"] = copy.deepcopy(model), len(records)
            if judged:
                kept = copy.deepcopy(model)
            apply_plan(model, plan, example, graph)
            pending = {"s": s, "removed": sum(len(i) for _, _, i in plan), "cost": cost, "reached": reached,
                       "timed": timed, "predicted": getattr(planner, "predicted", None),
                       "score_s": round(t1 - t0, 3), "plan_s": round(time.time() - t1, 3), "n_calib": n_calib,
                       "finetune_s": 0.0}
            del graph, groups, planner
        t2 = time.time()
        if real and schedule.finetune_iters > 0:
            def save(train):
                on_step(s, model, records, "step-finetune",
                        {"pending": dict(pending, finetune_s=pending["finetune_s"] + time.time() - t2), "train": train,
                         **({"kept": kept} if judged else {})})

            train_iters(model, None, schedule.finetune_iters, schedule.lr, batches=finetune_batches,
                        desc=f"fine-tune step {label}", sharded=sharded, recipe=recipe, resume=train_state,
                        save=save if on_step and not correction else None, save_every=save_every)
        t3 = time.time()
        acc = evaluate(model, data.val) if real and (schedule.step_eval or s + 1 >= schedule.steps) else None
        macs = count(model, shape).macs
        params = sum(p.numel() for p in model.parameters())
        cost, reached, timed, predicted = pending["cost"], pending["reached"], pending["timed"], pending["predicted"]
        rec = StepRecord(s + 1, step_target, macs, params, acc, pending["removed"], pending["score_s"],
                         pending["plan_s"], round(pending["finetune_s"] + t3 - t2, 3), pending["n_calib"]).__dict__
        rec["dense"] = dense_cost
        if step_timer is not None and table is None:
            rec["dense_latency_ms"], rec["latency_ms"] = map(float, time_against(step_timer, dense_ref, model))
        if budget is not None:
            held = float(budget.measure(model))
            rec["holdout_accuracy"], rec["estimated_drop"] = held, round(budget.drop(held), 3)
        if table is not None:
            rec["latency_predicted_ms"] = predicted
            if timed:
                rec["latency_measured_ms"] = cost
            if not records:
                rec["latency_table"] = str(table_path)
            if correction:
                rec["correction"] = True
        if judged:
            rec["judged"] = True
            stop = _budget_stop(budget, rec, reached, schedule.steps * MAX_STEPS <= _taken(records) + 1, half)
            if stop:
                rec["stop"] = stop
            if rec.get("rolled_back"):
                _restore(model, kept)
        records.append(rec)
        if on_step:
            on_step(s + 1, model, records, "prune", {"stream": finetune_batches.state() if finetune_batches else None})
        how = (", measured" if timed else ", predicted") if table else ""
        held = (f", held-out {_fmt(rec['holdout_accuracy'])} ({rec['estimated_drop']:+.2f} points below dense)"
                if budget is not None else "")
        log(f"step {label}: {target.metric} {cost / dense_cost:.3f} of dense "
            f"(target {step_target / dense_cost:.3f}{how}), removed {rec['removed_channels']} channels, "
            f"accuracy {_fmt(acc)}{held}; score {rec['score_seconds']:.1f} s, plan {rec['plan_seconds']:.1f} s, "
            f"fine-tune {rec['finetune_seconds']:.1f} s")
        if rec.get("stop"):
            log(f"step {label}: {rec['stop']}")
        elif rec.get("rolled_back"):
            log(f"step {label}: {rec['estimated_drop']:.2f} points below dense on the held-out data, over the budget: "
                "rolled back; half a step follows")
        return reached and rec["removed_channels"] > 0

    in_final = resume.get("phase") == "final-finetune"
    floor_steps = schedule.steps if budget is None or budget.floor else 0
    for s in range(start_step, floor_steps if not in_final else 0):
        resumed = pending0 is not None and pending0["s"] == s
        goal = dense_cost / (reductions[s] if reductions else target.reduction ** ((s + 1) / schedule.steps))
        one_step(s, goal, f"{s + 1}/{schedule.steps}",
                 pending=pending0 if resumed else None, train_state=resume.get("train") if resumed else None)
    checked = None  # the check the loop ended on: (dense ms, ms), reported as it stands (fine-tuning keeps the shapes)
    met = None  # the last model that met the target, faster than asked: (model, records, check)
    corrections = {"run": 0, "replanned": 0}  # correction steps taken; of them, steps undone and planned again
    for k in range(CORRECTIONS + 1 if table is not None and not finetuned and not in_final else 0):
        dense_ms, measured = _latency_pair(timer, dense_model, model, table, rounds=3)
        off = measured * target.reduction / dense_ms
        if not 1 / LATENCY_SLACK <= off <= LATENCY_SLACK and 1 / NEAR_MISS <= off <= NEAR_MISS:
            # a few percent off may be the machine's noise (the level was chosen as the first one timed under the
            # target): time it again, longer, before changing the model
            dense_ms, measured = _latency_pair(timer, dense_model, model, table, rounds=CONFIRM_ROUNDS)
        goal = dense_ms / target.reduction
        checked = dense_ms, measured
        faster = measured < goal / LATENCY_SLACK and budget is None  # a budget goes beyond the floor anyway
        if measured <= goal * LATENCY_SLACK and not (faster and before["model"] is not None):
            break
        if k == CORRECTIONS:
            break
        last = records[-1]
        basis = last.get("latency_measured_ms") or last["latency_predicted_ms"]  # what the last plan went by
        corrections["run"] += 1
        if faster:  # more removed than the target needs: undo the last step and plan it again, removing less
            corrections["replanned"] += 1
            met = copy.deepcopy(model), list(records), checked
            _restore(model, before["model"])
            del records[before["records"]:]
            before["model"] = None
            log(f"measured {measured:.3f} ms, {dense_ms / measured:.2f}x, against {goal:.3f} ms (dense {dense_ms:.3f} "
                f"ms / {target.reduction:g}): more than {100 * (LATENCY_SLACK - 1):.0f}% faster than asked; the last "
                f"step is planned again to remove fewer channels")
        else:
            log(f"measured {measured:.3f} ms against {goal:.3f} ms (dense {dense_ms:.3f} ms / {target.reduction:g}); "
                f"the last plan went by {basis:.3f} ms; pruning again to a corrected target")
        checked = None  # the model changes: measured again
        if not one_step(len(records), basis * goal / measured, f"correction {k + 1}", correction=True):
            break
    if met is not None:
        checked = checked or _latency_pair(timer, dense_model, model, table, rounds=3)
        if checked[1] > checked[0] / target.reduction * LATENCY_SLACK:
            _restore(model, met[0])  # removing fewer channels missed the target: keep the model that met it
            records[:] = met[1]
            checked = met[2]
    while budget is not None and not finetuned and not in_final and not (records and records[-1].get("stop")):
        s = len(records)
        resumed = pending0 is not None and pending0["s"] == s
        # after a step over the budget, half of one (in the ratio's exponent) from the model before it, and no more
        half = any(r.get("rolled_back") for r in records)
        along = _taken(records) - half + (0.5 if half else 1)
        one_step(s, dense_cost / target.reduction ** (along / schedule.steps), f"{s + 1} (budget{', half' * half})",
                 pending=pending0 if resumed else None, train_state=resume.get("train") if resumed else None,
                 judged=True, kept=resume.get("kept") if resumed else None, half=half)
        checked = None  # the model changed since the correction loop's check
    finetune_seconds = 0.0
    if real and schedule.epochs > 0 and not finetuned:
        t = time.time()

        def save(train):
            on_step(schedule.steps, model, records, "final-finetune", {"train": train})

        train_epochs(model, train_data, schedule.epochs, schedule.lr, desc="final fine-tune", recipe=recipe,
                     resume=resume.get("train") if in_final else None, save=save if on_step else None,
                     save_every=save_every)
        finetune_seconds = round(time.time() - t, 2)
        if on_step:
            on_step(schedule.steps, model, records, "finetuned", {})
    logits = None if not real or recipe.teacher is None else "per batch" if train_data is data.train else "computed once"
    if table is not None:
        info = dict(_latency_result(timer, dense_model, model, table, records, target, checked),
                    corrections=corrections["run"], replanned=corrections["replanned"])
        return PruneResult(model, records, info["hit"], finetune_seconds, info, logits)
    final = measure(model, shape, target.metric)
    return PruneResult(model, records, target_hit(final, dense_cost, target.reduction, budget), finetune_seconds,
                       teacher_logits=logits)


def _latency_setup(model, example, shape, ignored, schedule, target, timer, path, records, log, unit):
    """(table, its path, the target as a reduction) for a latency target: the table is measured on the dense model
    (or read: see latency.load_or_measure), and on resume read from where the first step recorded it."""
    from . import latency

    if timer is None:
        raise UserError("a latency target needs a timer: prune(..., timer=latency.timer_for(target, input_shape))")
    planner = None
    if records and records[0].get("latency_table"):
        path = records[0]["latency_table"]
        table = latency.LatencyTable.read(path)
    else:
        _, groups = all_groups(model, example, ignored)
        names = {id(m): n for n, m in model.named_modules()}
        planner = Planner(model, groups, [torch.ones(len(g[0].idxs)) for g in groups], {}, schedule, names,
                          [1.0] * len(groups))
        table, path = latency.load_or_measure(path, planner, model, example, timer, shape, log, unit)
    if target.budget_ms is not None and target.reduction is None:
        if target.budget_ms >= table.dense_ms:
            raise UserError(f"--latency-budget-ms {target.budget_ms:g} is above the dense model's "
                            f"{table.dense_ms:.3f} ms ({table.key['backend']}): nothing to prune; lower the budget")
        # held as a ratio to the dense model, so that the machine's drift in speed moves both alike
        target = Target("latency", table.dense_ms / target.budget_ms, target.budget_ms)
    if planner is not None:
        smallest = table.predict(planner, planner.counts(planner.levels))
        if smallest > table.dense_ms / target.reduction:
            _unreachable_latency(target, table.dense_ms, smallest, schedule)
    return table, path, target


def _timed(timer, dense_model, table):
    """pruned copy -> its latency in the table's ms (the table's dense time x pruned/dense, timed as a pair), for the
    planner to bisect by measurement; None after a resume (no dense model to time against)."""
    if dense_model is None:
        return None

    def timed(pruned):
        dense, ms = time_against(timer, dense_model, pruned)
        return table.dense_ms * ms / dense
    return timed


def _latency_result(timer, dense_model, model, table, records, target, checked=None, rounds=3):
    """The pruned model timed against the dense one (see _latency_pair), the prediction beside it; the target is
    hit when measured <= dense / X x 1.03. checked: the (dense ms, ms) the correction loop accepted, reported as
    they are, so that the verdict and the decision to stop correcting are one measurement."""
    dense_ms, measured = checked or _latency_pair(timer, dense_model, model, table, rounds)
    return {"dense_ms": dense_ms, "measured_ms": measured, "predicted_ms": records[-1].get("latency_predicted_ms"),
            "table_dense_ms": table.dense_ms, "reduction": target.reduction, "achieved": dense_ms / measured,
            "hit": measured <= dense_ms / target.reduction * LATENCY_SLACK,
            "within_3pct": 1 / LATENCY_SLACK <= measured * target.reduction / dense_ms <= LATENCY_SLACK,
            "table": str(records[0].get("latency_table")),
            "timer": table.key, "corrections": sum(bool(r.get("correction")) for r in records),
            # a budget: as asked, and at the speed the machine ran the dense model at this check
            **({"budget_ms": target.budget_ms, "budget_ms_at_check": target.budget_ms * dense_ms / table.dense_ms}
               if target.budget_ms else {})}


def _taken(records):
    """Steps taken along the target's ratio (correction steps aside)."""
    return sum(not r.get("correction") for r in records)


def _budget_stop(budget, rec, reached, last, half):
    """Why a budget step ends the loop (None: go on); marks the record rolled back when it exceeds the budget. A full
    step over the budget is followed by half a step, which ends the loop either way."""
    if not budget.allows(rec["holdout_accuracy"]):
        rec["rolled_back"] = True
        won_back = f" plus the {budget.margin:g} the final fine-tuning wins back" if budget.margin else ""
        over = (f"{rec['estimated_drop']:.2f} points below dense on the held-out data, over the budget of "
                f"{budget.max_drop:g}{won_back}: rolled back to the model before this step")
        return f"{over}; done" if half else None
    if half:
        return "within the budget at half a step, where the full step was over it; done"
    if not reached or rec["removed_channels"] == 0:
        return "within the budget, and no further step is possible within --max-layer-ratio and --round-to"
    if last:
        return f"within the budget after {MAX_STEPS} x --steps steps, the most a run takes"
    return None


def _restore(model, saved):
    """Make `model` (the caller's object) the module `saved` is: its layers, weights and buffers."""
    model.__dict__.update(copy.deepcopy(saved).__dict__)


def _latency_pair(timer, dense_model, model, table, rounds=1):
    """(dense ms, pruned ms), see latency.time_against; after a resume (no dense model) the table's dense time
    stands in."""
    if dense_model is None:
        return table.dense_ms, statistics.median(timer(model) for _ in range(rounds))
    return time_against(timer, dense_model, model, rounds)


MIN_CALIB_SAMPLES = 16
LATENCY_SLACK = 1.03  # a latency target is hit when measured <= dense / X x this
CORRECTIONS = 3  # latency targets: extra steps when the measured latency misses what the table predicted
NEAR_MISS, CONFIRM_ROUNDS = 1.10, 9  # a final check under 10% over the target is timed again, 9 pairs, before correcting


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


def check_reachable(model, input_shape, target, schedule, ignored_layers=None, flag=None):
    """Fail fast (bad input) when even the most pruning the schedule allows misses the target. `flag`: the option
    the user gave the reduction with, for the message (default --METRIC-reduction)."""
    target, schedule = as_target(target), as_schedule(schedule)
    schedule = alignment.resolved(schedule, model, input_shape, log=lambda *a: None)
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
        _unreachable(target, dense, best, schedule, flag)
    return dense, best


LATENCY_MARGIN = 0.05  # a latency suggestion's room for the timings of the rerun, which vary by a few percent


def _rounded(x, digits, down):
    """x to `digits` decimals, rounded towards what stays reachable (down for a reduction, up for a budget)."""
    return (math.floor if down else math.ceil)(x * 10 ** digits) / 10 ** digits


def _limits(schedule):
    return f"these layers, --max-layer-ratio {schedule.max_layer_ratio:g} and --round-to {schedule.round_to}"


def _unreachable(target, dense, best, schedule, flag=None):
    """Bad input naming the largest reduction that is reachable (rounded down, so that it is), for the rerun."""
    if target.metric == "latency":
        _unreachable_latency(target, dense, best, schedule)
    most = dense / max(best, 1)  # a count of MACs or params
    flag = flag or f"--{target.metric}-reduction"
    said = f"{flag} {target.reduction:g} is unreachable"
    reachable = _rounded(most, 2, down=True)
    if reachable <= 1:
        raise UserError(f"{said}: {_limits(schedule)} allow no {target.metric} reduction (the most pruning gives "
                        f"{most:.3f}x); raise --max-layer-ratio or ignore fewer layers")
    raise UserError(f"{said}: {_limits(schedule)} allow at most {most:.3f}x; rerun with {flag} {reachable:.2f} or "
                    "lower, or raise --max-layer-ratio")


def _unreachable_latency(target, dense_ms, smallest_ms, schedule):
    """As _unreachable, for a latency target: the suggestion keeps LATENCY_MARGIN from the predicted limit."""
    most = dense_ms / smallest_ms
    limit = (f"{_limits(schedule)} allow at most {most:.2f}x ({smallest_ms:.3f} ms predicted, dense "
             f"{dense_ms:.3f} ms)")
    if target.budget_ms is not None:
        budget = _rounded(smallest_ms * (1 + LATENCY_MARGIN), 3, down=False)
        if budget < dense_ms:
            raise UserError(f"--latency-budget-ms {target.budget_ms:g} is unreachable: {limit}; rerun with "
                            f"--latency-budget-ms {budget:.3f} or more ({LATENCY_MARGIN:.0%} over the limit: timings "
                            "vary between runs)")
    reachable = _rounded(most * (1 - LATENCY_MARGIN), 2, down=True)
    said = (f"--latency-budget-ms {target.budget_ms:g}" if target.budget_ms is not None
            else f"--latency-reduction {target.reduction:g}")
    if reachable <= 1:
        raise UserError(f"{said} is unreachable: {limit}, too close to dense to promise; raise --max-layer-ratio "
                        "or target MACs (--macs-reduction)")
    raise UserError(f"{said} is unreachable: {limit}; rerun with --latency-reduction {reachable:.2f} or lower "
                    f"({LATENCY_MARGIN:.0%} under the limit: timings vary between runs)")


def _fmt(acc):
    return "n/a" if acc is None else f"{acc:.4f}"
