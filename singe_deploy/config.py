"""Every `compress` option in one table: CLI flags, YAML keys and validation come from it.

A YAML config may hold any option (keys with '_' or '-'); flags given on the command line override
it. Unknown keys, wrong types and malformed files are bad input (exit 2, one line).
"""
from __future__ import annotations

import argparse
import difflib
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Option:
    name: str
    type: str  # str, int, float, bool, ints, strs
    default: object
    help: str
    choices: tuple | None = None


OPTIONS = [
    Option("model", "str", "builtin:resnet20", "model spec: builtin:NAME, torchvision:NAME, timm:NAME, file.py:factory"),
    Option("checkpoint", "str", "auto",
           "state dict to load; 'auto' = the shipped baseline for builtin:resnet20 or builtin:resnet56 on "
           "fashion-mnist, else random init; "
           "'none' = random init; 'asset:NAME' = a file shipped with singe-deploy"),
    Option("pretrained", "bool", False, "load the model zoo's pretrained weights (needs internet)"),
    Option("trust_checkpoint", "bool", False, "allow checkpoints that unpickle code (only for files you trust)"),
    Option("data", "str", "fashion-mnist", "data spec: fashion-mnist, imagefolder:DIR, synthetic"),
    Option("data_dir", "str", None, "folder with the Fashion-MNIST IDX files"),
    Option("input_shape", "ints", None, "model input as 1,C,H,W (default: Fashion-MNIST's 28x28 for builtin and "
           "file models; an image folder's most common image size, or a zoo model's own size where the images are "
           "larger or the model takes no other; else the model's own size)"),
    Option("num_classes", "int", None, "classes of the model's head (default: the data's)"),
    Option("batch_size", "int", 128, "training, calibration and parity batch size"),
    Option("train_limit", "int", None, "use only the first N training samples"),
    Option("val_limit", "int", None, "use only the first N validation samples"),
    Option("augment", "str", "auto", "augment the fine-tuning data: random flip and 2-pixel shift (Fashion-MNIST), "
           "random resized crop and flip (image folders); auto = off for Fashion-MNIST, where fine-tuning without it "
           "was more accurate and lets distillation compute the dense model's logits once (docs/training.md), on "
           "for image folders", ("auto", "on", "off")),
    Option("criterion", "str", "auto", "channel criterion; auto = singe on real data, l2 on synthetic data (random "
           "labels give data-driven scores no signal)", ("auto", "singe", "l1", "l2", "taylor", "hessian", "bn", "random")),
    Option("singe_steps", "int", 8, "SInGE: steps m along the path (forward/backward passes per batch; one on the "
           "frozen path, whatever m)"),
    Option("singe_norm", "int", 2, "SInGE: the p of the norms", (1, 2)),
    Option("singe_path", "str", "frozen", "SInGE: units moved along mu together; frozen = each unit's own path with "
           "its gradient held at mu = 1 (one pass per batch, Taylor's cost; Spearman 0.93-0.95 against the exact unit "
           "path on three models); unit = exact (m passes per channel)", ("frozen", "unit", "group", "network")),
    Option("singe_elementwise", "bool", False, "SInGE: ||mu W (*) grad||_p instead of ||mu W|| ||grad||"),
    Option("singe_rule", "str", "riemann", "SInGE: quadrature of the path integral (right Riemann sum or "
           "Gauss-Legendre)", ("riemann", "gauss")),
    Option("singe_variant", "str", "spec", "SInGE: the score; spec = ||mu W|| ||grad|| integrated (the paper's); "
           "completeness = |integral of <W, grad>|, the estimated loss change of removing the unit; removal = "
           "the measured loss change of removing it (forward passes only)", ("spec", "completeness", "removal")),
    Option("singe_replicas", "int", 8, "SInGE: units scored per pass on the unit path (completeness) and for "
           "removal: the calibration batch repeated N times, one unit scaled in each copy"),
    Option("singe_batch_steps", "str", "auto",
           "SInGE: path points per vmapped pass, N or auto (1 on CPU; on CUDA the faster way, timed on the first batch)"),
    Option("macs_reduction", "float", None, "prune until MACs <= dense / X (default 2 when no target is given)"),
    Option("params_reduction", "float", None, "prune until params <= dense / X"),
    Option("latency_reduction", "float", None, "prune until the measured latency <= dense / X, on the --target's "
           "backend (onnx: onnxruntime on this CPU; torch: PyTorch on --device) at --latency-batch"),
    Option("latency_budget_ms", "float", None, "prune until the measured latency <= T ms (as --latency-reduction)"),
    Option("latency_batch", "int", 1, "batch size latency targets are timed at"),
    Option("latency_unit", "str", "layer", "what a latency table times: layer = each conv/linear layer a "
           "narrowing changes, alone; model = the whole model, interleaved with the dense one", ("layer", "model")),
    Option("latency_table", "str", None, "latency table file for latency targets: read when it was measured for "
           "this model, input shape, backend, device, batch and threads, else measured and written there "
           "(default: a file in ~/.cache/singe-deploy/latency)"),
    Option("max_accuracy_drop", "float", None, "prune as far as an accuracy budget allows (points, 0 to 100): the "
           "target becomes a floor (none when no target is given) and pruning goes on in steps of the same ratio while "
           "the accuracy on --holdout training data, after each step's fine-tuning, stays within P points of the dense "
           "model's; a step past it is rolled back and half a step tried instead (real data only)"),
    Option("sweep", "floats", None, "prune to each of these MACs reductions in one entwined run, one step each, and "
           "fine-tune every step's model on its own: one model per reduction in OUT/sweep/ and sweep.png, accuracy "
           "against measured latency (e.g. 1.5,2,3,4; the run's pruned.pt is the last)"),
    Option("holdout", "float", 0.1, "fraction of the training data held out of fine-tuning and calibration to judge "
           "--max-accuracy-drop's steps by (the same samples for every seed)"),
    Option("steps", "int", 4, "pruning steps S of the entwined flowchart"),
    Option("finetune_iters", "int", 150, "fine-tuning iterations K after each pruning step"),
    Option("epochs", "float", 3.0, "epochs E of final fine-tuning"),
    Option("lr", "float", 0.05, "fine-tuning learning rate (cosine schedule)"),
    Option("weight_decay", "float", 5e-4, "fine-tuning weight decay (SGD, not on biases and norms)"),
    Option("momentum", "float", 0.9, "fine-tuning SGD momentum (Nesterov when > 0)"),
    Option("label_smoothing", "float", 0.0, "fine-tuning cross-entropy label smoothing"),
    Option("distill", "bool", True, "fine-tune against the dense model's logits too (knowledge distillation; "
           "--no-distill: cross-entropy only)"),
    Option("distill_t", "float", 4.0, "distillation temperature T"),
    Option("distill_alpha", "float", 0.5, "distillation weight: alpha x T^2 x KL + (1 - alpha) x cross-entropy"),
    Option("amp", "str", "auto", "fine-tuning mixed precision: auto = bf16 autocast on CUDA (fp16 where the GPU "
           "lacks bf16); on a CPU, bf16 or fp32, whichever trains faster in a short measurement (bf16 tried only "
           "with avx512_bf16 or amx_bf16); fp16 (CUDA only) trains with a gradient scaler",
           ("auto", "off", "bf16", "fp16")),
    Option("channels_last", "str", "auto", "fine-tuning memory format: auto = channels-last on CUDA; on a CPU, "
           "whichever trains faster in the same measurement as --amp auto",
           ("auto", "on", "off")),
    Option("ranking", "str", "global", "how channels are allocated to layers: global = across groups, scores "
           "divided by the group mean; raw = across groups, scores as they are; cost = across groups, score per "
           "MAC (per param for a params target) a channel costs; local = the same fraction of every group",
           ("global", "raw", "cost", "local")),
    Option("round_to", "str", "auto", "keep every pruned channel count a multiple of N (1: any count); auto = the "
           "alignment that runs fastest on the --target, measured by a short probe of the model's convolutions and "
           "cached (TensorRT: 8, or 32 with int8)"),
    Option("narrow_layers", "str", "halve", "layers narrower than twice --round-to: halve the alignment for them until "
           "it fits twice (they can be pruned, possibly off the fastest kernels) or keep them whole (every kept "
           "count aligned; the other layers lose more)", ("halve", "keep")),
    Option("max_layer_ratio", "float", 0.9, "never remove more than this fraction of a layer's channels"),
    Option("calib_batches", "int", 4, "calibration batches B for data-driven criteria"),
    Option("calib_samples", "int", None, "calibration samples at most (default: all of the calibration batches, "
           "except when scoring on a CPU: as many as cost about 4 TMACs of the criterion's passes, about a "
           "minute for a resnet50 on 2 cores)"),
    Option("step_eval", "bool", True, "evaluate accuracy after every pruning step (off: after the last only)"),
    Option("ignore_layers", "strs", None, "module names never pruned (the classifier always is)"),
    Option("target", "str", "onnx", "deployment target", ("onnx", "torch", "trt")),
    Option("device", "str", "cpu", "device for torch-target latency", ("cpu", "cuda")),
    Option("cuda_graph", "bool", False, "trt, or torch on cuda: time CUDA-graph replay instead of each enqueue"),
    Option("trt_precision", "str", "fp32", "TensorRT engine precision", ("fp32", "fp16")),
    Option("trt_tf32", "bool", True, "TensorRT fp32 engines may use TF32 tensor cores (recorded in the report)"),
    Option("trt_workspace_gb", "float", 4.0, "TensorRT builder workspace limit in GiB"),
    Option("trt_timing_cache", "str", None, "TensorRT timing cache file, read and updated (speeds up rebuilds)"),
    Option("quantize", "strs", None, "also write the pruned model as pruned.fp16.onnx and/or pruned.int8.onnx "
           "(none, fp16, int8 or fp16,int8), each timed and its accuracy measured by its runtime (with --target trt: "
           "an engine built from each, int8 from the QDQ graph); int8 calibrates on the scoring batches (default: none)"),
    Option("quantize_method", "str", "minmax", "int8 calibration method", ("minmax", "entropy", "percentile")),
    Option("opset", "int", 18, "ONNX opset (>= 18)"),
    Option("quant_top1", "float", 0.95, "smallest top-1 agreement of a quantized file (int8, fp16) with the pruned "
           "fp32 file over the validation set accepted (real data only)"),
    Option("quant_accuracy_drop", "float", 0.01, "largest accuracy drop of a quantized file against the pruned fp32 "
           "file accepted (absolute, 0.01 = 1 point; real data only)"),
    Option("batch_sizes", "ints", None, "latency batch sizes, e.g. 1,8 (default: 1,8,32 for trt, else 1); "
           "the TensorRT profile spans them"),
    Option("threads", "str", "auto", "threads for latency: auto = for onnxruntime, the count (1, 2, 4, ... up to the "
           "physical cores) the dense model runs fastest with at the latency batch, measured and cached; torch and "
           "TensorRT keep their own default; or N"),
    Option("latency_iters", "int", 50, "at least this many timed iterations (latency tables: at most 30 of them)"),
    Option("latency_seconds", "float", 2.0, "and at least this many seconds (latency tables: at most 0.5)"),
    Option("parity_atol", "float", 1e-3, "largest max-abs-diff of logits accepted (fp32)"),
    Option("parity_rtol", "float", 1e-5, "relative tolerance on top of it: an output passes where |diff| <= "
           "parity_atol + parity_rtol x the sample's largest |output|, for models with large outputs"),
    Option("parity_top1", "float", 0.99, "smallest top-1 agreement accepted (classes scored within --parity-atol of the best count as agreeing)"),
    Option("parity_batches", "int", 4, "validation batches used for parity"),
    Option("parity_samples", "int", None, "parity samples at most (default: all of the parity batches, except "
           "for a CPU target: as many as about 2 TMACs of the parity passes afford, at least 8; a vit_b_16 at "
           "224 gets 18)"),
    Option("export", "bool", True, "export, check parity and measure latency (off: accuracy and costs only)"),
    Option("seed", "int", 0, "seed for data order, init and random scores"),
    Option("train_device", "str", "auto", "device for scoring and fine-tuning (auto: CUDA when present; "
           "under torchrun each rank's own GPU)", ("auto", "cpu", "cuda")),
    Option("nproc", "int", 1, "processes to launch with torchrun on this machine (one per GPU, or CPU "
           "processes with gloo); 1: this process only"),
    Option("dist_backend", "str", "auto", "torch.distributed backend under torchrun (auto: nccl with GPUs, "
           "else gloo)", ("auto", "nccl", "gloo")),
    Option("dist_timeout", "float", 1800.0, "seconds a rank waits for the others before the run fails"),
    Option("dist_sync_bn", "bool", True, "under torchrun, BatchNorm statistics over all ranks' samples while "
           "fine-tuning (off: each rank's own, fewer collectives, results differ from one process)"),
    Option("out", "str", None, "output folder (default: singe-deploy-out/<model>-<time>)"),
    Option("force", "bool", False, "replace the output folder if it exists"),
    Option("resume", "bool", False, "continue an interrupted run into the same --out"),
    Option("checkpoint_minutes", "float", 5.0, "save the resume state at least this often during fine-tuning "
           "(minutes; 0: every iteration), besides after every pruning step"),
]
BY_NAME = {o.name: o for o in OPTIONS}
TARGETS = ("macs_reduction", "params_reduction", "latency_reduction", "latency_budget_ms")  # one of them


