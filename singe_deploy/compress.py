"""`compress`: load, score, prune (entwined), fine-tune, export, check, time, report.

Everything that can be bad input is checked before the first minute of work and before anything
is written. Work happens in a hidden sibling folder (<out>/../.<name>.partial) that is renamed to
<out> at the end; a checkpoint after each pruning step there lets `--resume` pick a run up again.
"""
from __future__ import annotations

import importlib.util
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from . import bench, distributed, report
from .config import PER_RUN, to_yaml
from .deploy import Deployed, DeploySettings, deploy
from .errors import CheckFailed, UserError
from .files import partial
from .flops import CONVENTION, count
from .importance import make_criterion
from .models import is_dense_output, load_pruned, parse_spec, read_checkpoint, save_pruned, task_of
from .prune import Schedule, Target, check_reachable, in_window, prune
from .quantize import QUANTIZED
from .source import Source
from .train import evaluate
from .train import precision as train_precision
from .trt import EngineOptions

STATE = "state.pt"


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
    if cfg["latency_budget_ms"]:
        return Target("latency", None, cfg["latency_budget_ms"])
    key = next(k for k in ("macs_reduction", "params_reduction", "latency_reduction") if cfg[k])
    return Target(key.split("_")[0], cfg[key])


def _timer(cfg, input_shape):
    """What a latency target is timed with (None for a MACs or params target)."""
    if not (cfg["latency_reduction"] or cfg["latency_budget_ms"]):
        return None
    from .latency import timer_for

    limits = dict(min_iters=min(cfg["latency_iters"], 30), min_seconds=min(cfg["latency_seconds"], 0.5))
    return timer_for(cfg["target"], input_shape, cfg["latency_batch"], cfg["device"], cfg["threads"], cfg["opset"],
                     engine=EngineOptions.from_config(cfg), **limits)


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
    if out.exists() and not cfg["force"] and main:
        raise UserError(f"output folder {out} exists; pass --force to replace it or choose another --out")
    _make(cfg, None)  # options checked before any loading
    target = _target(cfg)
    model, data, shape, checkpoint = Source.from_config(cfg).load(log)
    criterion = _make(cfg, data)
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
# SInGE (m = 8) on torchvision:resnet50 at 224 on 2 cores (docs/criteria.md); the demo model stays far below it
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
    free = PER_RUN + ("nproc", "dist_backend", "dist_timeout", "dist_sync_bn", "train_device")
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
        if p.target.metric != "latency":  # a latency target is checked against its table, once measured
            check_reachable(model, input_shape, p.target, schedule, _ignored(model, cfg["ignore_layers"]))
        p.timer = _timer(cfg, input_shape)  # an unsupported target is bad input, before any work
        state = _resume_state(cfg, work) if ctx.main else None
    except UserError as e:
        error = e
    distributed.agree(error)
    if ctx.active:  # rank 0's weights and resume state everywhere (no shared filesystem needed)
        distributed.broadcast_model(model)
        state = distributed.broadcast_object(
            (state, read_checkpoint(work / "checkpoint.pt")) if state is not None else None)
    elif state is not None:
        state = (state, None)
    if ctx.main:
        if state is None and work.exists():
            shutil.rmtree(work)
        parent_existed = work.parent.exists()
        work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(cfg, log, t_start, p, schedule, input_shape, state, dense_accuracy)
    except UserError:
        if ctx.main:
            shutil.rmtree(work, ignore_errors=True)
            if not parent_existed and not any(work.parent.iterdir()):
                work.parent.rmdir()
        raise
    except KeyboardInterrupt:
        if resume_hint:
            print(f"interrupted; to continue, rerun with the same options plus --resume --out {out}")
        raise


def _ignored(model, names):
    from .groups import default_ignored

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


