"""`compress`: load, score, prune (entwined), fine-tune, export, check, time, report.

Everything that can be bad input is checked before the first minute of work and before anything
is written. Work happens in a hidden sibling folder (<out>/../.<name>.partial, see outdir.py) that is renamed to
<out> at the end; one resume state there (state.pt, written atomically after each pruning step, every
--checkpoint-minutes of fine-tuning and after the final fine-tuning) lets `--resume` continue a run where it was.
A failure once there is something to resume keeps the work folder, with a partial report that names the stage.
"""
from __future__ import annotations

import importlib.util
import signal
import threading
import time
import traceback
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import torch

from . import outdir, report
from .config import PER_RUN, TARGETS, to_yaml
from .deploy.deployables import Deployed, DeploySettings, deploy
from .deploy.quantize import QUANTIZED
from .deploy.recommend import says
from .deploy.trt import EngineOptions
from .errors import CheckFailed, UserError, first_line
from .files import partial, save_torch, write_json, write_text
from .measure import bench
from .measure.flops import CONVENTION, count
from .models.specs import (
    is_dense_output,
    load_pruned,
    parse_spec,
    pruned_dict,
    read_checkpoint,
    save_pruned,
    task_of,
)
from .pruning.budget import AccuracyBudget
from .pruning.entwined import Schedule, Target, check_reachable, prune, target_hit
from .scoring.importance import make_criterion
from .source import Source
from .sweep import finetune_points, front, save_step
from .training import distributed, memo
from .training.loops import evaluate
from .training.loops import precision as train_precision

STATE = "state.pt"
# options that only the export stage reads: a run whose export failed resumes with them changed
EXPORT_ONLY = ("opset", "batch_sizes", "latency_iters", "latency_seconds", "parity_atol", "parity_rtol",
               "parity_top1", "parity_batches", "parity_samples", "quantize", "quantize_method", "quant_top1",
               "quant_accuracy_drop", "trt_precision", "trt_tf32", "trt_workspace_gb", "trt_timing_cache", "export")


def check_target(cfg):
    """Fail fast when the deployment target cannot run on this machine."""
    if cfg["target"] == "trt":
        missing = []
        if not torch.cuda.is_available():
            missing.append("an NVIDIA GPU with CUDA")
        if importlib.util.find_spec("tensorrt") is None:
            missing.append("the tensorrt Python package")
        if missing:
            raise UserError(f"--target trt needs {' and '.join(missing)}, not found here; run it on a TensorRT "
                            "machine (pip install 'singe-deploy[trt]'; JetPack on Jetson) or use --target onnx")
    if cfg["device"] == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda needs a CUDA GPU and none was found; use --device cpu")


def _target(cfg):
    """The run's target; with --max-accuracy-drop and none given, the default 2x MACs sets only the steps' ratio."""
    if cfg["latency_budget_ms"]:
        return Target("latency", None, cfg["latency_budget_ms"])
    key = next((k for k in TARGETS if k.endswith("_reduction") and cfg[k]), None)
    return Target(key.split("_")[0], cfg[key]) if key else Target("macs", 2.0)


def _has_floor(cfg):
    return any(cfg[k] for k in TARGETS)


def _step_timer(cfg, input_shape, threads):
    """What each step's model is timed with, against the dense one, for the report's trade-off curve: the --target's
    timer, kept short; None without export, for a latency target (its steps are timed by the target's own), and for
    TensorRT, where each timing would build two engines (the curve is then drawn against MACs)."""
    if not cfg["export"] or cfg["latency_reduction"] or cfg["latency_budget_ms"] or cfg["target"] == "trt":
        return None
    from .pruning.latency import timer_for

    return timer_for(cfg["target"], input_shape, cfg["latency_batch"], cfg["device"], threads, cfg["opset"],
                     engine=EngineOptions.from_config(cfg), min_iters=10, min_seconds=0.2)