def defaults():
    return {o.name: o.default for o in OPTIONS}


def _convert(opt, value, where):
    def bad(kind):
        return UserError(f"{where} '{opt.name}' must be {kind}, got {value!r}; fix the value")

    if value is None:
        return None
    t = opt.type
    if t == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad("true or false")
    if t in ("int", "float"):
        if isinstance(value, bool):
            raise bad(f"a{'n integer' if t == 'int' else ' number'}")
        try:
            num = float(value)
            if t == "int":
                if num != int(num):
                    raise ValueError
                value = int(num)
            else:
                value = num
        except (TypeError, ValueError):
            raise bad("an integer" if t == "int" else "a number") from None
    elif t == "str":
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise bad("a string")
        value = str(value)
    elif t == "ints":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad("a list of integers like 1,8")
        try:
            value = [int(str(v).strip()) for v in items]
        except ValueError:
            raise bad("a list of integers like 1,8") from None
        if any(v < 1 for v in value):
            raise bad("positive integers")
    elif t == "floats":
        items = str(value).split(",") if isinstance(value, (str, int, float)) else value
        try:
            value = [float(str(v).strip()) for v in items]
        except (TypeError, ValueError):
            raise bad("a list of numbers like 1.5,2,3") from None
    elif t == "strs":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise bad("a list of names")
        value = [str(v).strip() for v in items if str(v).strip()]
    if opt.choices and value not in opt.choices:
        raise UserError(f"{where} '{opt.name}' must be one of {', '.join(map(str, opt.choices))}, got {value!r}")
    return value


