"""The deploy stage of compress: export the dense and the pruned model for the target (ONNX, TensorRT engines,
fp16/int8 ONNX), check each against PyTorch, time each on the target, and measure each deployable's accuracy with
the runtime that will run it. Its settings are one value, DeploySettings; `deploy()` returns a Deployed."""
from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields

from .. import faults
from ..data.specs import first_samples
from ..errors import CheckFailed
from ..measure import bench, onnx_flops
from ..measure.flops import compare, disagreement
from ..models.specs import load_pruned
from ..progress import progress
from . import export
from .quantize import QUANTIZED
from .recommend import recommend
from .trt import EngineOptions

CPU_PARITY_MACS = 2e12
PARITY_PASSES = 6  # dense: torch and onnx; pruned: torch, reloaded torch, onnx (and the reference twice)
MIN_PARITY_SAMPLES = 8


@dataclass(frozen=True)
class DeploySettings:
    """What the deploy stage needs from a run's options (DeploySettings.from_config(cfg))."""
    target: str = "onnx"  # onnx, torch or trt
    device: str = "cpu"  # torch target's device
    threads: int | None = None
    opset: int = 18
    batch_sizes: tuple = (1,)
    latency_iters: int = 50
    latency_seconds: float = 2.0
    parity_atol: float = 1e-3
    parity_rtol: float = 1e-5
    parity_top1: float = 0.99
    parity_batches: int = 4
    parity_samples: int | None = None
    quant_top1: float = 0.95  # quantized files: smallest top-1 agreement with PyTorch fp32
    quant_accuracy_drop: float = 0.01  # and largest accuracy drop against pruned fp32 (its runtime's)
    quantize: tuple = ()  # extra precisions of pruned.onnx: fp16, int8
    quantize_method: str = "minmax"
    calib_batches: int = 4  # int8 calibrates on the scoring batches
    max_accuracy_drop: float | None = None  # the file to ship keeps within this many points of dense (recommend.py)
    engine: EngineOptions = field(default_factory=EngineOptions)

    @classmethod
    def from_config(cls, cfg, **overrides):
        """The settings of a run's options; threads 'auto' is the runtime's default unless overridden (compress
        passes the count it measured, threads.resolve)."""
        kw = {f.name: cfg[f.name] for f in fields(cls) if f.name != "engine"}
        kw.update(batch_sizes=tuple(cfg["batch_sizes"]), quantize=tuple(cfg["quantize"] or ()),
                  threads=cfg["threads"] if isinstance(cfg["threads"], int) else None)
        return cls(**dict(kw, **overrides), engine=EngineOptions.from_config(cfg))

    @property
    def on_cpu(self):
        return self.target == "onnx" or (self.target == "torch" and self.device == "cpu")

    def variant_of(self, name):
        """(variant, precision) of a runner's name: dense, pruned, pruned.int8, ..."""
        variant, _, precision = name.partition(".")
        return variant, precision or (self.engine.precision if self.target == "trt" else "fp32")


@dataclass
class Deployed:
    exports: list = field(default_factory=list)  # one record per file written, with its parity against PyTorch
    latency: list = field(default_factory=list)  # one record per runner and batch size
    failures: list = field(default_factory=list)  # checks that failed (exit 1)
    deployables: list = field(default_factory=list)  # one row per deployable: accuracy, costs, size, latency
    recommended: dict | None = None  # the file to ship (recommend.py), None when nothing was timed


