"""Many units' paths in one pass: the calibration batch is repeated R times and replica r sees only unit
u_r scaled by alpha_r, through hooks on activations instead of copies of the weights.

Scaling a unit's parameter slices by alpha is the same function as scaling activations: a conv/linear
output channel with its bias (the output channel times alpha), a norm's weight and bias for one channel
(its output channel times alpha), a conv/linear input channel (that input channel times alpha, grouped
convs included). So L_r(alpha_r), and its derivative <W_g, grad_W_g L> at W_g -> alpha_r W_g, come out of
one forward (and backward) for R units at once, with the model's own weights. Layers whose slices do not
map this way (PReLU, a layer with input and output channels in one group) make the model unsupported;
callers then fall back to moving weights.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_CHANNEL_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                  nn.modules.instancenorm._InstanceNorm)


class UnitScaler:
    """Hooks that scale unit channels per replica. `unsupported` is None or why this model cannot be served."""

    def __init__(self, model, group_slices):
        self.unsupported = None
        self.sites = {}  # (module name, "in" | "out") -> channel dim
        self.plan = []  # per group: per root unit: [(site, channel idxs)]
        for gs in group_slices:
            per_unit = {}
            if gs:
                why = self._check(model, gs)
                if why:
                    self.unsupported = why
                    return
                for s in gs:
                    module_name, _, kind = s.name.rpartition(".")
                    module = model.get_submodule(module_name)
                    side = _side(module, kind, s.dim)
                    self.sites[(module_name, side)] = _channel_dim(module)
                    for unit in torch.unique(s.root_idxs).tolist():
                        chans = s.idxs[s.root_idxs == unit].long()
                        sites = per_unit.setdefault(unit, {})
                        # a weight and its bias scale the same channels: each channel once
                        sites[(module_name, side)] = torch.unique(torch.cat([sites.get((module_name, side),
                                                                                       chans[:0]), chans]))
            self.plan.append({u: list(sites.items()) for u, sites in per_unit.items()})

    def _plan_on(self, device):
        """The plan with its index tensors on `device`, moved once: a hook then runs no host-to-device copy
        (each one waits for the GPU)."""
        if getattr(self, "_device", None) != device:
            self._device, self._placed = device, [
                {u: [(site, chans.to(device, non_blocking=True)) for site, chans in sites]
                 for u, sites in per_unit.items()} for per_unit in self.plan]
        return self._placed

    def _check(self, model, gs):
        sides = {}
        for s in gs:
            module_name, _, kind = s.name.rpartition(".")
            module = model.get_submodule(module_name)
            if _channel_dim(module) is None:
                return f"{type(module).__name__} {module_name}"
            side = _side(module, kind, s.dim)
            sides.setdefault(module_name, {}).setdefault(side, set()).add(kind)
        for module_name, by_side in sides.items():
            module = model.get_submodule(module_name)
            if len(by_side) > 1:
                return f"{module_name} has input and output channels in one group"
            out = by_side.get("out", set())
            if out and getattr(module, "bias", None) is not None and "weight" in out and "bias" not in out:
                return f"{module_name}'s bias is not scaled with its weight"
        return None

    def losses(self, model, x, y, units, alphas, grad=True):
        """For each (group index, root unit) in `units`, with that unit scaled by the matching alpha in its own
        replica of (x, y): d/dalpha of the replica's mean loss (grad=True), or the loss itself (grad=False)."""
        R = len(units)
        alpha = torch.tensor(alphas, dtype=x.dtype).to(x.device, non_blocking=True).requires_grad_(grad)
        replica = torch.arange(R, device=x.device)  # replica[r].expand(n): n copies of r, a view on the device
        plan, per_site = self._plan_on(x.device), {}
        for r, (i, j) in enumerate(units):
            for site, chans in plan[i][j]:
                per_site.setdefault(site, []).append((replica[r].expand(len(chans)), chans))
        handles = []
        modules = dict(model.named_modules())
        try:
            with torch.set_grad_enabled(grad):
                for (name, side), entries in per_site.items():
                    hook = _scaler(entries, alpha, R, self.sites[(name, side)])
                    if side == "out":
                        handles.append(modules[name].register_forward_hook(lambda m, i, o, h=hook: h(o)))
                    else:
                        handles.append(modules[name].register_forward_pre_hook(
                            lambda m, i, h=hook: (h(i[0]),) + i[1:]))
                xr = x.repeat((R,) + (1,) * (x.dim() - 1))
                out = model(xr)
                loss = F.cross_entropy(out, y.repeat(R), reduction="none").view(R, -1).mean(1)
                if not grad:
                    return loss.tolist()
                return torch.autograd.grad(loss.sum(), alpha)[0].tolist()
        finally:
            for h in handles:
                h.remove()


def _side(module, kind, dim):
    if isinstance(module, nn.modules.conv._ConvNd):
        out_dim = 1 if module.transposed else 0
        return "out" if kind == "bias" or dim == out_dim else "in"
    if isinstance(module, nn.Linear):
        return "out" if kind == "bias" or dim == 0 else "in"
    return "out"  # norms: weight and bias scale the output channel


def _channel_dim(module):
    if isinstance(module, _CHANNEL_FIRST):
        return 1
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, nn.LayerNorm) and len(module.normalized_shape) == 1:
        return -1
    return None


def _scaler(entries, alpha, R, dim):
    """A function that multiplies channel idxs of replica r's activations by alpha[r] (idxs and alpha on the
    activations' device)."""
    rows = torch.cat([r for r, _ in entries])
    cols = torch.cat([c for _, c in entries])
    gains = alpha[rows]

    def scale(a):
        C = a.shape[dim]
        mult = torch.ones(R, C, dtype=a.dtype, device=a.device)
        mult = mult.index_put((rows, cols), gains.to(a.dtype))
        if dim == 1:
            shaped = a.reshape(R, a.shape[0] // R, C, -1) * mult[:, None, :, None]
        else:
            shaped = a.reshape(R, -1, C) * mult[:, None, :]
        return shaped.reshape(a.shape)

    return scale