SHIPPED = Path(__file__).parent / "configs"  # the configs and budgets in the package (configs/ in a checkout)


def shipped(folder=""):
    """Names of the YAML files shipped in SHIPPED/folder: what `--config NAME` or `--budget NAME` may give."""
    return sorted(p.stem for p in (SHIPPED / folder).glob("*.yaml"))


def read_yaml(path, what, mapping_of, folder=None):
    """The top-level mapping of a YAML file ({} when empty), with one-line errors naming `what`. With `folder`,
    a path that does not exist but names a shipped file ('demo', 'ci.yaml') reads that file, so that an install
    from a wheel, which has no configs/ folder beside it, has them too."""
    import yaml

    path = Path(path)
    if (not path.is_file() and folder is not None and path.name == str(path) and path.suffix in ("", ".yaml")
            and path.stem in shipped(folder)):
        path = SHIPPED / folder / f"{path.stem}.yaml"
    if not path.is_file():
        names = f" or name a shipped one: {', '.join(shipped(folder))}" if folder is not None else ""
        raise UserError(f"{what} {path} does not exist; fix the path{names}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise UserError(f"{what} {path} is not valid YAML{_where(e)}; fix its syntax") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text file; pass a YAML file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{what} {path} must be a mapping of {mapping_of}, not {type(raw).__name__}")
    return raw