def _timer(cfg, input_shape, threads=None):
    """What a latency target is timed with (None for a MACs or params target)."""
    if not (cfg["latency_reduction"] or cfg["latency_budget_ms"]):
        return None
    from .pruning.latency import timer_for

    limits = dict(min_iters=min(cfg["latency_iters"], 30), min_seconds=min(cfg["latency_seconds"], 0.5))
    return timer_for(cfg["target"], input_shape, cfg["latency_batch"], cfg["device"], threads, cfg["opset"],
                     engine=EngineOptions.from_config(cfg), **limits)


def _threads(cfg, model, input_shape, state, log):
    """{threads, source, ...}: --threads as given, the resumed run's, or measured on the --target (threads);
    threads None is the runtime's default. Not measured when nothing in the run is timed."""
    if state and state.get("threads") and state["threads"]["source"] != "nothing timed":
        return state["threads"]
    if cfg["threads"] != "auto":
        return {"threads": cfg["threads"], "source": "option"}
    timed = cfg["export"] or cfg["round_to"] == "auto" or cfg["latency_reduction"] or cfg["latency_budget_ms"]
    if not timed:
        return {"threads": None, "source": "nothing timed"}
    from .measure import threads

    return threads.resolve(model, input_shape, cfg["target"], cfg["latency_batch"], log=log, opset=cfg["opset"])[1]


def _precision(schedule, model, input_shape, data, state, log):
    """Fine-tuning's precision and memory format when --amp / --channels-last auto is measured on this CPU: the
    resumed run's record, or precision.resolved's; None where train.precision decides (a GPU, no fine-tuning)."""
    if state and "precision" in state:
        return state["precision"]
    from .training import precision

    return precision.resolved(schedule, model, input_shape, data, log)[1]


def _alignment(cfg, model, input_shape, state, threads, log):
    """{round_to, source, ...}: --round-to as given, the resumed run's, or measured on the --target (alignment)."""
    if state and state.get("alignment"):
        return state["alignment"]
    if cfg["round_to"] != "auto":
        return {"round_to": cfg["round_to"], "source": "option"}
    from .pruning import alignment

    return alignment.resolve(model, input_shape, cfg["target"], cfg["latency_batch"], cfg["device"], threads,
                             log=log, cuda_graph=cfg["cuda_graph"], int8="int8" in (cfg["quantize"] or []))[1]


def default_out(cfg):
    name = parse_spec(cfg["model"])[2].replace("/", "_")
    return Path("singe-deploy-out") / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


@dataclass
class Prepared:
    """What prepare() checked and loaded: the run's model, data and targets, and where it writes."""
    model: torch.nn.Module
    data: object  # data.Data
    shape: tuple  # (C, H, W)
    checkpoint: Path | None
    out: Path
    work: Path
    criterion: object
    target: Target
    timer: object = None  # latency timer for latency targets, set once the input shape is final
    alignment: dict | None = None  # the channel alignment (round_to) and how it was chosen
    threads: dict | None = None  # the latency thread count and how it was chosen
    precision: dict | None = None  # fine-tuning's precision and memory format, when measured on this CPU


