"""What a run computes from the dense model and in-memory data alone, kept across runs: the dense model's accuracy
and, for distillation, its logits on the training set (distill.py).

Both are keyed by a hash of the model's weights and of the data's images and labels (not their file names), the
precision, torch's version and the CPU, so that a changed model or dataset, or another machine, computes them anew.
Only data held in memory (data.TensorLoader: Fashion-MNIST) is hashed; an image folder's files could change
without its listing changing, so its results are always computed."""
from __future__ import annotations

import hashlib

import torch

from ..data.specs import TensorLoader
from ..measure.device import cpu_model
from ..pruning.latency import CACHE as TABLES
from ..pruning.latency import cache_path, measured_once

CACHE = TABLES.parent


def fingerprint(*items):
    """A hash of tensors (their bytes, dtypes and shapes), models (their state dicts) and plain values."""
    h = hashlib.sha1()
    for item in items:
        if isinstance(item, torch.nn.Module):
            item = item.state_dict()
        if isinstance(item, dict):
            for k in sorted(item):
                h.update(k.encode())
                h.update(fingerprint(item[k]).encode())
        elif isinstance(item, torch.Tensor):
            t = item.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(repr(item).encode())
    return h.hexdigest()[:20]


def key(model, loader, **extra):
    """The cache key of a result of `model` on `loader`, or None when the loader's data is not held in memory."""
    if not isinstance(loader, TensorLoader):
        return None
    return dict(model=fingerprint(model), data=fingerprint(loader.images, loader.labels, loader.shape, loader.mean,
                                                           loader.std), torch=str(torch.__version__), cpu=cpu_model(),
                **extra)


def accuracy(model, loader, evaluate):
    """(accuracy of `model` on `loader`, how): evaluate(model, loader), or the figure a run before computed for the
    same weights and data on this machine."""
    k = key(model, loader, what="accuracy")
    if k is None:
        return evaluate(model, loader), "computed"
    record, how = measured_once(cache_path(CACHE / "accuracy", k), k, "accuracy",
                                lambda: {"accuracy": evaluate(model, loader), "source": "evaluate"})
    return record["accuracy"], how


def tensor(path_key, compute):
    """(tensor, how): compute() once per key, kept in the cache as a file loaded with weights_only=True."""
    from ..files import save_torch

    path = cache_path(CACHE / "logits", path_key).with_suffix(".pt")
    try:
        obj = torch.load(path, weights_only=True)
        if isinstance(obj, dict) and obj.get("key") == path_key:
            return obj["tensor"], f"computed before, {path}"
    except Exception:  # missing, unreadable or corrupt: computed again and rewritten
        pass
    value = compute()
    if value is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_torch({"key": path_key, "tensor": value}, path)
        except OSError:  # a cache that cannot be written costs the next run the computation, nothing else
            pass
    return value, "computed"