def _where(e):
    """' (line 3: expected ',' or ']', but got ':', in a flow sequence that starts on line 2)' for a YAML error."""
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    if mark is None:
        return ""
    what = getattr(e, "problem", None) or "error"
    text = f" (line {mark.line + 1}: {what}"
    if context is not None and context.line != mark.line and getattr(e, "context", None):
        text += f", {e.context.replace('while scanning', 'in').replace('while parsing', 'in')} that starts on " \
                f"line {context.line + 1}"
    return text + ")"


def load_yaml(path):
    """The options in a YAML config file, validated."""
    raw = read_yaml(path, "config file", "option: value", folder="")
    out = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name not in BY_NAME:
            close = difflib.get_close_matches(name, BY_NAME, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown config key '{key}' in {path}{hint}; see 'singe-deploy compress --help'")
        out[name] = _convert(BY_NAME[name], value, f"config key in {path}:")
    return out


def add_arguments(parser, options=OPTIONS, defaults=None):
    """One flag per option; defaults are suppressed so only flags the user gave override the config. `defaults`:
    a command's own defaults for some options, shown in its help instead of the option table's."""
    parser.add_argument("--config", metavar="FILE", help="YAML file holding any of these options, or the name of a "
                        f"shipped one ({', '.join(shipped())})")
    for o in options:
        flag = "--" + o.name.replace("_", "-")
        if o.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=_help(o, defaults))
        else:
            parser.add_argument(flag, default=argparse.SUPPRESS, metavar=_metavar(o), help=_help(o, defaults))