def prepare(cfg, log=print):
    """All bad-input checks, in order; returns a Prepared."""
    check_target(cfg)
    out = Path(cfg["out"]) if cfg["out"] else default_out(cfg)
    work = partial(out)
    main = distributed.current().main  # rank 0 writes the output and holds the resume state
    if cfg["resume"] and not cfg["out"]:
        raise UserError("--resume needs --out DIR, the output folder of the interrupted run")
    if cfg["resume"] and main and not (work / STATE).is_file():
        done = f"{out} holds a finished run" if out.exists() else f"no interrupted run was found in {work}"
        raise UserError(f"--resume: {done}; drop --resume to start a new run, or pass the --out of the "
                        "interrupted run")
    if main:
        outdir.check(out, cfg["force"], cfg["resume"])
    _make(cfg, None)  # options checked before any loading
    target = _target(cfg)
    model, data, shape, checkpoint = Source.from_config(cfg).load(log)
    criterion = _make(cfg, data)
    if data.real and (cfg["finetune_iters"] or cfg["epochs"]) and len(data.train) == 0:
        raise UserError(f"the training data ({cfg['data']}) gives no batch of --batch-size {cfg['batch_size']}; "
                        "lower --batch-size or raise --train-limit")
    if is_dense_output(model) and (data.real or criterion.uses_data):
        why = f"--data {cfg['data']}" if data.real else f"--criterion {criterion.name}"
        raise UserError(f"{cfg['model']} is a {task_of(model)} model and {why} needs a loss, which singe-deploy "
                        "has only for one class per image; prune it with --data synthetic and a data-free criterion "
                        "(l1, l2, bn, random) for export and latency, then evaluate pruned.pt with your own code")
    if not data.real:
        labels = f"; {criterion.name} scores see random labels" if criterion.uses_data else ""
        chosen = (f"; criterion {criterion.name} (data-free: random labels carry no signal; --criterion to choose)"
                  if cfg["criterion"] == "auto" else "")
        log(f"synthetic data: a latency-only run, no fine-tuning, accuracy is null{labels}{chosen}")
    return Prepared(model, data, shape, checkpoint, out, work, criterion, target)


# the default calibration budget when scoring runs on a CPU: criterion passes x MACs per sample; about a minute of
# SInGE (m = 8) on torchvision:resnet50 at 224 on 2 cores (docs/research/criteria.md); the demo model stays far below it
CPU_CALIB_MACS = 4e12


def _scores_on_cpu(cfg):
    return cfg["train_device"] == "cpu" or (cfg["train_device"] == "auto" and not torch.cuda.is_available())


def _make(cfg, data):
    """The criterion: 'auto' is SInGE on real data and l2 on synthetic data (or SInGE before the data is known)."""
    name = cfg["criterion"]
    if name == "auto":
        name = "l2" if data is not None and not data.real else "singe"
    return make_criterion(name, **criterion_options(dict(cfg, criterion=name)))


def criterion_options(cfg):
    name = cfg["criterion"]
    if name == "singe":
        return {"steps": cfg["singe_steps"], "norm": cfg["singe_norm"], "path": cfg["singe_path"],
                "elementwise": cfg["singe_elementwise"], "batch_steps": cfg["singe_batch_steps"],
                "rule": cfg["singe_rule"], "variant": cfg["singe_variant"], "replicas": cfg["singe_replicas"]}
    if name == "random":
        return {"seed": cfg["seed"]}
    return {}


def _resume_state(cfg, work):
    if not cfg["resume"]:
        return None
    state = read_checkpoint(work / STATE)  # prepare() refused --resume without it
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{work / STATE} was written by an older singe-deploy and cannot be resumed; pass --force "
                        "without --resume to start over")
    free = PER_RUN + ("nproc", "dist_backend", "dist_timeout", "dist_sync_bn", "train_device", "checkpoint_minutes")
    if state.get("phase") == "finetuned":  # only the export is left: its options may change (the cause of a failure)
        free += EXPORT_ONLY
    keep = {k: v for k, v in cfg.items() if k not in free}
    old = {k: v for k, v in state["config"].items() if k not in free}
    diff = sorted(k for k in keep if keep[k] != old.get(k))
    if diff:
        raise UserError(f"the interrupted run in {work} used other options ({', '.join(diff)}); "
                        "drop --resume to start over")
    return state


