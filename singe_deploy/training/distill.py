"""The dense model's logits computed once per training sample, for distillation from unaugmented in-memory data.

Fine-tuning distils from the dense model (train.Recipe): its forward pass ran at every batch, about a quarter of a
fine-tuning iteration of the demo (docs/training.md). Where the training images are held in memory (TensorLoader) and
not augmented, a sample's teacher logits are the same at every pass, so one inference pass over the training set
gives them all, and the training batches carry them: (x, y, logits)."""
from __future__ import annotations

import copy
import time

import torch

from ..data.specs import TensorLoader
from . import distributed, memo
from .loops import precision

MAX_BYTES = 1 << 30  # logits above this (samples x classes x 4 bytes) are not held; the teacher runs per batch


def cached_logits(loader, teacher, dtype=None, channels_last=False):
    """The teacher's logits (float32, samples x classes) for every sample of a TensorLoader in its order, unaugmented,
    in eval mode under autocast `dtype` (None: fp32) and the memory format fine-tuning uses, as a live teacher computes
    them during fine-tuning; None when they would take more than MAX_BYTES."""
    ctx = distributed.current()
    home = next(teacher.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    teacher.to(ctx.device, memory_format=fmt).eval()
    out = []
    with torch.inference_mode(), torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
        for x, _ in loader.samples(loader.batch_size):  # the training batch size ran fastest (channels-last, bf16)
            x = x.to(ctx.device)
            out.append(teacher(x.contiguous(memory_format=fmt) if x.dim() == 4 else x).float().cpu())
            if len(loader.labels) * out[0].shape[1] * 4 > MAX_BYTES:
                out = None
                break
    teacher.to(home, memory_format=torch.contiguous_format)
    return torch.cat(out) if out else None


def with_logits(loader, recipe, log=print):
    """A copy of `loader` whose batches carry the logits of recipe.teacher (computed in the recipe's precision), or
    None where they cannot be held: data read from files or augmented at every pass, or logits over MAX_BYTES. The
    copy shares the loader's images and order."""
    if not isinstance(loader, TensorLoader) or loader.augment or loader.soft is not None:
        return None
    t = time.time()
    device = distributed.current().device
    dtype, channels_last = precision(recipe.amp, recipe.channels_last, device)
    key = memo.key(recipe.teacher, loader, what="logits", dtype=str(dtype), channels_last=channels_last,
                   batch=loader.batch_size, device=device.type)
    logits, how = memo.tensor(key, lambda: cached_logits(loader, recipe.teacher, dtype, channels_last))
    if logits is None or logits.numel() * 4 > MAX_BYTES:  # a cached file is held to the same limit
        return None
    out = copy.copy(loader)
    out.soft = logits
    log(f"distillation: the dense model's logits on the {len(out.soft):,} unaugmented training samples, "
        + (f"{how} ({time.time() - t:.1f} s)" if how != "computed" else f"computed once ({time.time() - t:.1f} s)"))
    return out
