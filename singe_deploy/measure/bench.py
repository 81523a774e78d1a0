"""Latency backends behind one small interface, and the measurement loop.

A backend has `name`, `device`, `infer(x: np.ndarray) -> np.ndarray` and `info()`. Backends that run on
a GPU also have `stream`, `prepare(x)` (copy the input to device buffers) and `launch()` (enqueue compute
on the stream), so that `measure` times compute alone with CUDA events and host-device copies apart.
`measure` times any backend the same way trtexec does: warm-up by time and count, then at least
`min_iters` iterations and at least `min_seconds`, reporting median/p90/p99/mean/std and throughput.
Backends: onnxruntime (CPU or CUDA provider), torch (CPU, CUDA eager, CUDA graph replay), and
tensorrt (singe_deploy.deploy.trt.TensorRT). Only numpy is imported here: onnxruntime on a CPU works on a device
that has neither torch nor torch-pruning.
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import UserError
from .device import physical_cores as default_threads

PROVIDERS = {  # --provider -> onnxruntime execution providers, in priority order
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"],
}
ONNX_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path, threads=None, provider="cpu", spinning=True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise UserError("onnxruntime is not installed; pip install onnxruntime (or onnxruntime-gpu)") from None
        if provider not in PROVIDERS:
            raise UserError(f"unknown onnxruntime provider '{provider}'; use one of {', '.join(PROVIDERS)}")
        self.threads = threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # idle worker threads spin by default; with another session's calls in between (interleaved timing) the
        # spinning takes the cores from them: on 2 cores mobilenet_v2 ran 2.2x slower that way (docs/latency.md)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.spinning = spinning
        providers = PROVIDERS[provider]
        if providers[0] not in ort.get_available_providers():  # else onnxruntime falls back to the CPU
            raise UserError(f"onnxruntime here has no {providers[0]} (it has {', '.join(ort.get_available_providers())}); "
                            f"pip install onnxruntime-gpu{' built with TensorRT' if provider == 'tensorrt' else ''} "
                            "or use --provider cpu")
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        inp = self.session.get_inputs()[0]
        self.input, self.input_shape = inp.name, list(inp.shape)
        self.dtype = ONNX_TYPES.get(inp.type, np.float32)
        self.provider = provider
        self.device = "cpu" if provider == "cpu" else "cuda"
        self.version = ort.__version__

    def infer(self, x):
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=self.dtype)})[0]

    def info(self):
        return {"backend": self.name, "version": self.version, "threads": self.threads, "provider": self.provider,
                "providers": self.session.get_providers(), "spinning": self.spinning}


class Torch:
    name = "torch"

    def __init__(self, model, device="cpu", threads=None, cuda_graph=False):
        import torch

        self.model = model.eval().to(device)
        self.device = device
        self.threads = threads or torch.get_num_threads()
        self.cuda_graph = cuda_graph and device == "cuda"
        if device == "cuda":
            self.stream = torch.cuda.Stream()
        self._graph, self._x, self._out = None, None, None

    def infer(self, x):
        import torch

        if self.device == "cpu":
            with torch.inference_mode():
                return self.model(torch.as_tensor(x)).float().numpy()
        self.prepare(x)
        self.launch()
        self.stream.synchronize()
        return self._out.float().cpu().numpy()

    def prepare(self, x):
        import torch

        with torch.inference_mode():
            x = torch.as_tensor(x)
            if self._x is None or self._x.shape != x.shape:
                self._x = torch.empty(x.shape, dtype=x.dtype, device=self.device)
                self._graph = None
            with torch.cuda.stream(self.stream):
                self._x.copy_(x, non_blocking=False)
            if self.cuda_graph and self._graph is None:  # capture once per input shape, after a warm-up run
                with torch.cuda.stream(self.stream):
                    self.model(self._x)
                self.stream.synchronize()
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph, stream=self.stream):
                    self._out = self.model(self._x)

    def launch(self):
        import torch

        with torch.inference_mode(), torch.cuda.stream(self.stream):  # replay too runs on the current stream
            if self._graph is not None:
                self._graph.replay()
            else:
                self._out = self.model(self._x)

    def info(self):
        import torch

        return {"backend": self.name, "version": str(torch.__version__), "threads": self.threads,
                "cuda_graph": self.cuda_graph}


def gpu_info():
    """The GPU, driver and clocks, for reports (nvidia-smi where present)."""
    import torch

    if not torch.cuda.is_available():
        return None
    info = {"name": torch.cuda.get_device_name(0), "cuda": torch.version.cuda,
            "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    try:
        import subprocess

        fields = "driver_version,clocks.sm,clocks.mem,clocks.max.sm,power.limit"
        line = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", "0"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        info.update(dict(zip(["driver", "sm_clock_mhz", "mem_clock_mhz", "max_sm_clock_mhz", "power_limit_w"],
                             [v.strip() for v in line.split(",")])))
    except (OSError, ValueError):
        pass
    return info


def measure(backend, input_shape, batch_size=1, warmup_seconds=0.2, warmup_iters=10, min_iters=50,
            min_seconds=2.0, seed=0):
    """Latency statistics of a backend on random inputs of (batch_size, *input_shape[1:])."""
    dtype = getattr(backend, "dtype", np.float32)
    x = np.random.default_rng(seed).standard_normal([batch_size] + list(input_shape[1:])).astype(dtype)
    if backend.device != "cpu" and hasattr(backend, "launch"):
        times, warm, wall, extra = _timed_on_gpu(backend, x, warmup_seconds, warmup_iters, min_iters, min_seconds)
    else:
        times, warm, wall, extra = _timed_on_host(backend, x, warmup_seconds, warmup_iters, min_iters, min_seconds)
    return dict(_stats(backend, batch_size, times, warm, wall, extra), calls_ms=times)


def speedup(base, other, draws=1000, seed=0):
    """{"speedup", "ci95", "verdict", "paired"}: base's median over other's (stats of measure or
    measure_interleaved), with a 95% bootstrap interval. Interleaved calls are resampled by round, so that drift
    shared by both sides cancels; separately timed calls are resampled apart. An interval that holds 1.0 is
    "no measurable speedup"."""
    a, b = np.asarray(base["calls_ms"]), np.asarray(other["calls_ms"])
    paired = bool(base.get("paired") and other.get("paired")) and len(a) == len(b)
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(draws // 100):  # in blocks: a thousand resamples of 20k calls at once would take 160 MB
        i = rng.integers(0, len(a), (100, len(a)))
        j = i if paired else rng.integers(0, len(b), (100, len(b)))
        ratios.append(np.median(a[i], axis=1) / np.median(b[j], axis=1))
    ratios = np.concatenate(ratios)
    low, high = (float(v) for v in np.percentile(ratios, [2.5, 97.5]))
    value = float(np.median(a) / np.median(b))
    return {"speedup": value, "ci95": [low, high], "paired": paired,
            "verdict": "faster" if low > 1 else "slower" if high < 1 else "no measurable speedup"}


def without_calls(stats):
    """A stats entry as reports and latency files keep it: without the calls' times that speedup() reads."""
    return {k: v for k, v in stats.items() if k not in ("calls_ms", "paired")}