def parity_batches(s, data, dense_macs, log=print):
    """The first s.parity_batches batches, cut to s.parity_samples, or on a CPU target to what CPU_PARITY_MACS of
    the parity passes afford (a large model's 512 samples would take longer than the pruning)."""
    batches = [x for x, _ in (data.val if data.real else data.train)][: s.parity_batches]
    total = sum(len(x) for x in batches)
    cap = s.parity_samples
    if cap is None and s.on_cpu and dense_macs:
        cap = max(MIN_PARITY_SAMPLES, int(CPU_PARITY_MACS // (PARITY_PASSES * dense_macs)))
        if cap < total:
            log(f"parity: {cap} of {total} samples, what {CPU_PARITY_MACS:.0e} MACs of parity passes afford on a CPU "
                "(--parity-samples to choose)")
    return batches if cap is None or cap >= total else first_samples(batches, cap)


def deploy(dense, pruned, pruned_pt, data, input_shape, work, s, costs, spec, log=print):
    """Exports of `dense` and `pruned` (pruned_pt: the pruned model's saved file) into `work`, with parity against
    PyTorch and MACs counted again on each graph, then latency of every runner and each deployable's accuracy.
    costs: {"dense": Costs, "pruned": Costs}; spec: the model spec, written into the ONNX metadata."""
    faults.point("export")
    out = Deployed()
    batches = parity_batches(s, data, costs["dense"].macs, log)
    variants = {"dense": dense, "pruned": pruned}
    q = export.parity(bench.Torch(pruned), bench.Torch(load_pruned(pruned_pt)), batches, "pytorch (in memory)",
                      s.parity_atol, s.parity_rtol)
    out.exports.append({"format": "torch", "variant": "pruned", "path": pruned_pt.name, "parity": q})
    runners = {}
    onnx = s.target in ("onnx", "trt")
    bar = progress(total=(2 + len(s.quantize)) * len(s.batch_sizes) + (2 if onnx else 0), desc="export and latency",
                   unit="task")
    if onnx:
        for variant, m in variants.items():
            runners[variant] = _onnx(variant, m, input_shape, work, s, batches, costs[variant], spec, out, log)
            bar.update()
    if s.quantize:
        runners.update(_quantized(pruned, data, batches, work, s, out, log))
    if s.target == "trt":
        runners = _engines(variants, input_shape, batches, work, s, out, log, [n for n in runners if "." in n])
    elif s.target == "torch":
        for variant, m in variants.items():
            runners[variant] = bench.Torch(copy.deepcopy(m).eval(), s.device, s.threads, s.engine.cuda_graph)
    _check_parity(s, out, data.real)
    for batch in s.batch_sizes:
        _time(runners, input_shape, batch, s, out, log)
        bar.update(len(runners))
    bar.close()
    out.deployables = _deployables(runners, data, costs, work, s, out, log)
    out.recommended = recommend(out.deployables, max_drop=s.max_accuracy_drop)
    return out


def _onnx(variant, model, input_shape, work, s, batches, cost, spec, out, log):
    path = work / f"{variant}.onnx"
    export.export_onnx(model, input_shape, path, s.opset, metadata={"model": spec, "variant": variant})
    opset = export.check_onnx(path)
    runner = bench.OnnxRuntime(path, s.threads, spinning=False)  # timed interleaved (bench.measure_interleaved)
    q = export.parity(bench.Torch(model), runner, batches, "pytorch", s.parity_atol, s.parity_rtol)
    g = compare(model, cost, onnx_flops.count(path, input_shape))
    graph = {k: g[k] for k in ("macs", "params", "macs_rel_diff", "macs_agree", "folded_norms", "params_expected",
                               "params_agree", "uncounted_ops")}
    out.exports.append({"format": "onnx", "variant": variant, "path": path.name, "opset": opset, "parity": q,
                        "graph_count": graph})
    if not g["agree"]:
        out.failures.append(f"{variant}.onnx: {disagreement(g)}")
    log(f"{variant}.onnx: opset {opset}, max |diff| {q['max_abs_diff']:.2e}, top-1 agreement "
        f"{q['top1_agreement']:.4f} vs PyTorch; graph MACs {g['macs']:,} "
        f"({'agree' if g['agree'] else 'DIFFER'}: {100 * g['macs_rel_diff']:+.3f}%)")
    return runner


def _check_parity(s, out, real=True):
    for e in out.exports:
        q, atol = e["parity"], e.get("atol", s.parity_atol)
        name = f"{e['format']} {e['variant']}" + (f" {e['precision']}" if e.get("precision") else "")
        if q.get("nonfinite"):
            out.failures.append(f"{name} parity: {q['nonfinite']} NaN or infinite outputs")
            continue
        if e.get("precision") in QUANTIZED:  # a lower precision changes the outputs by design: its own thresholds,
            # checked on the whole validation set with the deployables' accuracy (_check_accuracy)
            e["thresholds"] = ({"top1_agreement": s.quant_top1, "accuracy_drop": s.quant_accuracy_drop} if real else
                               "not checked: synthetic data (int8 calibrated on noise)")
            continue
        e["thresholds"] = {"top1_agreement": s.parity_top1, "beyond_rtol": atol}
        if not (q["beyond_rtol"] <= atol and q["top1_agreement"] >= s.parity_top1):
            out.failures.append(f"{e['format']} {e['variant']} parity: max |diff| {q['max_abs_diff']:.2e}, "
                                f"{q['beyond_rtol']:.2e} beyond {q['rtol']:g} x the largest |output| (<= {atol:g}), "
                                f"top-1 {q['top1_agreement']:.4f} (>= {s.parity_top1:g})")


def _time(runners, input_shape, batch, s, out, log):
    """Every runner timed at `batch`: on a CPU all in one loop, one call of each in turn (drift slows them alike),
    on a GPU one after the other; each speedup over dense with its 95% interval (bench.speedup)."""
    names = list(runners)
    if all(r.device == "cpu" for r in runners.values()):
        stats = bench.measure_interleaved([runners[n] for n in names], input_shape, batch,
                                          min_iters=s.latency_iters, min_seconds=s.latency_seconds)
    else:
        stats = [bench.measure(runners[n], input_shape, batch, min_iters=s.latency_iters,
                               min_seconds=s.latency_seconds) for n in names]
    timed, how = dict(zip(names, stats)), "interleaved" if stats[0].get("paired") else "one after the other"
    for name, st in timed.items():
        variant, precision = s.variant_of(name)
        entry = bench.without_calls(st)
        if name != "dense":
            entry["speedup"] = bench.speedup(timed["dense"], st)
        out.latency.append(dict(entry, variant=variant, precision=precision,
                                **({"quantized": True} if "." in name else {})))
    first = out.latency[-len(names)]
    others = ", ".join(f"{x['variant']}{'.' + x['precision'] if x.get('quantized') else ''} {x['median_ms']:.3f} ms, "
                       f"{bench.says(x['speedup'])}" for x in out.latency[-len(names):] if "speedup" in x)
    threads = f", {first['threads']} thread{'s' * (first['threads'] > 1)}" if first.get("threads") else ""
    log(f"latency ({first['backend']}, {first['device']}, batch {batch}{threads}, {how}): dense {first['median_ms']:.3f} ms, "
        f"{others}")


def _quantized(model, data, batches, work, s, out, log):
    """pruned.PRECISION.onnx for each precision in s.quantize (int8 calibrated on the scoring batches), compared
    with PyTorch; returns their onnxruntime runners. A precision the converter fails on is a failure (exit 1) that
    leaves the rest of the run, fp32 files included, as it is."""
    from .quantize import quantize

    calib = [x for x, _ in data.calibration(s.calib_batches)]
    if "int8" in s.quantize and not data.real:
        log("note: int8 calibrated on synthetic data: its ranges, and so its accuracy, mean nothing")
    runners = {}
    for precision in s.quantize:
        path = work / f"pruned.{precision}.onnx"
        try:
            quantize(work / "pruned.onnx", precision, path, batches=calib, method=s.quantize_method,
                     target="trt" if s.target == "trt" else "cpu")
        except CheckFailed as e:
            out.failures.append(str(e))
            log(f"{path.name}: not written: {e}")
            continue
        runner = runners[f"pruned.{precision}"] = bench.OnnxRuntime(path, s.threads, spinning=False)
        q = export.parity(bench.Torch(model), runner, batches, "pytorch (fp32)", s.parity_atol, s.parity_rtol)
        out.exports.append({"format": "onnx", "variant": "pruned", "precision": precision, "path": path.name,
                            "parity": q, "size_bytes": path.stat().st_size})
        log(f"{path.name}: {path.stat().st_size / 1e6:.2f} MB, max |diff| {q['max_abs_diff']:.2e}, top-1 agreement "
            f"{q['top1_agreement']:.4f} vs PyTorch fp32")
    return runners


def _engines(variants, input_shape, batches, work, s, out, log, quantized=()):
    """TensorRT engines for dense and pruned, each checked against PyTorch, and one from each quantized file
    (pruned.int8.onnx, a QDQ graph; pruned.fp16.onnx); returns their runners. An engine TensorRT cannot build from a
    quantized file is a failure (exit 1) that keeps the rest."""
    from . import trt

    sizes = sorted(s.batch_sizes)
    profile = trt.Profile(sizes[0], sizes[len(sizes) // 2], sizes[-1]).check()
    atol = trt.tolerance(s.engine.precision, s.parity_atol)
    runners = {}
    for variant, m in variants.items():
        engine = work / f"{variant}.engine"
        record = trt.engine_from(m, work / f"{variant}.onnx", engine, input_shape, s.engine, profile, s.opset, log)
        runners[variant] = trt.TensorRT(engine, s.engine.cuda_graph)
        q = export.parity(bench.Torch(m), runners[variant], batches, "pytorch", atol, s.parity_rtol)
        out.exports.append({"format": "tensorrt", "variant": variant, "path": engine.name, "parity": q, "atol": atol,
                            "engine": record})
        log(f"{engine.name}: max |diff| {q['max_abs_diff']:.2e} (<= {atol:g}), top-1 agreement "
            f"{q['top1_agreement']:.4f} vs PyTorch")
    for name in quantized:
        precision, engine = name.partition(".")[2], work / f"{name}.engine"
        try:
            record = trt.build_engine(work / f"{name}.onnx", engine, input_shape, precision, s.engine.tf32, profile,
                                      s.engine.workspace_gb, s.engine.timing_cache, log)
        except CheckFailed as e:
            out.failures.append(str(e).splitlines()[0])
            log(f"{engine.name}: not built: {e}")
            continue
        runners[name] = trt.TensorRT(engine, s.engine.cuda_graph)
        q = export.parity(bench.Torch(variants["pruned"]), runners[name], batches, "pytorch (fp32)", s.parity_atol,
                          s.parity_rtol)
        out.exports.append({"format": "tensorrt", "variant": "pruned", "precision": precision, "path": engine.name,
                            "parity": q, "engine": record, "size_bytes": engine.stat().st_size})
        log(f"{engine.name}: max |diff| {q['max_abs_diff']:.2e}, top-1 agreement {q['top1_agreement']:.4f} vs "
            "PyTorch fp32")
    return runners


def _deployables(runners, data, costs, work, s, out, log):
    """One row per deployable (dense and pruned, each precision): its accuracy as its runtime computes it on the
    whole validation set (None on synthetic data), top-1 agreement with PyTorch, MACs, params, file size and
    latency per batch size."""
    rows, predicted = [], {}
    for name, runner in runners.items():
        variant, precision = s.variant_of(name)
        fmt = {"onnxruntime": "onnx", "tensorrt": "tensorrt"}.get(runner.name, "torch")
        e = next((x for x in out.exports if x["format"] == fmt and x.get("variant") == variant
                  and x.get("precision", s.variant_of(variant)[1]) == precision), None)
        path = work / e["path"] if e else None
        predicted[name] = []
        accuracy = export.runtime_accuracy(runner, data.val, predictions=predicted[name]) if data.real else None
        rows.append({"name": name, "variant": variant, "format": fmt, "precision": precision,
                     "path": e["path"] if e else None, "accuracy": accuracy,
                     "top1_agreement": e["parity"]["top1_agreement"] if e else None,
                     "macs": costs[variant].macs, "params": costs[variant].params,
                     "size_bytes": path.stat().st_size if path and path.is_file() else None,
                     **_timings(out.latency, variant, precision, runner.name)})
        if accuracy is not None:
            log(f"accuracy of {name} ({fmt}, {precision}, run by {runner.name}): {accuracy:.4f}")
    _check_accuracy(rows, s, out, predicted)
    return rows


def _timings(latency, variant, precision, backend):
    """A deployable's median ms and speedup over dense (with its 95% interval) per batch size."""
    mine = [x for x in latency if x["variant"] == variant and x["precision"] == precision and x["backend"] == backend]
    return {"latency_ms": {str(x["batch_size"]): x["median_ms"] for x in mine},
            "speedup": {str(x["batch_size"]): x["speedup"] for x in mine if "speedup" in x}}


def _check_accuracy(rows, s, out, predicted):
    """A quantized deployable agrees with the pruned fp32 file its runtime runs on at least s.quant_top1 of the
    validation images and loses at most s.quant_accuracy_drop of accuracy against it (the whole set: the parity
    batches can be a handful of images on a CPU)."""
    base = {r["format"]: r for r in rows if r["variant"] == "pruned" and r["precision"] not in QUANTIZED}
    for r in rows:
        ref = base.get(r["format"])
        if r["precision"] not in QUANTIZED or r["accuracy"] is None or ref is None or ref["accuracy"] is None:
            continue
        mine, theirs = predicted[r["name"]], predicted[ref["name"]]
        r["agreement_with_fp32"] = sum(a == b for a, b in zip(mine, theirs)) / max(len(mine), 1)
        r["accuracy_drop"] = ref["accuracy"] - r["accuracy"]
        name = r["path"] or r["name"]
        if not r["agreement_with_fp32"] >= s.quant_top1:
            out.failures.append(f"{name}: top-1 agreement {r['agreement_with_fp32']:.4f} with {ref['path']} on "
                                f"{len(mine)} images (>= {s.quant_top1:g}, --quant-top1)")
        if not r["accuracy_drop"] <= s.quant_accuracy_drop:
            out.failures.append(f"{name}: accuracy {r['accuracy']:.4f}, {r['accuracy_drop']:.4f} below "
                                f"{ref['path']}'s {ref['accuracy']:.4f} (<= {s.quant_accuracy_drop:g}, "
                                "--quant-accuracy-drop)")
