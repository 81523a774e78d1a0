"""singe-deploy bench: latency of exported models on the device at hand, written as a latency file.

    singe-deploy bench OUT/pruned.onnx --batch-sizes 1,8 --out latency.json
    singe-deploy bench OUT/                 # dense.onnx and pruned.onnx of a compress output folder
    singe-deploy bench OUT/pruned.engine --backend tensorrt --cuda-graph
    singe-deploy bench OUT/pruned.pt --backend torch --device cuda

onnxruntime needs only numpy and onnxruntime here (no torch, torch-pruning or torchvision), so this runs
on a device that has nothing but the runtime. The latency file holds a device block and latency entries
in the report schema's form; `singe-deploy report merge` joins files from several devices.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..deploy.quantize import QUANTIZED
from ..errors import UserError, first_line
from ..files import onnx_metadata, write_atomic

BACKENDS = ("onnxruntime", "tensorrt", "torch")
SUFFIXES = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt", ".trt": "tensorrt", ".pt": "torch"}
VARIANTS = ("dense", "pruned")


def add_arguments(ap):
    ap.add_argument("artifacts", nargs="+", metavar="MODEL",
                    help="an .onnx file, a TensorRT engine (.engine/.plan), a pruned .pt, or a compress output "
                    "folder (its dense and pruned models)")
    ap.add_argument("--backend", choices=BACKENDS, help="default: from the file's suffix")
    ap.add_argument("--provider", choices=("cpu", "cuda", "tensorrt"), default="cpu",
                    help="onnxruntime execution provider (default: cpu)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch backend device (default: cpu)")
    ap.add_argument("--cuda-graph", action="store_true", help="tensorrt or torch on cuda: time CUDA-graph replay")
    ap.add_argument("--batch-sizes", default="1", metavar="N[,N]", help="batch sizes (default: 1)")
    ap.add_argument("--threads", type=int, metavar="N", help="intra-op threads (default: the count a compress "
                    "folder's report.json names, when written on this CPU; else physical cores)")
    ap.add_argument("--input-shape", metavar="1,C,H,W", help="needed only when the model's H/W are not fixed")
    ap.add_argument("--variant", choices=VARIANTS, help="dense or pruned (default: from the file's metadata "
                    "or name; a file that says neither counts as dense)")
    ap.add_argument("--model-name", metavar="NAME", help="the model's name in tables (default: from metadata or the folder)")
    ap.add_argument("--device-name", metavar="NAME", help="this device's name in tables (default: the host name)")
    ap.add_argument("--iters", type=int, default=50, metavar="N", help="at least this many timed iterations (default: 50)")
    ap.add_argument("--seconds", type=float, default=2.0, metavar="X", help="and at least this many seconds (default: 2)")
    ap.add_argument("--interleave", action="store_true",
                    help="time the files together, one call of each in turn, so that drift in the machine's speed "
                    "slows them alike and their ratios hold (onnxruntime and torch on the CPU; same input shape)")
    ap.add_argument("--out", metavar="FILE", help="write the latency file here (JSON)")


def _ints(text, what):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise UserError(f"{what} must be positive integers like 1,8; got '{text}'")
    return values


def expand(artifacts, backend):
    """Files to measure: folders become their dense/pruned models for the backend."""
    files = []
    for a in artifacts:
        p = Path(a)
        if not p.exists():
            raise UserError(f"{a} does not exist; pass an .onnx file, an engine, a pruned .pt or a compress folder")
        if p.is_dir():
            suffix = {"tensorrt": ".engine", "torch": ".pt"}.get(backend, ".onnx")
            names = [f"{v}{suffix}" for v in VARIANTS] + ([f"pruned.{q}{suffix}" for q in QUANTIZED]
                                                          if suffix in (".onnx", ".engine") else [])
            found = [p / n for n in names if (p / n).is_file()]
            if not found:
                raise UserError(f"{a} holds no dense{suffix} or pruned{suffix}; pass a file or a compress output "
                                "folder")
            files += found
        else:
            files.append(p)
    return files


def _backend_for(path, backend):
    guess = SUFFIXES.get(path.suffix.lower())
    if backend is None:
        if guess is None:
            raise UserError(f"cannot tell the backend of {path.name} from its suffix; pass --backend "
                            f"{'|'.join(BACKENDS)}")
        return guess
    if guess is not None and guess != backend:
        raise UserError(f"{path.name} is not a model for --backend {backend} (it is one for {guess})")
    return backend


def describe_model(path, meta, args):
    """Model name and variant: flags, then the file's metadata, then its name."""
    stem = path.name.split(".")[0]
    variant = args.variant or meta.get("variant") or next((v for v in VARIANTS if v in stem.lower()), None)
    assumed = variant is None
    name = args.model_name or meta.get("model")
    if not name:
        name = path.resolve().parent.name if stem in VARIANTS else stem
    return name, variant or "dense", assumed