def says(s):
    """'1.85x (95%: 1.80-1.90)', or 'no measurable speedup (0.97-1.04)', for a speedup() entry."""
    low, high = s["ci95"]
    if s["verdict"] == "no measurable speedup":
        return f"no measurable speedup (95%: {low:.2f}-{high:.2f}x)"
    return f"{s['speedup']:.2f}x (95%: {low:.2f}-{high:.2f})"


def _stats(backend, batch_size, times, warm, wall, extra):
    """The latency entry of one backend from its timed calls (ms) and the seconds they took."""
    ms = np.asarray(times)
    mean = float(ms.mean())
    return {
        "backend": backend.name, "device": backend.device, "batch_size": batch_size, "warmup": warm,
        "iterations": len(times), "median_ms": float(np.median(ms)), "min_ms": float(ms.min()),
        "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": mean,
        "std_ms": float(ms.std()), "cv": float(ms.std() / mean) if mean else 0.0,
        "throughput_per_s": len(times) * batch_size / wall, "threads": getattr(backend, "threads", None),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **extra,
    }


def measure_interleaved(backends, input_shape, batch_size=1, warmup_iters=10, min_iters=50, min_seconds=2.0, seed=0):
    """measure() for several host backends at once, their calls interleaved (one call of each per round, the order
    rotating), so that a machine whose speed drifts slows them all alike and their ratios hold. Returns one stats
    dict per backend, in order, each with its calls' times by round ("calls_ms": paired across backends).
    input_shape: one shape for all, or a list of one per backend. onnxruntime sessions should not spin
    (OnnxRuntime(..., spinning=False)): an idle session's spinning threads slow the others' calls."""
    dtype = [getattr(b, "dtype", np.float32) for b in backends]
    shapes = input_shape if isinstance(input_shape[0], (list, tuple)) else [input_shape] * len(backends)
    x = [np.random.default_rng(seed).standard_normal([batch_size] + list(s[1:])).astype(d)
         for d, s in zip(dtype, shapes)]
    for b, xi in zip(backends, x):
        for _ in range(warmup_iters):
            b.infer(xi)
    times = [[] for _ in backends]
    begin, spent = time.perf_counter(), [0.0] * len(backends)
    rounds = 0
    while rounds < min_iters or time.perf_counter() - begin < min_seconds * len(backends):
        for k in range(len(backends)):
            i = (rounds + k) % len(backends)
            t0 = time.perf_counter()
            backends[i].infer(x[i])
            dt = time.perf_counter() - t0
            times[i].append(dt * 1000)
            spent[i] += dt
        rounds += 1
    extra = {"timer": "host clock, input and output copies included; calls interleaved with the other files'"}
    return [dict(_stats(b, batch_size, ms, warmup_iters, wall, extra), calls_ms=ms, paired=True)
            for b, ms, wall in zip(backends, times, spent)]