def run(cfg, log=print, dense_accuracy=None, resume_hint=True):
    """The whole compress job; returns (report dict, out path). Raises CheckFailed after writing
    the output when parity or the target missed. dense_accuracy, when known (compare runs the same
    baseline many times), skips evaluating the dense model again."""
    t_start = time.time()
    ctx = distributed.init(cfg["train_device"], cfg["dist_backend"], cfg["dist_timeout"], cfg["dist_sync_bn"])
    if not ctx.main:
        log = _quiet
    error, state = None, None
    try:  # every bad-input check, on every rank; then all ranks learn whether any failed
        p = prepare(cfg, log)
        model, data, shape, out, work = p.model, p.data, p.shape, p.out, p.work
        schedule = Schedule.from_config(
            cfg, epochs=cfg["epochs"] if data.real else 0,
            calib_macs=CPU_CALIB_MACS if cfg["calib_samples"] is None and _scores_on_cpu(cfg) else None)
        train_precision(cfg["amp"], cfg["channels_last"], ctx.device)  # fp16 on a CPU is bad input, before any work
        input_shape = [1] + list(shape)
        p.timer = _timer(cfg, input_shape)  # an unsupported target is bad input, before any work
        state = _resume_state(cfg, work) if ctx.main else None
        if ctx.main:
            p.threads = _threads(cfg, model, input_shape, state, log)
            p.alignment = _alignment(cfg, model, input_shape, state, p.threads["threads"], log)
        if p.target.metric != "latency" and (_has_floor(cfg) or cfg["max_accuracy_drop"] is None):
            # a latency target is checked against its table, once measured; a budget without a floor needs no check
            # other ranks learn the alignment later (broadcast): they check with any count, rank 0 with its own
            aligned = replace(schedule, round_to=p.alignment["round_to"] if p.alignment else 1)
            check_reachable(model, input_shape, p.target, aligned, _ignored(model, cfg["ignore_layers"]),
                            flag="a --sweep point of" if cfg["sweep"] else None)
    except UserError as e:
        error = e
    distributed.agree(error)
    if ctx.active:  # rank 0's weights, resume state and alignment everywhere (no shared filesystem needed)
        distributed.broadcast_model(model)
        state = distributed.broadcast_object(state)
        p.alignment = distributed.broadcast_object(p.alignment)
        p.threads = distributed.broadcast_object(p.threads)
    schedule = replace(schedule, round_to=p.alignment["round_to"])
    p.timer = _timer(cfg, input_shape, p.threads["threads"])
    if ctx.main:
        p.precision = _precision(schedule, model, input_shape, data, state, log)
    if ctx.active:
        p.precision = distributed.broadcast_object(p.precision)
    if p.precision:
        schedule = replace(schedule, amp=p.precision["amp"], channels_last=p.precision["channels_last"])
    made_parent = False
    if ctx.main:
        work, made_parent = outdir.begin(out, resume=state is not None)
    live = {"stage": "prune", "model": model, "records": [], "input_shape": input_shape}
    # SIGTERM (a scheduler's kill, `timeout`) ends the run as Ctrl-C does: the resume state stays, a hint is printed
    with _handling(signal.SIGTERM, _interrupt):
        try:
            return _run(cfg, log, t_start, p, schedule, input_shape, state, dense_accuracy, live)
        except BaseException as e:
            if not ctx.main:
                raise
            _failed(cfg, p, schedule, live, e, made_parent, resume_hint, log)
            raise


def _failed(cfg, p, schedule, live, e, made_parent, resume_hint, log):
    """Keep what was computed: with something to resume, the work folder stays, with a partial report naming the
    stage that failed and a traceback file for an unexpected error; with nothing, it is removed."""
    with _handling(signal.SIGINT, signal.SIG_IGN):  # a second Ctrl-C waits until the work folder is in order
        outdir.release(p.work)
        _keep(cfg, p, schedule, live, e, made_parent, resume_hint, log)