def _help(o, defaults=None):
    """The option's help with its default said once (helps that explain their default keep their own words)."""
    if "default" in o.help:
        return o.help
    value = (defaults or {}).get(o.name, o.default)
    default = ("on" if value else "off") if o.type == "bool" else "none" if value is None else value
    return f"{o.help} (default: {default})"


METAVARS = {"model": "SPEC", "data": "SPEC", "checkpoint": "FILE", "data_dir": "DIR", "out": "DIR",
            "input_shape": "1,C,H,W", "ignore_layers": "NAME[,NAME]", "trt_timing_cache": "FILE",
            "singe_batch_steps": "N|auto", "round_to": "N|auto",
            "threads": "N|auto"}


def _metavar(o):
    if o.choices:
        return "{" + ",".join(map(str, o.choices)) + "}"
    if o.name in METAVARS:
        return METAVARS[o.name]
    return {"ints": "N[,N]", "floats": "X[,X]", "strs": "NAME[,NAME]", "int": "N", "float": "X"}.get(o.type, "VALUE")


def resolve(args, base=None):
    """defaults < `base` (a command's own defaults) < YAML config < command-line flags; returns a validated
    dict of every option."""
    cfg = dict(defaults(), **(base or {}))
    given = vars(args)
    if given.get("config"):
        cfg.update(load_yaml(given["config"]))
    for o in OPTIONS:
        if o.name in given:
            value = given[o.name]
            if isinstance(value, str) and value.lower() == "none" and o.type != "bool" and o.name != "checkpoint":
                value = None
            cfg[o.name] = _convert(o, value, "option")
    return validate(cfg)