def input_shape(declared, given, batches, path):
    """The 1,C,H,W shape to feed: the model's declared input with the batch left free, or --input-shape."""
    if given is not None:
        shape = _ints(given, "--input-shape")
        fixed = [d if isinstance(d, int) and d > 0 else None for d in declared] if declared else []
        if fixed and (len(fixed) != len(shape) or any(f is not None and f != s for f, s in
                                                      zip(fixed[1:], shape[1:]))):
            raise UserError(f"--input-shape {given} does not fit {path.name}, whose input is "
                            f"{','.join(str(d) for d in declared)}; fix --input-shape")
    else:
        if not declared or any(not isinstance(d, int) or d < 1 for d in declared[1:]):
            raise UserError(f"{path.name} has no fixed input size ({declared}); pass --input-shape 1,C,H,W")
        shape = [1] + list(declared[1:])
    batch = declared[0] if declared else None
    if isinstance(batch, int) and batch > 0 and any(b != batch for b in batches):
        raise UserError(f"{path.name} has a fixed batch size of {batch}; use --batch-sizes {batch} or export "
                        "with a dynamic batch")
    return shape


def engine_shape(info, args, path):
    """An engine's input as compress recorded it beside the engine (PATH.json), its batch left free when the
    engine's optimisation profile spans several batch sizes; a batch size outside that range is bad input."""
    shape, profile = info.get("input_shape"), info.get("profile")
    if not shape or not profile:
        return shape
    low, high = profile["min_batch"], profile["max_batch"]
    wanted = _ints(args.batch_sizes, "--batch-sizes")
    outside = [b for b in wanted if not low <= b <= high]
    if outside:
        raise UserError(f"{path.name} was built for batch sizes {low} to {high}; --batch-sizes "
                        f"{','.join(map(str, outside))} is outside them: choose sizes in that range or rebuild the "
                        "engine (compress --batch-sizes)")
    return ([None] if low != high else [low]) + list(shape[1:])


def runner_for(path, backend, args):
    """(runner, declared input shape, metadata the file carries) for one file."""
    from ..measure import bench

    if backend == "onnxruntime":
        try:
            r = bench.OnnxRuntime(path, args.threads, args.provider, spinning=not getattr(args, "interleave", False))
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise UserError(f"onnxruntime cannot load {path}: {first_line(e)}; is it a valid ONNX file?") from None
        return r, r.input_shape, onnx_metadata(path)
    if backend == "tensorrt":
        _need_cuda_torch("the tensorrt backend")
        from ..deploy import trt

        record = Path(str(path) + ".json")
        info = json.loads(record.read_text()) if record.is_file() else {}
        return trt.TensorRT(path, args.cuda_graph), engine_shape(info, args, path), {}
    if args.device == "cuda":
        _need_cuda_torch("--device cuda")
    else:
        _need_torch("the torch backend")
    from ..models.specs import load_pruned, read_checkpoint

    obj = read_checkpoint(path)
    model = load_pruned(path, obj)
    runner = bench.Torch(model, args.device, args.threads, args.cuda_graph)
    return runner, obj.get("input_shape"), {"model": obj["spec"], "variant": "pruned"}


def _need_torch(what):
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise UserError(f"{what} needs PyTorch; pip install torch, or measure the .onnx with onnxruntime") from None


def _need_cuda_torch(what):
    _need_torch(what)
    import torch

    if not torch.cuda.is_available():
        raise UserError(f"{what} needs a CUDA GPU and none was found; measure the .onnx with onnxruntime "
                        "--provider cpu")