def _keep(cfg, p, schedule, live, e, made_parent, resume_hint, log):
    work, out = p.work, p.out
    if live["stage"] == "publish":  # a finished run that could not be put in place: it stays where it is, whole
        return
    if not outdir.has_state(work):
        outdir.discard(work, made_parent)
        return
    hint = f"rerun the same command plus --resume --out {out}"
    if isinstance(e, KeyboardInterrupt):
        if resume_hint:
            print(f"interrupted; to continue, {hint}")
        return
    try:
        if not isinstance(e, (UserError, CheckFailed, OSError)):
            write_text(work / "traceback.txt", "".join(traceback.format_exception(e)))
            e.kept = work / "traceback.txt"  # the CLI names it in its one line
        rep = _report(cfg, p, schedule, live, failed={"stage": live["stage"], "error": first_line(e, 300),
                                                      "exit_code": getattr(e, "exit_code", 1), "resume": hint})
        _write_report(work, rep, cfg)
    except Exception as inner:  # noqa: BLE001 - the state file is what matters; say why the report is missing
        log(f"(no partial report: {first_line(inner)})")
    log(f"{live['stage']} failed; what was computed is kept in {work} (report.md says what failed); fix the cause "
        f"and {hint}")


class _handling:
    """Signal `sig` handled by `handler` inside the block; only in the main thread, where Python delivers signals."""

    def __init__(self, sig, handler):
        self.sig, self.handler, self.old = sig, handler, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.old = signal.signal(self.sig, self.handler)
        return self

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(self.sig, self.old)
        return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _ignored(model, names):
    from .pruning.groups import default_ignored

    layers = default_ignored(model)
    modules = dict(model.named_modules())
    for n in names or []:
        if n not in modules:
            raise UserError(f"--ignore-layers names '{n}', which the model does not have")
        layers.append(modules[n])
    return layers


def _quiet(*args, **kwargs):
    pass


def _training(schedule, device):
    """How fine-tuning ran: the device, the precision and memory format that 'auto' resolved to."""
    dtype, channels_last = train_precision(schedule.amp, schedule.channels_last, device)
    return {"device": str(device), "precision": {None: "fp32", torch.bfloat16: "bf16"}.get(dtype, "fp16"),
            "channels_last": channels_last}