def validate(cfg):
    """Checks across options; fills the default target."""
    unknown = set(cfg) - set(BY_NAME)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(sorted(unknown))}")
    given = [k for k in TARGETS if cfg[k] is not None]
    if len(given) > 1:
        raise UserError(f"give one target, not {' and '.join('--' + k.replace('_', '-') for k in given)}")
    budget = cfg["max_accuracy_drop"]
    if budget is not None:
        accuracy_points(budget)
        if cfg["data"] == "synthetic":
            raise UserError("--max-accuracy-drop needs real data to measure accuracy on, and --data synthetic has "
                            "none; pass --data fashion-mnist or imagefolder:DIR")
        if not 0 < cfg["holdout"] < 1:
            raise UserError(f"--holdout is a fraction of the training data, above 0 and below 1, got {cfg['holdout']:g}")
        if cfg["finetune_iters"] == 0:
            raise UserError("--max-accuracy-drop judges each step after its fine-tuning; give --finetune-iters > 0")
    if cfg["sweep"] is not None:
        _check_sweep(cfg, given, budget)
        cfg["macs_reduction"] = cfg["sweep"][-1]
    if not given and budget is None and cfg["macs_reduction"] is None:  # with a budget and no target: no floor
        cfg["macs_reduction"] = 2.0
    if cfg["latency_budget_ms"] is not None and not cfg["latency_budget_ms"] > 0:
        raise UserError(f"--latency-budget-ms must be > 0, got {cfg['latency_budget_ms']:g}")
    for key in ("macs_reduction", "params_reduction", "latency_reduction"):
        if cfg[key] is not None and not cfg[key] > 1:
            raise UserError(f"--{key.replace('_', '-')} must be > 1 (pruned = dense / X), got {cfg[key]:g}")
    positive = ("batch_size", "latency_batch", "steps", "calib_batches", "latency_iters", "parity_batches", "singe_steps", "nproc",
                "singe_replicas", "calib_samples", "parity_samples")
    for key in positive:
        if cfg[key] is not None and cfg[key] < 1:
            raise UserError(f"--{key.replace('_', '-')} must be >= 1, got {cfg[key]}")
    bs = cfg["singe_batch_steps"]
    if bs != "auto" and not (str(bs).isdigit() and int(bs) >= 1):
        raise UserError(f"--singe-batch-steps must be 'auto' or a positive integer, got {bs!r}")
    for key in ("finetune_iters", "epochs", "lr", "latency_seconds", "parity_atol", "parity_rtol"):
        if cfg[key] < 0:
            raise UserError(f"--{key.replace('_', '-')} must be >= 0, got {cfg[key]}")
    for key, low, high in (("label_smoothing", 0, 1), ("momentum", 0, 1), ("distill_alpha", 0, 1.000001)):
        if not low <= cfg[key] < high:
            raise UserError(f"--{key.replace('_', '-')} must be in [{low}, {min(high, 1):g}"
                            f"{']' if high > 1 else ')'}, got {cfg[key]:g}")
    if cfg["weight_decay"] < 0 or cfg["distill_t"] <= 0:
        raise UserError("--weight-decay must be >= 0 and --distill-t > 0")
    cfg["round_to"] = round_to(cfg["round_to"])
    cfg["threads"] = threads(cfg["threads"])
    if not 0 < cfg["max_layer_ratio"] < 1:
        raise UserError(f"--max-layer-ratio must be between 0 and 1, got {cfg['max_layer_ratio']}")
    if cfg["input_shape"] is not None and len(cfg["input_shape"]) != 4:
        raise UserError(f"--input-shape must be 1,C,H,W (4 numbers), got {','.join(map(str, cfg['input_shape']))}")
    if cfg["cuda_graph"] and not (cfg["target"] == "trt" or (cfg["target"] == "torch" and cfg["device"] == "cuda")):
        raise UserError("--cuda-graph times CUDA-graph replay on a GPU; use it with --target trt or "
                        "--target torch --device cuda")
    from .deploy.quantize import parse_precisions

    cfg["quantize"] = parse_precisions(",".join(cfg["quantize"] or []) or "none")
    if cfg["quantize"] and (cfg["target"] == "torch" or not cfg["export"]):
        raise UserError("--quantize writes ONNX files (and, with --target trt, engines from them); use it with "
                        "--target onnx or trt and --export")
    if cfg["batch_sizes"] is None:
        cfg["batch_sizes"] = [1, 8, 32] if cfg["target"] == "trt" else [1]
    if cfg["opset"] < 18:
        raise UserError(f"--opset {cfg['opset']} is too old for the exporter; use 18 or newer")
    if cfg["checkpoint_minutes"] < 0:
        raise UserError(f"--checkpoint-minutes must be >= 0, got {cfg['checkpoint_minutes']:g}")
    if not 0 <= cfg["quant_top1"] <= 1 or not 0 <= cfg["quant_accuracy_drop"] <= 1:
        raise UserError("--quant-top1 and --quant-accuracy-drop must be between 0 and 1")
    if cfg["dist_timeout"] <= 0:
        raise UserError(f"--dist-timeout must be > 0 seconds, got {cfg['dist_timeout']:g}")
    if cfg["trt_workspace_gb"] <= 0:
        raise UserError(f"--trt-workspace-gb must be > 0, got {cfg['trt_workspace_gb']:g}")
    return cfg