def measure_files(args):
    """Latency file content for the artifacts in `args` (one entry per file and batch size)."""
    from ..measure import bench, device

    batches = _ints(args.batch_sizes, "--batch-sizes")
    for key in ("iters", "threads"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            raise UserError(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.seconds < 0:
        raise UserError(f"--seconds must be >= 0, got {args.seconds:g}")
    entries, models, notes, timed = [], [], [], []
    if args.threads is None:
        args.threads, why = threads_from_reports(args.artifacts)
        notes += [why] if why else []
    for path in expand(args.artifacts, args.backend):
        backend = _backend_for(path, args.backend)
        runner, declared, meta = runner_for(path, backend, args)
        name, variant, assumed = describe_model(path, meta, args)
        if assumed:
            notes.append(f"{path.name}: neither its metadata nor its name says dense or pruned; counted as dense "
                         "(pass --variant)")
        shape = input_shape(declared, args.input_shape, batches, path)
        precision = meta.get("precision") or next((q for q in QUANTIZED if f".{q}." in path.name), None)
        quantized = precision in QUANTIZED  # a --quantize file, from its metadata or its name
        precision = precision or ("fp32" if backend == "onnxruntime" else None)
        models.append({"path": str(path), "name": name, "variant": variant, "backend": backend,
                       **({"precision": precision} if precision else {}),
                       "input_shape": shape, "runner": runner.info(), **({"metadata": meta} if meta else {})})
        labels = dict(variant=variant, model=name, file=path.name, path=str(path), **({"precision": precision} if precision else {}),
                      **({"quantized": True} if quantized else {}),
                      **({"provider": runner.provider} if backend == "onnxruntime" else {}))
        timed.append((runner, shape, labels))
    if getattr(args, "interleave", False):
        if any(r.device != "cpu" for r, _, _ in timed) or len({tuple(s) for _, s, _ in timed}) > 1:
            raise UserError("--interleave times files on the CPU with one input shape; drop it for GPU backends or "
                            "files of different input sizes")
        for b in batches:
            stats = bench.measure_interleaved([r for r, _, _ in timed], timed[0][1], b, min_iters=args.iters,
                                              min_seconds=args.seconds)
            entries += [dict(st, **labels) for st, (_, _, labels) in zip(stats, timed)]
    else:
        for runner, shape, labels in timed:
            for b in batches:
                stats = bench.measure(runner, shape, b, min_iters=args.iters, min_seconds=args.seconds)
                entries.append(dict(stats, **labels))
    add_speedups(entries)
    if any(e.get("speedup") and not e["speedup"]["paired"] for e in entries):
        notes.append("files timed one after the other: a speedup's interval counts the calls' spread, not the "
                     "machine's drift between files; --interleave times them in turn, for ratios that hold")
    return {"schema_version": 1, "kind": "latency", "tool": {"name": "singe-deploy", "version": __version__},
            "device": device.describe(args.device_name, args.threads or bench.default_threads()),
            "models": models, "latency": entries, "notes": notes}


def threads_from_reports(artifacts):
    """(threads, note): the count compress measured for its folder's model on this CPU (report.json's threads
    block, --threads auto), so that bench times what the report timed; (None, None) when no folder says one."""
    from ..measure.device import cpu_model

    for a in artifacts:
        try:
            rep = json.loads((Path(a) / "report.json").read_text())
            n, cpu = rep["threads"]["threads"], rep["environment"]["device"]["cpu"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(n, int) and cpu == cpu_model():
            return n, (f"{n} thread{'s' * (n > 1)}, as compress measured for this model on this CPU ({a}/report.json);"
                       " --threads N to change")
    return None, None


def add_speedups(entries):
    """Each file's speedup over the run's dense file at the same batch size and backend, with its 95% interval
    (bench.speedup: paired by round when the files were timed interleaved); the calls' times are then dropped."""
    from ..measure import bench

    for e in entries:
        dense = [d for d in entries if d["variant"] == "dense" and d["batch_size"] == e["batch_size"]
                 and d["backend"] == e["backend"] and d is not e]
        if e["variant"] != "dense" and len(dense) == 1:
            e["speedup"] = dict(bench.speedup(dense[0], e), over=dense[0]["path"])
    entries[:] = [bench.without_calls(e) for e in entries]


def write_json(data, path):
    """Write JSON atomically (a temporary beside the target, then a rename)."""
    write_atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2)))


def table(data):
    from ..measure.bench import says

    rows = [("| model | variant | precision | backend | device | batch | median ms | p90 ms | throughput /s | "
             "speedup over dense |"), "|---|---|---|---|---|---:|---:|---:|---:|---|"]
    for e in data["latency"]:
        rows.append(f"| {e['model']} | {e['variant']} | {e.get('precision', '')} | {e['backend']} | {e['device']} | "
                    f"{e['batch_size']} | {e['median_ms']:.3f} | {e['p90_ms']:.3f} | {e['throughput_per_s']:.1f} | "
                    f"{says(e['speedup']) if e.get('speedup') else ''} |")
    return "\n".join(rows)


def run(args):
    data = measure_files(args)
    from ..measure import device

    print(f"device: {device.label(data['device'])}, {data['device']['os']}")
    for note in data["notes"]:
        print(f"note: {note}")
    print(table(data))
    if args.out:
        from .. import schemas

        if schemas.available():
            schemas.validate(data, "latency")
        write_json(data, args.out)
        print(f"wrote {args.out}")
    return 0
