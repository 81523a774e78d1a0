"""Latency as a pruning target: a table of measured latency per dependency group, and the prediction the planner
searches with.

The model is additive: latency(kept channels) = dense + the sum over groups of (table_g(kept_g) - dense), where
table_g comes from the model with only group g narrowed, at a few kept counts (linear in between): its changed
layers timed alone, then calibrated on the most pruned model (unit "layer"), or the whole model timed against the
dense one (unit "model"). Tables are cached on disk under a key (model architecture, input shape, unit, backend,
runtime version, device, batch, threads) and measured again when the key changes.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..errors import UserError
from ..files import write_atomic
from ..measure import bench
from ..measure.device import cpu_model
from ..progress import progress

POINTS = (0.25, 0.5, 0.75, 1.0)  # fractions of a group's removable channels timed (1.0: the most allowed)
DENSE_TIMINGS = 5  # unpaired timers: the dense model's time is the median of this many, spread over the table
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "singe-deploy" / "latency"


class _Timer:
    """Times models on one backend: runner(model) makes its runner, timer(model) is a median in ms, and
    pair(a, b) times two runners interleaved (one call of each in turn), so that the machine's drift slows both
    alike and their ratio holds."""

    def __init__(self, input_shape, batch, threads, min_iters, min_seconds):
        self.shape, self.batch, self.threads = list(input_shape), batch, threads
        self.limits = dict(min_iters=min_iters, min_seconds=min_seconds)

    def __call__(self, model):
        return bench.measure(self.runner(model), self.shape, self.batch, **self.limits)["median_ms"]

    def factory(self, model):
        """A function that makes a fresh runner of `model` each call, so that both sides of a pair are alike."""
        return lambda: self.runner(model)

    def with_shape(self, input_shape):
        """The same timer for another input (a single layer's)."""
        other = copy.copy(self)
        other.shape = list(input_shape)
        return other

    def pair(self, a, b):
        stats = bench.measure_interleaved([a, b], self.shape, self.batch, **self.limits)
        return stats[0]["median_ms"], stats[1]["median_ms"]


class _FileTimer(_Timer):
    """A timer whose runners open a file built once per model (factory): runner(model) is one of them."""

    def runner(self, model):
        return self.factory(model)()


class OnnxTimer(_FileTimer):
    """Models exported to ONNX and run by onnxruntime on this CPU.

    Tables time dozens of variants, so each is exported with torch's TorchScript exporter, 10x faster than the
    dynamo exporter that writes compress's files (docs/latency.md); where it fails, with the dynamo one."""

    def __init__(self, input_shape, batch=1, threads=None, min_iters=30, min_seconds=0.5, opset=18):
        super().__init__(input_shape, batch, threads or bench.default_threads(), min_iters, min_seconds)
        self.opset = opset

    def factory(self, model):
        """Exported once; every call opens a new onnxruntime session of that graph."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_fast(model.eval(), [self.batch] + self.shape[1:], path, self.opset)
            graph = path.read_bytes()
        # see bench.measure_interleaved for why sessions do not spin
        return lambda: _opened(graph, "m.onnx", lambda path: bench.OnnxRuntime(path, self.threads, spinning=False))

    def key(self):
        import onnxruntime

        return {"backend": "onnxruntime", "version": onnxruntime.__version__, "device": cpu_model(),
                "threads": self.threads, "batch": self.batch, "spinning": False}


class TorchTimer(_Timer):
    """The model in PyTorch on a CPU or a CUDA GPU."""

    def __init__(self, input_shape, batch=1, device="cpu", threads=None, min_iters=30, min_seconds=0.5):
        super().__init__(input_shape, batch, threads, min_iters, min_seconds)
        self.device = device

    def runner(self, model):
        return bench.Torch(copy.deepcopy(model), self.device, self.threads)

    def key(self):
        name = torch.cuda.get_device_name() if self.device == "cuda" else cpu_model()
        return {"backend": "torch", "version": str(torch.__version__), "device": f"{self.device}: {name}",
                "threads": self.threads or torch.get_num_threads(), "batch": self.batch}


class TrtTimer(_FileTimer):
    """TensorRT engines on this GPU, built with the run's EngineOptions and a profile of the one batch size timed:
    each variant exported to ONNX (as OnnxTimer does), built once, and every call deserializes a new runner of it."""

    def __init__(self, input_shape, batch=1, options=None, min_iters=30, min_seconds=0.5, opset=18):
        from ..deploy.trt import EngineOptions

        super().__init__(input_shape, batch, None, min_iters, min_seconds)
        self.options, self.opset = options or EngineOptions(), opset

    def factory(self, model):
        from ..deploy import trt

        shape = [self.batch] + self.shape[1:]
        with tempfile.TemporaryDirectory() as tmp:
            engine = Path(tmp) / "m.engine"
            trt.engine_from(model.eval(), Path(tmp) / "m.onnx", engine, shape, self.options,
                            trt.Profile(self.batch, self.batch, self.batch), self.opset, log=lambda *_: None,
                            export=lambda m, s, path: export_fast(m, s, path, self.opset))
            blob = engine.read_bytes()
        return lambda: _opened(blob, "m.engine", lambda path: trt.TensorRT(path, self.options.cuda_graph))

    def key(self):
        from ..deploy import trt

        o = self.options
        return {"backend": "tensorrt", "version": str(trt.import_trt().__version__),
                "device": f"cuda: {torch.cuda.get_device_name()}", "batch": self.batch, "precision": o.precision,
                "tf32": o.tf32, "cuda_graph": o.cuda_graph}


def _opened(blob, name, open_runner):
    """open_runner(path) of `blob` written to a temporary file; the runner holds what it read, so the file can go."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(blob)
        return open_runner(path)


def export_fast(model, shape, path, opset):
    """`model` at input `shape` written to `path` as ONNX, with the TorchScript exporter where it can (fast)."""
    import contextlib
    import io
    import warnings

    from ..deploy.export import export_onnx

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(shape),), str(path), dynamo=False, opset_version=opset)
    except Exception:  # the TorchScript exporter is not there or cannot trace this model
        export_onnx(model, shape, path, opset)


