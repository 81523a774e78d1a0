"""Training, fine-tuning and evaluation loops shared by the pipeline and tools/train_baseline.py.

They run on the device of distributed.current() and, under torchrun, on this rank's share of every
batch (see distributed.py); with one process they are plain loops."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import faults
from ..data.specs import Stream, nchw
from ..errors import CheckFailed, UserError
from ..progress import progress
from . import distributed


@torch.no_grad()
def evaluate(model, loader, limit=None):
    """Top-1 accuracy on a loader (all of it, or its first `limit` batches); under torchrun each rank
    counts its share of every batch and the counts are summed."""
    ctx = distributed.current()
    was_training = model.training
    device = next(model.parameters()).device
    model.to(ctx.device).eval()
    counts = torch.zeros(2, dtype=torch.float64)
    for i, (x, y) in enumerate(progress(loader, desc="evaluate", unit="batch")):
        if limit is not None and i >= limit:
            break
        x, y = distributed.shard(x, y) if not getattr(loader, "sharded", False) else (x, y)
        x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
        counts[0] += (model(x).argmax(1) == y).sum().item()
        counts[1] += len(y)
    counts = distributed.all_sum(counts)
    model.to(device).train(was_training)
    return float(counts[0] / max(counts[1], 1))


def cycle(loader):
    """Batches from a loader forever (each pass is a new, seeded epoch), as a Stream whose place can be saved."""
    return Stream(loader)


class Diverged(CheckFailed):
    """The training loss became NaN or infinite."""


@dataclass
class Recipe:
    """How fine-tuning trains, between pruning steps and at the end. With a teacher (the dense model) the loss is
    distill_alpha x T^2 x KL(teacher || student at temperature T) + (1 - distill_alpha) x cross-entropy; the
    teacher runs once per batch in eval mode, without gradients, unless the batches carry its logits (distill.py)."""

    weight_decay: float = 5e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    teacher: object = None
    distill_t: float = 4.0
    distill_alpha: float = 0.5
    amp: str = "auto"  # see precision()
    channels_last: str = "auto"


AMP = ("auto", "off", "bf16", "fp16")


def precision(amp, channels_last, device):
    """(autocast dtype or None for fp32, channels-last?) for fine-tuning on `device`. auto: bf16 autocast (fp16 with a
    gradient scaler where the GPU lacks bf16) and channels-last on CUDA; on a CPU, compress and prune() measure
    which trains faster first (precision.resolved), and an 'auto' left here is fp32 and contiguous."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    if amp not in AMP or channels_last not in ("auto", "on", "off"):
        raise UserError(f"--amp must be one of {', '.join(AMP)} and --channels-last auto, on or off; "
                        f"got {amp!r}, {channels_last!r}")
    if amp == "auto":
        amp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "off"
    if amp == "fp16" and not cuda:
        raise UserError("--amp fp16 needs a CUDA device (it trains with a gradient scaler); use --amp bf16 or "
                        "--amp off on a CPU")
    dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]
    return dtype, (cuda if channels_last == "auto" else channels_last == "on")


def recipe_loss(logits, y, recipe, teacher_logits=None):
    """The summed (not averaged) loss of a batch under a Recipe."""
    ce = F.cross_entropy(logits, y, reduction="sum", label_smoothing=recipe.label_smoothing)
    if teacher_logits is None:
        return ce
    t, a = recipe.distill_t, recipe.distill_alpha
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1), reduction="sum",
                  log_target=True)
    return a * t * t * kl + (1 - a) * ce


def make_optimizer(model, lr, weight_decay=5e-4, momentum=0.9):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum,
                           nesterov=momentum > 0)


