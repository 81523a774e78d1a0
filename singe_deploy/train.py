"""Training, fine-tuning and evaluation loops shared by the pipeline and tools/train_baseline.py."""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def progress(iterable=None, **kwargs):
    """A progress bar on stderr that stays quiet when stderr is not a terminal, unless forced."""
    kwargs.setdefault("disable", not sys.stderr.isatty())
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


@torch.no_grad()
def evaluate(model, loader, limit=None):
    """Top-1 accuracy on a loader (all of it, or its first `limit` batches)."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for i, (x, y) in enumerate(progress(loader, desc="evaluate", unit="batch")):
        if limit is not None and i >= limit:
            break
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train(was_training)
    return correct / max(total, 1)


def cycle(loader):
    """Batches from a loader forever (each pass is a new, seeded epoch)."""
    while True:
        yield from loader


def make_optimizer(model, lr, weight_decay=5e-4, momentum=0.9):
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.dim() <= 1 else decay).append(p)
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum, nesterov=True)


def train_iters(model, loader, iters, lr, weight_decay=5e-4, schedule="cosine", desc="fine-tune",
                batches=None):
    """SGD for `iters` iterations over `loader` (cycled); returns the mean training loss."""
    if iters <= 0:
        return None
    batches = batches if batches is not None else cycle(loader)
    opt = make_optimizer(model, lr, weight_decay)
    model.train()
    total = 0.0
    bar = progress(range(iters), desc=desc, unit="it")
    for i in bar:
        if schedule == "cosine":
            for g in opt.param_groups:
                g["lr"] = 0.5 * lr * (1 + math.cos(math.pi * i / iters))
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item()
        if i % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return total / iters


def train_epochs(model, loader, epochs, lr, weight_decay=5e-4, desc="train"):
    """Cosine-scheduled SGD over whole epochs of `loader`."""
    iters = int(round(epochs * len(loader)))
    return train_iters(model, loader, iters, lr, weight_decay, desc=desc)
