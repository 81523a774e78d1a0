"""What machine a measurement ran on: CPU, cores, GPU, board, OS and runtime versions.

Needs only the standard library (nvidia-smi where present), so it works on a device that has nothing
but a runtime installed.
"""
from __future__ import annotations

import os
import platform
import socket
import subprocess
from importlib import metadata

RUNTIMES = {  # module -> distributions that provide it, first found wins
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu13-bindings", "tensorrt-cu12-bindings"),
    "torch": ("torch",),
    "onnx": ("onnx",),
    "numpy": ("numpy",),
}


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read().splitlines()
    except OSError:
        return []


# the CPU features that move this project's timings and choices: vector width, bf16 and int8 units (x86), NEON/SVE (Arm)
TELLING_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve"}


def cpu_flags():
    """The CPU's feature flags (/proc/cpuinfo), e.g. {'avx2', 'avx512f', 'avx512_bf16', 'amx_bf16'}; empty if unknown."""
    for line in _cpuinfo():
        if line.split(":")[0].strip().lower() in ("flags", "features") and ":" in line:
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model():
    for line in _cpuinfo():
        key = line.split(":")[0].strip().lower()
        if key in ("model name", "hardware", "processor") and ":" in line and not line.split(":")[1].strip().isdigit():
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def physical_cores():
    """Physical cores when /proc/cpuinfo tells (onnxruntime's own default thread count), else logical CPUs."""
    lines = _cpuinfo()
    cores = {(l.split(":")[1].strip()) for l in lines if l.startswith("core id")}
    sockets = {(l.split(":")[1].strip()) for l in lines if l.startswith("physical id")}
    if cores:
        return max(1, len(cores) * max(1, len(sockets)))
    return os.cpu_count() or 1


def board():
    """The board name on embedded devices (e.g. 'NVIDIA Jetson AGX Orin Developer Kit'), else None."""
    try:
        with open("/proc/device-tree/model", "rb") as f:
            return f.read().decode(errors="replace").strip("\x00 \n") or None
    except OSError:
        return None


def gpus():
    """NVIDIA GPUs as nvidia-smi lists them (name, driver, memory, clocks); [] without nvidia-smi."""
    fields = ["name", "driver_version", "memory.total", "clocks.max.sm", "power.limit"]
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    keys = ["name", "driver", "memory_mib", "max_sm_clock_mhz", "power_limit_w"]
    return [dict(zip(keys, [v.strip() for v in line.split(",")])) for line in out.stdout.strip().splitlines() if line]


def runtimes():
    """Installed versions of the runtimes and libraries a measurement depends on (no imports)."""
    found = {}
    for module, dists in RUNTIMES.items():
        for dist in dists:
            try:
                found[module] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def memory_gib():
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        return round(kib / 2**20, 1)
    except (OSError, StopIteration, ValueError):
        return None


def describe(name=None, threads=None):
    """The device block of latency files and reports."""
    return {"name": name or socket.gethostname(), "cpu": cpu_model(), "cores_physical": physical_cores(),
            "cores_logical": os.cpu_count(), "memory_gib": memory_gib(), "board": board(), "gpus": gpus(),
            "os": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "runtimes": runtimes(), "threads": threads, "cpu_flags": sorted(cpu_flags() & TELLING_FLAGS)}


def label(block):
    """A short name for a device block in tables: its name, then the GPU or the CPU."""
    if not block:
        return "unknown device"
    what = (block.get("gpus") or [{}])[0].get("name") or block.get("board") or block.get("cpu")
    return f"{block.get('name')} ({what})" if what else str(block.get("name"))