def _run(cfg, log, t_start, p, schedule, input_shape, state, dense_accuracy, live):
    model, data, shape, out, work = p.model, p.data, p.shape, p.out, p.work
    target, criterion = p.target, p.criterion
    ctx = distributed.current()
    timings = {}
    dense_model = _clone(model)
    dense_costs = count(model, input_shape)
    live.update(dense_costs=dense_costs, dense_acc=None, timings=timings)
    resume = {}
    if state:
        dense_acc = state["dense_accuracy"]
        model = load_pruned(work / STATE, state["model"])
        records, start, dense_channels = state["records"], state["step"], state["dense_channels"]
        resume = dict(state.get("extra") or {}, phase=state["phase"])
        if resume.get("kept"):  # the model before a budget step, which it may be rolled back to
            resume["kept"] = load_pruned(work / STATE, resume["kept"])
        log(f"resuming {work} after step {start}/{schedule.steps}"
            + {"step-finetune": ", inside the next step's fine-tuning", "final-finetune": ", inside the final "
               "fine-tuning", "finetuned": ", at the export"}.get(state["phase"], ""))
    else:
        t = time.time()
        how = "given" if dense_accuracy is not None else None
        dense_acc = dense_accuracy
        if dense_acc is None and data.real:
            dense_acc, how = memo.accuracy(model, data.val, evaluate)
        timings["evaluate_dense_s"] = round(time.time() - t, 2)
        records, start, dense_channels = [], 0, {}
        cached = f" ({how})" if how and how.startswith("measured before") else ""
        log(f"dense {cfg['model']}: {dense_costs.macs:,} MACs, {dense_costs.params:,} params, "
            f"accuracy {_fmt(dense_acc)}{cached}")
    live.update(model=model, records=records, dense_acc=dense_acc)
    ignored = _ignored(model, cfg["ignore_layers"])

    def checkpoint(step, m, recs, phase="prune", extra=None):
        """One atomic file holds the model and where the run is: a kill leaves the old state or the new one."""
        final = phase == "final-finetune" or (phase == "prune" and step >= schedule.steps)  # what runs next
        if sweep and phase == "prune" and 1 <= step <= len(sweep):  # the point's model, before the state says so
            save_step(work, sweep[step - 1], m, cfg["model"], _classes(m), input_shape)
        live.update(stage="export" if phase == "finetuned" else "finetune" if final else "prune", model=m,
                    records=recs)
        saved = pruned_dict(m, cfg["model"], _classes(m), shape[0], input_shape)
        if extra and extra.get("train"):  # inside fine-tuning: the weights as they were before the iteration resumed
            train = dict(extra["train"])
            saved["state_dict"] = train.pop("weights")
            extra = dict(extra, train=train)
        if extra and extra.get("kept") is not None:
            extra = dict(extra, kept=pruned_dict(extra["kept"], cfg["model"], _classes(m), shape[0], input_shape))
        save_torch({"config": cfg, "step": step, "records": recs, "dense_accuracy": dense_acc, "phase": phase,
                    "dense_channels": dense_channels, "extra": extra, "model": saved,
                    "alignment": p.alignment, "threads": p.threads, "precision": p.precision}, work / STATE)

    t = time.time()
    sweep = cfg["sweep"]
    if sweep:  # one step per point, each fine-tuned on its own afterwards (sweep.py)
        schedule = replace(schedule, steps=len(sweep))
    finetuned = state is not None and state.get("phase") == "finetuned"
    budget = None
    if cfg["max_accuracy_drop"] is not None:
        budget = live["budget"] = AccuracyBudget(cfg["max_accuracy_drop"], dense_acc, data.holdout, _has_floor(cfg))
    result = prune(model, input_shape, criterion, target, replace(schedule, epochs=0) if sweep else schedule, data,
                   ignored, start, records,
                   checkpoint if ctx.main else None, log, finetuned, dense_channels, teacher=dense_model,
                   timer=p.timer, latency_table=cfg["latency_table"], latency_unit=cfg["latency_unit"],
                   resume=resume, save_every=60 * cfg["checkpoint_minutes"], budget=budget,
                   step_timer=_step_timer(cfg, input_shape, p.threads["threads"]) if ctx.main else None,
                   reductions=sweep)
    records = result.steps
    if sweep:
        live["stage"] = "finetune"
        points, model, result.finetune_seconds = finetune_points(
            work, sweep, records, data, schedule, dense_model, cfg["seed"], cfg["model"], _classes(model), input_shape,
            cfg["export"], log)
        live.update(model=model, sweep=points)
    timings["prune_s"] = round(time.time() - t - result.finetune_seconds, 2)
    timings["finetune_s"] = result.finetune_seconds
    live.update(stage="export", records=records, result=result,
                pruned_acc=evaluate(model, data.val) if data.real else None)
    if budget is not None:  # how far the held-out estimate and the evaluation set were apart, for the report
        live["holdout"] = {"dense": budget.measure(dense_model), "pruned": budget.measure(model)}
    pruned_costs = live["pruned_costs"] = count(model, input_shape)
    log(f"pruned: {pruned_costs.macs:,} MACs ({dense_costs.macs / pruned_costs.macs:.2f}x fewer), "
        f"{pruned_costs.params:,} params, accuracy {_fmt(live['pruned_acc'])}")
    if not ctx.main:  # the last collective is behind us: rank 0 alone exports, measures and writes
        return None, out

    t = time.time()
    save_pruned(model, work / "pruned.pt", cfg["model"], _classes(model), input_shape[1], input_shape)
    settings = DeploySettings.from_config(cfg, threads=p.threads["threads"])
    deployed = deploy(dense_model, model, work / "pruned.pt", data, input_shape, work, settings,
                      {"dense": dense_costs, "pruned": pruned_costs}, cfg["model"], log) if cfg["export"] else Deployed()
    timings["export_and_latency_s"] = round(time.time() - t, 2)
    timings["total_s"] = round(time.time() - t_start, 2)
    live["stage"] = "report"
    rep = _report(cfg, p, schedule, live, deployed)
    failures = rep["checks"]["failures"]
    _write_report(work, rep, cfg)
    (work / STATE).unlink(missing_ok=True)
    live["stage"] = "publish"
    outdir.publish(work, out)
    files = {"onnx": ", dense.onnx, pruned.onnx", "trt": ", dense.onnx, pruned.onnx, dense.engine, pruned.engine"}
    quantized = "".join(f", {e['path']}" for e in deployed.exports if e.get("precision") in QUANTIZED)
    plot = "".join(f", {name}" for name in ("tradeoff.png", "sweep.png", "sweep/") if (out / name).exists())
    log(f"wrote {out}/ (report.md, report.json{plot}, pruned.pt"
        f"{files.get(cfg['target'], '') if cfg['export'] else ''}{quantized})")
    if deployed.recommended:
        log(says(deployed.recommended, out))  # the last line: the file to ship
    if failures:
        raise CheckFailed("; ".join(failures) + f" (details in {out}/report.md)")
    return rep, out