def train_iters(model, loader, iters, lr, weight_decay=5e-4, schedule="cosine", desc="fine-tune",
                batches=None, sharded=None, recipe=None, resume=None, save=None, save_every=None):
    """SGD for `iters` iterations over `loader` (cycled); returns the mean training loss (this rank's).

    On the device of distributed.current(); under torchrun, DDP over this rank's share of every global
    batch (`sharded`: the loader already yields this rank's share), each rank's summed loss divided by
    the global batch size, so the averaged gradient is the global batch's mean gradient. `recipe` (a Recipe)
    overrides weight_decay and adds label smoothing, momentum, distillation, mixed precision and channels-last
    (see precision()); the model comes back in fp32 with contiguous weights.

    save(state) is called every `save_every` seconds (0: every iteration) with what `resume` takes to continue
    exactly where it was: the next iteration, the optimizer, the gradient scaler, the data stream's place and the
    random generator, and the model's state dict then ("weights", for the caller to save with the model). A NaN or
    infinite loss raises Diverged before the step is taken, so the last saved state is
    the last good one."""
    if iters <= 0:
        return None
    recipe = recipe or Recipe(weight_decay=weight_decay)
    ctx = distributed.current()
    sharded = getattr(loader, "sharded", False) if sharded is None else sharded
    batches = batches if batches is not None else cycle(loader)
    home = next(model.parameters()).device
    dtype, channels_last = precision(recipe.amp, recipe.channels_last, ctx.device)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(ctx.device, memory_format=fmt)
    opt = make_optimizer(model, lr, recipe.weight_decay, recipe.momentum)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=dtype is torch.float16)
    teacher = recipe.teacher
    if teacher is not None:
        teacher_home = next(teacher.parameters()).device
        teacher.to(ctx.device, memory_format=fmt).eval().requires_grad_(False)
    total, first = 0.0, 0
    if resume is not None:
        opt.load_state_dict(resume["opt"])
        scaler.load_state_dict(resume["scaler"])
        total, first = resume["total"], resume["i"]
        if isinstance(batches, Stream):
            batches.restore(resume["stream"])
        torch.set_rng_state(resume["rng"])
    saved_at = time.monotonic()
    with distributed.data_parallel(model) as net:
        net.train()
        bar = progress(range(first, iters), desc=desc, unit="it", total=iters - first)
        for i in bar:
            due = save is not None and i > first and time.monotonic() - saved_at >= (save_every or 0)
            if due:  # where the run is before iteration i (BatchNorm's statistics included: the forward pass moves
                # them), saved once this iteration's loss is known to be finite
                place = {"i": i, "total": total, "stream": batches.state() if isinstance(batches, Stream) else None,
                         "rng": torch.get_rng_state(),
                         "weights": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            if schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * i / iters))
            faults.point("finetune")
            batch = next(batches)
            while len(batch[1]) == 0:  # every image of the batch was unreadable (data.Skipped counts them)
                batch = next(batches)
            x, y, soft = batch if len(batch) == 3 else (*batch, None)  # soft: the teacher's logits (distill.py)
            if not sharded:
                x, y, soft = distributed.shard(x, y, soft)
            x, y = nchw(x).to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=fmt)
            n = distributed.all_sum(torch.tensor([float(len(y))]))[0] if ctx.active else len(y)
            teacher_logits = soft.to(ctx.device, non_blocking=True) if soft is not None and teacher is not None else None
            with torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None):
                if teacher is not None and teacher_logits is None:
                    with torch.no_grad():
                        teacher_logits = teacher(x)
                logits = net(x)
            loss = recipe_loss(logits.float(), y, recipe,
                               teacher_logits.float() if teacher_logits is not None else None) * (ctx.world / n)
            if not torch.isfinite(loss):
                raise Diverged(f"{desc} diverged: the loss is {loss.item()} at iteration {i + 1} of {iters} (learning "
                               f"rate {lr:g}); rerun with a lower --lr, e.g. {lr / 10:g}")
            if due:  # the weights and optimizer are still those before iteration i: a state that trains on
                save(dict(place, opt=opt.state_dict(), scaler=scaler.state_dict()))
                saved_at = time.monotonic()
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            total += loss.item() / ctx.world
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item() / ctx.world:.3f}")
    model.eval().to(home, memory_format=torch.contiguous_format)
    if teacher is not None:
        teacher.to(teacher_home, memory_format=torch.contiguous_format)
    return total / iters


def train_epochs(model, loader, epochs, lr, weight_decay=5e-4, desc="train", recipe=None, **saving):
    """Cosine-scheduled SGD over whole epochs of `loader` (`saving`: train_iters' resume, save and save_every)."""
    iters = int(round(epochs * len(loader)))
    return train_iters(model, loader, iters, lr, weight_decay, desc=desc, recipe=recipe, **saving)
