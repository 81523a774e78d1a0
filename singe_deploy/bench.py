"""Latency backends behind one small interface, and the measurement loop.

A backend has `name`, `device`, `infer(x: np.ndarray) -> np.ndarray` and `info()`. `measure`
times any backend the same way trtexec does: warm-up by time and count, then at least
`min_iters` iterations and at least `min_seconds`, reporting median/p90/p99/mean/std and throughput.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch


def default_threads():
    """Physical cores when known (onnxruntime's own default), else logical CPUs."""
    try:
        cores = {(l.split(":")[1].strip()) for l in open("/proc/cpuinfo") if l.startswith("core id")}
        sockets = {(l.split(":")[1].strip()) for l in open("/proc/cpuinfo") if l.startswith("physical id")}
        if cores:
            return max(1, len(cores) * max(1, len(sockets)))
    except OSError:
        pass
    return os.cpu_count() or 1


class OnnxRuntime:
    name = "onnxruntime"

    def __init__(self, path, threads=None, provider="cpu"):
        import onnxruntime as ort

        self.threads = threads or default_threads()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(path), opts, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.device = provider
        self.version = ort.__version__

    def infer(self, x):
        return self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def info(self):
        return {"backend": self.name, "version": self.version, "threads": self.threads,
                "providers": self.session.get_providers()}


class Torch:
    name = "torch"

    def __init__(self, model, device="cpu", threads=None):
        self.model = model.eval().to(device)
        self.device = device
        self.threads = threads or torch.get_num_threads()

    @torch.inference_mode()
    def infer(self, x):
        t = torch.as_tensor(x, device=self.device)
        out = self.model(t)
        if self.device != "cpu":
            torch.cuda.synchronize()
        return out.float().cpu().numpy()

    def info(self):
        return {"backend": self.name, "version": torch.__version__, "threads": self.threads}


def measure(backend, input_shape, batch_size=1, warmup_seconds=0.2, warmup_iters=10, min_iters=50,
            min_seconds=2.0, seed=0):
    """Latency statistics of backend.infer on random inputs of (batch_size, *input_shape[-3:])."""
    x = np.random.default_rng(seed).standard_normal([batch_size] + list(input_shape[-3:])).astype(np.float32)
    threads = getattr(backend, "threads", None)
    previous = torch.get_num_threads()
    if backend.name == "torch" and threads:
        torch.set_num_threads(threads)
    try:
        start, warm = time.perf_counter(), 0
        while warm < warmup_iters or time.perf_counter() - start < warmup_seconds:
            backend.infer(x)
            warm += 1
        times, begin = [], time.perf_counter()
        while len(times) < min_iters or time.perf_counter() - begin < min_seconds:
            t0 = time.perf_counter()
            backend.infer(x)
            times.append((time.perf_counter() - t0) * 1000)
        wall = time.perf_counter() - begin
    finally:
        torch.set_num_threads(previous)
    ms = np.asarray(times)
    mean = float(ms.mean())
    return {
        "backend": backend.name, "device": backend.device, "batch_size": batch_size, "warmup": warm,
        "iterations": len(times), "median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
        "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)), "mean_ms": mean,
        "std_ms": float(ms.std()), "cv": float(ms.std() / mean) if mean else 0.0,
        "throughput_per_s": len(times) * batch_size / wall, "threads": threads,
    }