def _run(cfg, log, t_start, p, schedule, input_shape, state, dense_accuracy=None):
    model, data, shape, out, work = p.model, p.data, p.shape, p.out, p.work
    target, criterion = p.target, p.criterion
    ctx = distributed.current()
    timings = {}
    dense_model = _clone(model)
    dense_costs = count(model, input_shape)
    if state:
        state, saved = state
        dense_acc = state["dense_accuracy"]
        model = load_pruned(work / "checkpoint.pt", saved)
        records, start, dense_channels = state["records"], state["step"], state["dense_channels"]
        log(f"resuming {work} after step {start}/{schedule.steps}")
    else:
        t = time.time()
        dense_acc = dense_accuracy if dense_accuracy is not None else evaluate(model, data.val) if data.real else None
        timings["evaluate_dense_s"] = round(time.time() - t, 2)
        records, start, dense_channels = [], 0, {}
        log(f"dense {cfg['model']}: {dense_costs.macs:,} MACs, {dense_costs.params:,} params, "
            f"accuracy {_fmt(dense_acc)}")
    ignored = _ignored(model, cfg["ignore_layers"])

    def checkpoint(step, m, recs, phase="prune"):
        save_pruned(m, work / "checkpoint.pt", cfg["model"], _classes(m), shape[0], input_shape)
        torch.save({"config": cfg, "step": step, "records": recs, "dense_accuracy": dense_acc, "phase": phase,
                    "dense_channels": dense_channels}, work / STATE)

    t = time.time()
    finetuned = state is not None and state.get("phase") == "finetuned"
    result = prune(model, input_shape, criterion, target, schedule, data, ignored, start, records,
                   checkpoint if ctx.main else None, log, finetuned, dense_channels, teacher=dense_model,
                   timer=p.timer, latency_table=cfg["latency_table"],
                   latency_unit=cfg["latency_unit"])
    records = result.steps
    timings["prune_s"] = round(time.time() - t - result.finetune_seconds, 2)
    timings["finetune_s"] = result.finetune_seconds
    acc_before = records[-1]["accuracy"] if records else None
    pruned_acc = evaluate(model, data.val) if data.real else None
    pruned_costs = count(model, input_shape)
    log(f"pruned: {pruned_costs.macs:,} MACs ({dense_costs.macs / pruned_costs.macs:.2f}x fewer), "
        f"{pruned_costs.params:,} params, accuracy {_fmt(pruned_acc)}")
    if not ctx.main:  # the last collective is behind us: rank 0 alone exports, measures and writes
        return None, out

    t = time.time()
    save_pruned(model, work / "pruned.pt", cfg["model"], _classes(model), input_shape[1], input_shape)
    deployed = deploy(dense_model, model, work / "pruned.pt", data, input_shape, work,
                      DeploySettings.from_config(cfg), {"dense": dense_costs, "pruned": pruned_costs}, cfg["model"],
                      log) if cfg["export"] else Deployed()
    exports, failures = deployed.exports, deployed.failures
    timings["export_and_latency_s"] = round(time.time() - t, 2)
    timings["total_s"] = round(time.time() - t_start, 2)

    if result.latency is not None:  # measured against the dense model at the end of prune()
        lat = result.latency
        target, achieved, hit = Target("latency", lat["reduction"]), lat["achieved"], lat["hit"]
        window = "measured pruned <= measured dense/X*1.03"
    else:
        before, after = getattr(dense_costs, target.metric), getattr(pruned_costs, target.metric)
        achieved, hit = before / after, in_window(after, before, target.reduction)
        window = "dense/X*0.9 <= pruned <= dense/X*1.03"
    if not hit:
        failures.append(f"target {target.metric} / {target.reduction:g} missed: got / {achieved:.3f}")
    rep = {
        "schema_version": 1, "tool": report.tool(),
        "model": {"spec": cfg["model"], "input_shape": input_shape,
                  "checkpoint": str(p.checkpoint) if p.checkpoint else None,
                  "num_classes": _classes(model)},
        "data": {"spec": cfg["data"], "real": data.real},
        "dense": _cost(dense_costs, dense_acc), "pruned": dict(_cost(pruned_costs, pruned_acc),
                                                              accuracy_before_finetune=acc_before),
        "reduction": {"macs": dense_costs.macs / pruned_costs.macs, "params": dense_costs.params / pruned_costs.params},
        "target": {"metric": target.metric, "reduction": target.reduction, "achieved": achieved, "hit": hit,
                   "window": window, **({"latency": result.latency} if result.latency else {})},
        "criterion": {"name": criterion.name, "options": dict(criterion.options, ranking=cfg["ranking"],
                                                              calib_batches=cfg["calib_batches"])},
        "schedule": {"flowchart": "one-shot" if schedule.steps == 1 and schedule.finetune_iters == 0 else "entwined",
                     **schedule.__dict__, "training": _training(schedule, ctx.device)},
        "steps": records,
        "layers": report.layer_table(dense_costs, pruned_costs),
        "exports": exports, "latency": deployed.latency, "deployables": deployed.deployables,
        "checks": {"passed": not failures, "failures": failures},
        "timings": timings, "convention": CONVENTION,
        "distributed": {"world_size": ctx.world, "backend": ctx.backend, "device": str(ctx.device),
                        "sync_bn": ctx.sync_bn},
        "environment": report.environment(cfg["threads"] or bench.default_threads()),
    }
    report.validate(rep)
    (work / "report.json").write_text(json.dumps(rep, indent=2))
    (work / "report.md").write_text(report.markdown(rep))
    (work / "config.yaml").write_text(to_yaml(cfg))
    for stale in (STATE, "checkpoint.pt"):
        (work / stale).unlink(missing_ok=True)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    files = {"onnx": ", dense.onnx, pruned.onnx", "trt": ", dense.onnx, pruned.onnx, dense.engine, pruned.engine"}
    quantized = "".join(f", {e['path']}" for e in exports if e.get("precision") in QUANTIZED)
    log(f"wrote {out}/ (report.md, report.json, pruned.pt{files.get(cfg['target'], '') if cfg['export'] else ''}"
        f"{quantized})")
    if failures:
        raise CheckFailed("; ".join(failures) + f" (details in {out}/report.md)")
    return rep, out


def _clone(model):
    import copy

    return copy.deepcopy(model).eval()


def _classes(model):
    from .models import _num_outputs

    return _num_outputs(model)


def _cost(c, acc):
    return {"macs": c.macs, "params": c.params, "other_ops": c.other_ops, "accuracy": acc}


def _fmt(acc):
    return "n/a" if acc is None else f"{acc:.4f}"