def timer_for(target, input_shape, batch=1, device="cpu", threads=None, opset=18, engine=None, **limits):
    """The timer of a deployment target: onnxruntime on this CPU for onnx, PyTorch on `device` for torch, TensorRT
    engines built with `engine` (trt.EngineOptions) for trt. limits: min_iters, min_seconds of each timing."""
    if target == "onnx":
        return OnnxTimer(input_shape, batch, threads, opset=opset, **limits)
    if target == "torch":
        return TorchTimer(input_shape, batch, device, threads, **limits)
    if target == "trt":
        return TrtTimer(input_shape, batch, engine, opset=opset, **limits)
    raise UserError(f"latency targets time the model on --target onnx, torch or trt, not '{target}'")


def cache_path(folder, key):
    """The cache file of a key (a JSON-able dict) in `folder`: a hash of the key, so that any change measures anew."""
    return Path(folder) / (hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20] + ".json")


def read_cached(path, key, field):
    """The record cached at `path` when it was written for `key` and holds `field`, else None."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key and field in data else None


def write_cached(path, record):
    """`record` written to `path` atomically, its folder made."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text))


def measured_once(path, key, field, measure):
    """(record, how): the record cached at `path` for `key`, its source marked '(cached)'; else measure() (a dict
    holding `field` and 'source'), with the key and the seconds it took, written there. How says which, for the log."""
    record = read_cached(path, key, field)
    if record is not None:
        return dict(record, source=f"{record['source']} (cached)"), f"measured before, {path}"
    t = time.time()
    record = dict(measure(), key=key)
    record["seconds"] = round(time.time() - t, 2)
    write_cached(path, record)
    return record, f"measured in {record['seconds']:.1f} s"


def architecture(model):
    """A fingerprint of the model's layers and weight shapes (not its weights)."""
    text = repr(model) + repr([(n, tuple(p.shape)) for n, p in model.named_parameters()])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