def _write_report(work, rep, cfg):
    report.validate(rep)
    write_json(work / "report.json", rep)
    write_text(work / "report.md", report.markdown(rep))
    write_text(work / "config.yaml", to_yaml(cfg))
    for name, plot in (("tradeoff.png", report.plot_tradeoff), ("sweep.png", report.plot_sweep)):
        try:
            plot(rep, work / name)
        except Exception as e:  # noqa: BLE001 - a figure is not worth the run: the report holds its numbers
            print(f"(no {name}: {first_line(e)})")


def _report(cfg, p, schedule, live, deployed=None, failed=None):
    """report.json's content from what the run computed so far (`live`); `failed`: the stage that failed and why,
    for the partial report a failure leaves in the work folder."""
    ctx = distributed.current()
    deployed = deployed or Deployed()
    model, records, input_shape = live["model"], live["records"], live["input_shape"]
    dense_costs, result = live["dense_costs"], live.get("result")
    pruned_costs = live.get("pruned_costs") or count(model, input_shape)
    kept = [r for r in records if not r.get("rolled_back")]  # a step rolled back is in the curve, not the model
    pruned_acc = live.get("pruned_acc", kept[-1]["accuracy"] if kept else None)
    budget = live.get("budget")
    failures = list(deployed.failures)
    target = p.target
    if result is not None and result.latency is not None:  # measured against the dense model at the end of prune()
        lat = result.latency
        target, achieved, hit = Target("latency", lat["reduction"], lat.get("budget_ms")), lat["achieved"], lat["hit"]
        window = "measured pruned <= measured dense/X*1.03"
    elif target.metric == "latency":
        achieved, hit, window = None, False, "measured pruned <= measured dense/X*1.03"
    else:
        before, after = getattr(dense_costs, target.metric), getattr(pruned_costs, target.metric)
        achieved, hit = before / after, target_hit(after, before, target.reduction, budget)
        window = ("dense/X*0.9 <= pruned <= dense/X*1.03" if budget is None else "a floor: pruned <= dense/X*1.03"
                  if budget.floor else "none: as far as the accuracy budget allows")
    spent = _budget(budget, records, live, pruned_acc) if budget is not None else None
    if failed:
        failures.append(f"{failed['stage']} failed: {failed['error']}")
    elif spent is not None and spent["within"] is False:
        failures.append(f"accuracy budget missed: {spent['drop_points']:.2f} points below dense on {cfg['data']}'s "
                        f"evaluation set, over --max-accuracy-drop {budget.max_drop:g}")
    if not failed and not hit:
        asked = f"<= {target.budget_ms:g} ms" if target.reduction is None else f"/ {target.reduction:g}"
        got = "not measured" if achieved is None else f"got / {achieved:.3f}"
        failures.append(f"target {target.metric} {asked} missed: {got}")
    rep = {
        "schema_version": 1, "tool": report.tool(),
        "model": {"spec": cfg["model"], "input_shape": input_shape, "input_shape_from": p.data.shape_from,
                  "checkpoint": str(p.checkpoint) if p.checkpoint else None,
                  "num_classes": _classes(model)},
        "data": {"spec": cfg["data"], "real": p.data.real, **_skipped(p.data)},
        "dense": _cost(dense_costs, live["dense_acc"]),
        "pruned": dict(_cost(pruned_costs, pruned_acc), accuracy_before_finetune=kept[-1]["accuracy"]
                       if kept else None),
        "reduction": {"macs": dense_costs.macs / pruned_costs.macs, "params": dense_costs.params / pruned_costs.params},
        "target": {"metric": target.metric, "reduction": target.reduction, "achieved": achieved, "hit": hit,
                   **({"budget_ms": target.budget_ms} if target.budget_ms else {}),
                   "window": window, **({"latency": result.latency} if result is not None and result.latency else {})},
        "alignment": p.alignment or {"round_to": schedule.round_to, "source": "option"},
        "threads": p.threads or {"threads": None, "source": "not resolved"},
        "criterion": {"name": p.criterion.name, "options": dict(p.criterion.options, ranking=cfg["ranking"],
                                                                calib_batches=cfg["calib_batches"])},
        "schedule": {"flowchart": "one-shot" if schedule.steps == 1 and schedule.finetune_iters == 0 else "entwined",
                     **schedule.__dict__, "augment": p.data.augmented if p.data.real else None,
                     "training": dict(_training(schedule, ctx.device),
                                      **({"teacher_logits": result.teacher_logits}
                                         if result is not None and result.teacher_logits else {}),
                                      **({"auto": p.precision} if p.precision else {}))},
        "steps": records,
        "layers": report.layer_table(dense_costs, pruned_costs),
        "exports": deployed.exports, "latency": deployed.latency, "deployables": deployed.deployables,
        **({"recommended": deployed.recommended} if deployed.recommended else {}),
        **({"accuracy_budget": spent} if spent is not None else {}),
        **({"sweep": {"points": live["sweep"], "front": [q["reduction"] for q in front(live["sweep"])]}}
           if live.get("sweep") else {}),
        "checks": {"passed": not failures, "failures": failures},
        "timings": live.get("timings", {}), "convention": CONVENTION,
        "distributed": {"world_size": ctx.world, "backend": ctx.backend, "device": str(ctx.device),
                        "sync_bn": ctx.sync_bn},
        "environment": report.environment((p.threads or {}).get("threads") or bench.default_threads()),
    }
    if budget is not None and not budget.floor:
        rep["target"]["reduction"] = None  # 2x MACs only set the steps' ratio
    if failed:
        rep["failed"] = failed
    return rep


