"""Running the flowchart on several processes (torchrun): who does what, and the few collectives needed.

Under torchrun (WORLD_SIZE > 1) every rank loads the model and the data, scores its share of the
calibration batches, fine-tunes on its share of every training batch under DistributedDataParallel
and evaluates its share of the validation set; scores and counts are summed across ranks, so every
rank removes exactly the same channels. BatchNorm statistics are synchronised across ranks while
fine-tuning (on CPU too), and each rank's loss is weighted by its share of the global batch, so N
processes compute what one process computes with the same batches, up to float summation order.
Only rank 0 logs, checkpoints, exports, measures latency and writes the output. Single process: every
helper here is a no-op.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.nn.functional as F

from ..errors import UserError


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    sync_bn: bool = True

    @property
    def main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1


_current = Context()


def current():
    return _current


def resolve_device(train_device, backend=None):
    """The device fine-tuning and scoring run on: 'auto' is CUDA when present (a rank's own GPU)."""
    if train_device == "cuda" and not torch.cuda.is_available():
        raise UserError("--train-device cuda needs a CUDA GPU and none was found; use --train-device cpu")
    if backend == "nccl" and not torch.cuda.is_available():
        raise UserError("--dist-backend nccl needs CUDA GPUs and none was found; use --dist-backend gloo")
    if backend == "nccl" and train_device == "cpu":
        raise UserError("--dist-backend nccl runs on GPUs; drop --train-device cpu or use --dist-backend gloo")
    auto_cuda = train_device == "auto" and backend != "gloo" and torch.cuda.is_available()
    if not (train_device == "cuda" or backend == "nccl" or auto_cuda):
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def init(train_device="auto", backend="auto", timeout_s=1800, sync_bn=True):
    """Join the process group when launched by torchrun; returns the Context (also for one process)."""
    global _current
    from .launch import launched

    if not launched():
        _current = Context(device=resolve_device(train_device))
        return _current
    import torch.distributed as dist

    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() and train_device != "cpu" else "gloo"
    device = resolve_device(train_device, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    _current = Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), device,
                       backend, sync_bn)
    return _current


def shutdown():
    global _current
    if _current.active:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    _current = Context()


def all_sum(t):
    """Sum a tensor across ranks (in place on a copy placed where the backend needs it); returns it on t's device."""
    if not _current.active:
        return t
    import torch.distributed as dist

    on = t.to(_current.device) if _current.backend == "nccl" else t.clone()
    dist.all_reduce(on)
    return on.to(t.device)


def agree(error):
    """Every rank learns whether any rank failed before the work starts: raises that rank's error everywhere."""
    if not _current.active:
        if error:
            raise error
        return
    import torch.distributed as dist

    found = [None] * _current.world
    dist.all_gather_object(found, None if error is None else (type(error).__name__, str(error)))
    if error is not None:
        raise error
    for rank, item in enumerate(found):
        if item is not None:
            raise UserError(f"rank {rank} failed: {item[1]}")


def broadcast_object(obj):
    """Rank 0's picklable object on every rank."""
    if not _current.active:
        return obj
    import torch.distributed as dist

    box = [obj if _current.main else None]
    dist.broadcast_object_list(box, 0)
    return box[0]


def broadcast_model(model):
    """Rank 0's parameters and buffers on every rank (a seeded random init may differ across machines)."""
    if not _current.active:
        return model
    import torch.distributed as dist

    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            on = t.data.to(_current.device) if _current.backend == "nccl" else t.data
            dist.broadcast(on, 0)
            if on is not t.data:
                t.data.copy_(on)
    return model


def my_share(items):
    """This rank's items: every world-th one, starting at its rank (whole calibration batches)."""
    return list(items)[_current.rank::_current.world] if _current.active else list(items)


def shard(*tensors):
    """This rank's slice of a global batch (of each of its tensors; None stays None)."""
    if not _current.active:
        return tensors
    return tuple(t if t is None else t[_current.rank::_current.world] for t in tensors)


def combine_means(scores, n_local):
    """Means over each rank's batches -> the mean over all ranks' batches (None entries stay None)."""
    if not _current.active:
        return scores
    n = all_sum(torch.tensor([float(n_local)], dtype=torch.float64))[0]
    present = [s for s in scores if s is not None]
    if not present:
        return scores
    flat = torch.cat([s.double().reshape(-1) * n_local for s in present])
    flat = all_sum(flat) / n
    out, i = [], 0
    for s in scores:
        if s is None:
            out.append(None)
            continue
        out.append(flat[i:i + s.numel()].view_as(s).to(s.dtype))
        i += s.numel()
    return out


class _SyncStats(torch.autograd.Function):
    """Batch mean and biased variance over all ranks' samples, with the matching backward."""

    @staticmethod
    def forward(ctx, x):
        dims = [0] + list(range(2, x.dim()))
        n_local = x.numel() // x.shape[1]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), x.new_tensor([float(n_local)])])
        stats = all_sum(stats)
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c:2 * c] / n - mean * mean
        ctx.save_for_backward(x, mean, n)
        ctx.mark_non_differentiable(n)
        return mean, var.clamp_min(0), n

    @staticmethod
    def backward(ctx, g_mean, g_var, _):
        x, mean, n = ctx.saved_tensors
        shape = [1, -1] + [1] * (x.dim() - 2)
        g = torch.cat([g_mean, g_var])
        g = all_sum(g)  # every rank's share of d loss / d (mean, var)
        c = x.shape[1]
        gm, gv = g[:c].view(shape), g[c:].view(shape)
        return gm / n + gv * 2 * (x - mean.view(shape)) / n


def _synced_bn_forward(bn):
    def forward(x):
        if not bn.training:
            return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
        mean, var, n = _SyncStats.apply(x)
        if bn.track_running_stats and bn.running_mean is not None:
            with torch.no_grad():
                bn.num_batches_tracked.add_(1)
                m = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                bn.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                bn.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp_min(1), alpha=m)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + bn.eps)
        if bn.affine:
            y = y * bn.weight.view(shape) + bn.bias.view(shape)
        return y
    return forward


@contextlib.contextmanager
def data_parallel(model):
    """The model wrapped for this step's fine-tuning: DDP with BatchNorm statistics synchronised across
    ranks (the modules keep their types, so the dependency graph is unchanged); rebuilt for every step,
    since pruning changes the parameters. One process: the model itself."""
    if not _current.active:
        yield model
        return
    import warnings

    from torch.nn.parallel import DistributedDataParallel as DDP

    # 1x1 convs: a grad's strides over size-1 dims differ from the bucket's, which is harmless
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    norms = norms if _current.sync_bn else []
    for bn in norms:
        bn.forward = _synced_bn_forward(bn)
    ids = [_current.device.index] if _current.device.type == "cuda" else None
    import inspect

    # synced statistics leave BatchNorm buffers equal on every rank: no need to send them each forward
    new = "forward_sync_buffers" in inspect.signature(DDP.__init__).parameters
    sync = {} if not norms else {"forward_sync_buffers": False} if new else {"broadcast_buffers": False}
    try:
        yield DDP(model, device_ids=ids, **sync)
    finally:
        for bn in norms:
            del bn.forward  # back to the class's forward