def _loop(step, warmup_seconds, warmup_iters, min_iters, min_seconds):
    start, warm = time.perf_counter(), 0
    while warm < warmup_iters or time.perf_counter() - start < warmup_seconds:
        step(False)
        warm += 1
    times, begin = [], time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - begin < min_seconds:
        times.append(step(True))
    return times, warm, time.perf_counter() - begin


def _timed_on_host(backend, x, *limits):
    threads = getattr(backend, "threads", None)
    torch = None
    if backend.name == "torch":
        import torch

        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)

    def step(_):
        t0 = time.perf_counter()
        backend.infer(x)
        return (time.perf_counter() - t0) * 1000

    try:
        times, warm, wall = _loop(step, *limits)
    finally:
        if torch is not None:
            torch.set_num_threads(previous)
    return times, warm, wall, {"timer": "host clock, input and output copies included"}


def _timed_on_gpu(backend, x, *limits):
    """Compute alone, timed with CUDA events on the backend's stream; copies measured apart."""
    import torch

    stream = backend.stream
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    backend.prepare(x)  # first call: allocation, shape setup, graph capture
    uploads = []
    for _ in range(10):
        t0 = time.perf_counter()
        backend.prepare(x)
        stream.synchronize()
        uploads.append((time.perf_counter() - t0) * 1000)

    def step(_):
        start.record(stream)
        backend.launch()
        end.record(stream)
        end.synchronize()
        return start.elapsed_time(end)

    times, warm, wall = _loop(step, *limits)
    copies = []
    for _ in range(10):
        t0 = time.perf_counter()
        backend.infer(x)
        copies.append((time.perf_counter() - t0) * 1000)
    return times, warm, wall, {"timer": "CUDA events around compute on a dedicated stream",
                               "h2d_median_ms": float(np.median(uploads)),
                               "with_copies_median_ms": float(np.median(copies)), "gpu": gpu_info()}