def _budget(budget, records, live, pruned_acc):
    """report.json's accuracy_budget: the budget, where the steps stopped and why, and the drop on the evaluation
    set (within: None until the final accuracy is measured) beside the held-out estimate."""
    judged = [r for r in records if r.get("judged")]
    drop = None if pruned_acc is None else 100 * (budget.reference - pruned_acc)
    return dict(budget.describe(), steps_beyond_floor=len([r for r in judged if not r.get("rolled_back")]),
                rolled_back=any(r.get("rolled_back") for r in records),
                stop=next((r["stop"] for r in reversed(records) if r.get("stop")), None),
                drop_points=drop, within=None if drop is None else drop <= budget.max_drop + 1e-9,
                holdout_accuracy=live.get("holdout"))


def _skipped(data):
    """Unreadable images skipped while loading (image folders), when any were."""
    found = data.skipped.summary() if getattr(data, "skipped", None) is not None else {"count": 0}
    return {"skipped_images": found} if found["count"] else {}


def _clone(model):
    import copy

    return copy.deepcopy(model).eval()


def _classes(model):
    from .models.specs import _num_outputs

    return _num_outputs(model)


def _cost(c, acc):
    return {"macs": c.macs, "params": c.params, "other_ops": c.other_ops, "accuracy": acc}


def _fmt(acc):
    return "n/a" if acc is None else f"{acc:.4f}"