class LatencyTable:
    """Measured latency of the model with each group narrowed: {root layer: [(kept root channels, ms), ...]}."""

    def __init__(self, dense_ms, groups, key, scale=1.0):
        self.dense_ms, self.groups, self.key = float(dense_ms), groups, key
        self.scale = scale  # what calibrated() multiplied every saving by

    @classmethod
    def measure(cls, planner, model, example, timer, key, log=print):
        """Time the dense model, then each entry of `planner` narrowed to POINTS of its removable channels. With a
        timer that pairs (see _Timer), each narrowed model is timed interleaved with the dense one and its point is
        the dense median x their ratio; otherwise each is timed alone, the dense model DENSE_TIMINGS times."""
        trials = _trials(planner)
        paired = hasattr(timer, "pair")
        log(f"latency table: timing {len(trials)} narrowed models ({len(planner.entries)} groups)"
            + (", each interleaved with the dense one" if paired else ""))
        base = timer.factory(model) if paired else None  # a fresh dense runner for every pair
        if paired:
            timer.pair(base(), base())  # warm-up: a process's first timings run slow
        dense, raw, widths = [] if paired else [timer(model)], [], {}
        every = max(1, len(trials) // (DENSE_TIMINGS - 1))
        for k, (name, width, kept, narrowed) in enumerate(_narrowed(planner, model, example, trials)):
            widths[name] = width
            if paired:
                d, v = timer.pair(base(), timer.runner(narrowed))
                dense.append(d)
                raw.append((name, kept, v / d))
            else:
                raw.append((name, kept, timer(narrowed)))
                if (k + 1) % every == 0 and len(dense) < DENSE_TIMINGS:
                    dense.append(timer(model))
        dense = statistics.median(dense) if dense else timer(model)
        groups = {n: [[w, dense]] for n, w in widths.items()}
        for name, kept, value in raw:
            groups[name].append([kept, dense * value if paired else value])
        return cls(dense, {n: sorted(p) for n, p in groups.items()}, key)

    @classmethod
    def measure_layers(cls, planner, model, example, timer, key, log=print):
        """Per-layer table: each narrowed model's entry is the dense model's time plus, for every conv and linear
        layer whose weight the narrowing changed, that layer timed alone at its new shape minus the same layer
        timed alone at its dense shape (inputs as the layer gets them). A layer's own time changes by the share of
        channels it loses, far above the timing noise, where the whole model's changes by a few percent."""
        trials = _trials(planner)
        log(f"latency table: timing the layers of {len(trials)} narrowed models ({len(planner.entries)} groups), "
            "each layer alone")
        timer(model)  # warm-up
        dense = statistics.median(timer(model) for _ in range(3))
        dense_layers, inputs = _layers(model, example)
        alone = LayerTimes.read(timer)
        timed_before = len(alone.ms)
        groups = {}
        for name, width, kept, narrowed in _narrowed(planner, model, example, trials):
            layers, shapes = _layers(narrowed, example)
            delta = sum(alone(m, shapes[n]) - alone(dense_layers[n], inputs[n])
                        for n, m in layers.items() if tuple(m.weight.shape) != tuple(dense_layers[n].weight.shape))
            groups.setdefault(name, [[width, dense]]).append([kept, dense + delta])
        log(f"latency table: {alone.timed} layer shapes timed, {alone.reused} reused ({timed_before} known from "
            f"earlier tables on this device, {alone.path})")
        alone.write()
        table = cls(dense, {n: sorted(p) for n, p in groups.items()}, key)
        return table.calibrated(planner, model, example, timer, log)

    def calibrated(self, planner, model, example, timer, log=print):
        """The table with every saving scaled so that its prediction for the model pruned as far as the planner
        allows equals that model's measured latency (timed against the dense one: interleaved where the timer
        pairs): layers alone miss what shrinks between them (activations, adds, copies)."""
        from .plan import apply_plan

        most = planner.counts(planner.levels)
        predicted = self.predict(planner, most)
        smallest = apply_plan(copy.deepcopy(model), planner.removals(most), example)
        dense, small = time_against(timer, model, smallest, rounds=3)
        measured = self.dense_ms * small / dense
        if not predicted < self.dense_ms or not measured < self.dense_ms:
            return self
        scale = (self.dense_ms - measured) / (self.dense_ms - predicted)
        log(f"latency table: the most pruned model measured {measured / self.dense_ms:.3f} of dense, the layers "
            f"predicted {predicted / self.dense_ms:.3f}; savings scaled by {scale:.2f}")
        groups = {n: [[k, self.dense_ms + scale * (ms - self.dense_ms)] for k, ms in p] for n, p in self.groups.items()}
        return LatencyTable(self.dense_ms, groups, self.key, scale)

    def at(self, name, kept):
        """Latency with only `name`'s group at `kept` root channels (linear between measured points, clamped)."""
        points = self.groups.get(name)
        if not points:
            return self.dense_ms
        if kept <= points[0][0]:
            return points[0][1]
        for (k0, t0), (k1, t1) in zip(points, points[1:]):
            if kept <= k1:
                return t0 + (t1 - t0) * (kept - k0) / max(k1 - k0, 1)
        return points[-1][1]

    def predict(self, planner, counts):
        """Predicted latency of the model pruned by planner counts: the dense time plus, for each of the planner's
        groups, what its kept width changes in the table (groups the planner does not hold count as dense)."""
        total = self.dense_ms
        for i, r in enumerate(counts):
            name, now = planner.entries[i][0], len(planner.groups[i][0].idxs)
            total += self.at(name, now - (len(planner.removed(i, r)) if r > 0 else 0)) - self.dense_ms
        return total

    def channel_costs(self, groups, names):
        """What one root channel of each group costs in ms near its current width (for ranking 'cost')."""
        costs = []
        for g in groups:
            name, now = names[id(g[0].dep.target.module)], len(g[0].idxs)
            points = [p for p in self.groups.get(name, []) if p[0] < now]
            costs.append(max(self.at(name, now) - points[-1][1], 0.0) / (now - points[-1][0]) if points else 0.0)
        return costs

    @classmethod
    def from_json(cls, data):
        return cls(data["dense_ms"], data["groups"], data["key"], data.get("scale", 1.0))

    @classmethod
    def read(cls, path):
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"latency table {path} cannot be read ({e.__class__.__name__}); delete it to measure "
                            "again") from None

    def to_json(self):
        return {"key": self.key, "dense_ms": self.dense_ms, "scale": self.scale, "groups": self.groups}