def accuracy_points(drop):
    """An accuracy budget (--max-accuracy-drop of compress and check) is points below dense, 0 to 100."""
    if not 0 <= drop <= 100:
        raise UserError(f"--max-accuracy-drop is in accuracy points, 0 to 100, got {drop:g}")
    return drop


def _check_sweep(cfg, given, budget):
    xs = cfg["sweep"]
    if len(xs) < 2 or any(not x > 1 for x in xs) or len(set(xs)) < len(xs):
        raise UserError(f"--sweep takes two or more different reductions above 1 (pruned = dense / X), got "
                        f"{','.join(f'{x:g}' for x in xs)}")
    echoed = given == ["macs_reduction"] and cfg["macs_reduction"] == max(xs)  # a sweep's saved config.yaml
    if budget is not None or (given and not echoed):
        raise UserError("--sweep gives the MACs reductions to prune to; drop --max-accuracy-drop and the other "
                        "targets, or drop --sweep")
    if cfg["nproc"] > 1:
        raise UserError("--sweep runs in one process; drop --nproc")
    if cfg["data"] == "synthetic":
        raise UserError("--sweep fine-tunes each point and draws accuracy against latency, which needs real data; "
                        "pass --data fashion-mnist or imagefolder:DIR")
    cfg["sweep"] = sorted(xs)


def round_to(value):
    """--round-to's value: 'auto' or a positive integer (none: 1, any count)."""
    if value is None:
        return 1
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--round-to must be 'auto' or a positive integer, got {value!r}")
    return int(text)


def threads(value):
    """--threads' value: 'auto' or a positive integer (none: auto)."""
    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        return "auto"
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--threads must be 'auto' or a positive integer, got {value!r}")
    return int(text)


# where a run goes and whether it replaces or resumes one: not part of what a saved config reruns
PER_RUN = ("out", "force", "resume")


def to_yaml(cfg):
    """Every option but PER_RUN's, so `--config` of a run's config.yaml reruns it into a new folder."""
    import yaml

    header = ("# singe-deploy compress --config this-file [--out DIR] reruns this run (output folder, --force and "
              "--resume are not saved)\n")
    return header + yaml.safe_dump({k: cfg[k] for k in BY_NAME if k not in PER_RUN}, sort_keys=False)
