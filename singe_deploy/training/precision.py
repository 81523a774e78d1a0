"""`--amp auto` and `--channels-last auto` on a CPU: the fine-tuning precision and memory format that train fastest
on this CPU and model, found by measuring them.

On a CUDA GPU, auto is bf16 autocast (fp16 where bf16 is missing) and channels-last (train.precision). On a CPU the
answer depends on the CPU: bf16 autocast trained the demo model 6.6x slower than fp32 on an AVX2-only AMD EPYC, and
bf16 with channels-last 1.98x faster on an AMD EPYC with avx512_bf16 (docs/training.md). So it is measured: a few
training iterations of a copy of the model (with a copy as teacher when distilling) at the run's batch size in each
setting; the fastest wins when it beats fp32 by more than MARGIN. bf16 is tried only where the CPU has bf16
instructions (avx512_bf16 or amx_bf16). Cached per CPU, torch version, threads, model architecture, input shape,
batch and distillation. The run's random state is left as it was, so that a cached and a measured run train alike.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from ..measure.device import cpu_flags, cpu_model
from ..pruning.latency import CACHE as TABLES
from ..pruning.latency import architecture, cache_path, measured_once

SETTINGS = {"fp32": ("off", "off"), "fp32+cl": ("off", "on"), "bf16": ("bf16", "off"), "bf16+cl": ("bf16", "on")}
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MARGIN = 0.05  # a setting must train more than 5% faster than fp32 to be chosen
CACHE = TABLES.parent / "precision"


def candidates(amp, channels_last, flags):
    """The settings that `amp` and `channels_last` ('auto', or fixed) leave open on a CPU with these flags."""
    out = []
    for name, (a, cl) in SETTINGS.items():
        if a == "bf16" and not any(f in flags for f in BF16_FLAGS):
            continue
        if amp not in ("auto", a) or channels_last not in ("auto", cl):
            continue
        out.append(name)
    return out


def choose(rates):
    """The fastest setting of {name: images/s} when it beats fp32 (or the first one) by more than MARGIN."""
    base = rates.get("fp32", next(iter(rates.values())))
    best = max(rates, key=rates.get)
    return best if rates[best] > base * (1 + MARGIN) else next(n for n in rates if rates[n] == base)


def measure(model, input_shape, batch, settings, distill, num_classes, iters=3, warmup=1):
    """{setting: images/s} of training a copy of `model` on random batches, each setting after a warm-up."""
    from .loops import Recipe, train_iters

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = torch.randn([batch] + list(input_shape[1:]))
        y = torch.randint(0, num_classes, (batch,))
        rates = {}
        for name in settings:
            amp, cl = SETTINGS[name]
            student = copy.deepcopy(model)
            recipe = Recipe(teacher=copy.deepcopy(model) if distill else None, amp=amp, channels_last=cl)
            train_iters(student, None, warmup, 1e-4, batches=iter([(x, y)] * warmup), recipe=recipe, desc=f"probe {name}")
            t = time.perf_counter()
            train_iters(student, None, iters, 1e-4, batches=iter([(x, y)] * iters), recipe=recipe, desc=f"probe {name}")
            rates[name] = round(batch * iters / (time.perf_counter() - t), 1)
    return rates


def resolve(amp, channels_last, model, input_shape, batch, distill, num_classes, cache=None, log=print):
    """(amp, channels_last, record) for fine-tuning on this CPU: 'auto' measured, fixed values kept."""
    if amp != "auto" and channels_last != "auto":
        return amp, channels_last, {"amp": amp, "channels_last": channels_last, "source": "option"}
    flags = cpu_flags()
    settings = candidates(amp, channels_last, flags)
    if len(settings) == 1:
        a, cl = SETTINGS[settings[0]]
        return a, cl, {"amp": a, "channels_last": cl, "source": "the only setting open on this CPU"}
    key = {"device": cpu_model(), "bf16": sorted(f for f in BF16_FLAGS if f in flags), "torch": str(torch.__version__),
           "threads": torch.get_num_threads(), "architecture": architecture(model), "input_shape": list(input_shape),
           "batch": batch, "distill": bool(distill), "settings": settings, "margin": MARGIN}
    path = Path(cache) if cache else cache_path(CACHE, key)

    def measured():
        rates = measure(model, input_shape, batch, settings, distill, num_classes)
        best = choose(rates)
        return {"setting": best, "amp": SETTINGS[best][0], "channels_last": SETTINGS[best][1], "source": "measured",
                "images_per_s": rates}

    try:
        record, how = measured_once(path, key, "setting", measured)
    except Exception as e:  # noqa: BLE001 - a model this probe cannot train: fine-tune in fp32, as before
        log(f"fine-tuning precision auto: fp32 (the probe failed: {str(e).splitlines()[0][:200]})")
        return "off", "off", {"amp": "off", "channels_last": "off", "source": f"probe failed: {e}"[:300]}
    rates = ", ".join(f"{n} {r:.0f}" for n, r in record["images_per_s"].items())
    log(f"fine-tuning precision auto: {record['setting']} on {key['device']} ({how}; images/s: {rates})")
    return record["amp"], record["channels_last"], dict(record, cache=str(path))


def resolved(schedule, model, input_shape, data, log=print):
    """(schedule, record): `schedule` (prune.Schedule) with amp / channels_last 'auto' measured when one process
    fine-tunes on a CPU, and resolve()'s record; on a GPU, with several processes or without fine-tuning,
    (schedule, None): train.precision decides (fp32 on a CPU)."""
    import dataclasses

    from ..models.specs import _num_outputs
    from . import distributed

    trains = data is not None and data.real and (schedule.finetune_iters > 0 or schedule.epochs > 0)
    ctx = distributed.current()
    # several processes: the probe's training would be one rank's collective (DDP) that the others never join
    if not trains or ctx.device.type != "cpu" or ctx.active or "auto" not in (schedule.amp, schedule.channels_last):
        return schedule, None
    batch = getattr(data.train, "batch_size", None) or 128
    amp, cl, record = resolve(schedule.amp, schedule.channels_last, model, input_shape, batch, schedule.distill,
                              _num_outputs(model), log=log)
    return dataclasses.replace(schedule, amp=amp, channels_last=cl), record