class LayerTimes:
    """Layers timed alone, by what decides their time (type, channels, kernel, stride, padding, groups, input
    shape), not by name: a table times each shape once however many groups and models share it, and keeps the times
    on disk per timer key (backend, runtime, device, threads, batch) for the next table on this device."""

    def __init__(self, timer, ms=None, path=None):
        self.timer, self.ms, self.path = timer, dict(ms or {}), path
        self.timed = self.reused = 0

    @classmethod
    def read(cls, timer):
        key = timer.key()
        path = cache_path(CACHE / "layers", key)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        return cls(timer, data.get("ms") if data.get("key") == key else None, path)

    @staticmethod
    def shape_key(layer, input_shape):
        if isinstance(layer, torch.nn.Linear):
            what = ["linear", layer.in_features, layer.out_features]
        else:
            what = [type(layer).__name__, layer.in_channels, layer.out_channels, list(layer.kernel_size),
                    list(layer.stride), str(layer.padding), list(layer.dilation), layer.groups]
        return json.dumps(what + [layer.bias is not None, list(input_shape)])

    def __call__(self, layer, input_shape):
        k = self.shape_key(layer, input_shape)
        if k in self.ms:
            self.reused += 1
        else:
            self.ms[k] = self.timer.with_shape(input_shape)(copy.deepcopy(layer))
            self.timed += 1
        return self.ms[k]

    def write(self):
        if self.path is None or not self.timed:
            return
        text = json.dumps({"key": self.timer.key(), "ms": self.ms})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, lambda tmp: Path(tmp).write_text(text))


def time_against(timer, dense_model, model, rounds=1):
    """(dense ms, model ms): medians of `rounds` timings, interleaved where the timer pairs (one runner of each,
    made once), else one after the other."""
    runners = (timer.runner(dense_model), timer.runner(model)) if hasattr(timer, "pair") else None
    dense, other = [], []
    for _ in range(rounds):
        d, m = timer.pair(*runners) if runners else (timer(dense_model), timer(model))
        dense.append(d)
        other.append(m)
    return statistics.median(dense), statistics.median(other)


def _trials(planner):
    """(entry, channels per block removed) for every point of every group's table."""
    return [(i, r) for i in range(len(planner.entries)) for r in _removals(planner, i)]


def _narrowed(planner, model, example, trials):
    """(group name, its width now, width kept, a copy of `model` with only that group narrowed) per trial."""
    from .plan import apply_plan

    for i, r in progress(trials, desc="latency table", unit="model"):
        counts = [0] * len(planner.entries)
        counts[i] = r
        width = len(planner.groups[i][0].idxs)
        yield (planner.entries[i][0], width, width - len(planner.removed(i, r)),
               apply_plan(copy.deepcopy(model), planner.removals(counts), example))


def _layers(model, example):
    """({name: conv or linear layer}, {name: the input shape it gets, batch 1}) from one forward pass."""
    layers = {n: m for n, m in model.named_modules() if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear))}
    shapes, hooks = {}, []
    def record(name):
        def hook(module, args, out):  # returns None: the output is left alone
            shapes.setdefault(name, [1] + list(args[0].shape[1:]))
        return hook

    for n, m in layers.items():
        hooks.append(m.register_forward_hook(record(n)))
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return {n: m for n, m in layers.items() if n in shapes}, shapes


def _removals(planner, i):
    """Channels per block to remove from entry i at each of POINTS, multiples of its quantum, without repeats."""
    most, q = planner.entries[i][5], planner.quanta[i]
    return sorted({int(f * most) // q * q for f in POINTS} - {0})


UNITS = ("layer", "model")  # what a table times: each changed layer alone, or the whole model


def table_key(model, input_shape, timer, unit="layer"):
    return {"model": architecture(model), "input_shape": list(input_shape), "unit": unit, **timer.key()}


def load_or_measure(path, planner, model, example, timer, input_shape, log=print, unit="layer"):
    """The table at `path` when its key matches this model, timer and unit, else a new measurement written there."""
    key = table_key(model, input_shape, timer, unit)
    path = Path(path) if path else cache_path(CACHE, key)
    if path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        if data.get("key") == key:
            log(f"latency table: {path} (measured before for this model, input shape, backend and device)")
            return LatencyTable.from_json(data), path
        log(f"latency table: {path} was measured for another model, shape, backend or device; measuring again")
    table = (LatencyTable.measure_layers if unit == "layer" else LatencyTable.measure)(planner, model, example, timer,
                                                                                       key, log)
    write_cached(path, table.to_json())
    return table, path
