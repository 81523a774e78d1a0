"""Pruning units from torch-pruning's dependency graph, and the parameter slices each one owns.

A `Unit group` is what `DependencyGraph.get_all_groups` yields: every layer slice that must go
when one output channel of the root layer goes. `slices(group)` lists, for each parameter the
group touches, which elements belong to which root channel, so criteria can (a) reduce any
tensor shaped like a parameter to one number per channel and (b) build masks that scale a
channel's weights along the SInGE path.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import ops as tp_ops
from torch_pruning.dependency import index_mapping

from ..errors import UserError
from ..models.attention import tracing as attention_tracing
from ..models.specs import has_head_attributes

NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
         nn.PReLU)


@dataclass
class Slice:
    """Elements of one parameter removed with root channels `root_idxs` (one entry per idx)."""

    name: str  # the parameter's name in the model
    param: torch.Tensor
    dim: int
    idxs: torch.Tensor
    root_idxs: torch.Tensor
    groups: int = 1  # > 1: input channels of a grouped convolution (dim 1)

    def reduce(self, t):
        """Sum of t (shaped like the parameter) over each idx's elements: shape (len(idxs),)."""
        return _reduce(t, self.dim, self.groups)[self.idxs]

    def mask(self, select=None):
        """A 0/1 tensor shaped like the parameter marking the elements of the idxs (or of `select`)."""
        idxs = self.idxs if select is None else self.idxs[select]
        m = torch.zeros_like(self.param, dtype=torch.bool)
        idxs = idxs.to(m.device)
        if self.groups > 1:
            g = self.groups
            view = m.view(g, m.shape[0] // g, m.shape[1], -1)
            per_group = m.shape[1]
            view[idxs // per_group, :, idxs % per_group] = True
            return m
        m.index_fill_(self.dim, idxs, True)
        return m


class Names(dict):
    """{id(param): name} for a model's parameters; `heads`: {id(q/k/v Linear): (head_dim, attn_dim, [(name,
    param, head dim)])} for attention blocks whose per-head tensors (a relative position bias: `head_tensors`,
    attention.WindowAttention) lose a head together with its q/k/v rows."""

    heads: dict


def param_names(model):
    names = Names((id(p), n) for n, p in model.named_parameters())
    names.heads = {}
    for prefix, m in model.named_modules():
        layout = head_layout(m)
        if layout is not None and getattr(m, "head_tensors", ()):
            own = dict(m.named_parameters())
            tensors = [(f"{prefix}.{t}" if prefix else t, own[t], dim) for t, dim in m.head_tensors if t in own]
            names.heads[id(layout[0])] = (m.head_dim, m.attn_dim, tensors)
    return names


def head_of(idxs, head_dim, attn_dim):
    """The head of each q/k/v row index."""
    return (torch.as_tensor(idxs) % attn_dim) // head_dim


def drop_heads(model, heads_entry, idxs):
    """Remove the heads of q/k/v rows `idxs` from the per-head tensors of Names.heads' entry (torch-pruning
    removes the rows and the projection's columns)."""
    head_dim, attn_dim, tensors = heads_entry
    gone = set(head_of(idxs, head_dim, attn_dim).tolist())
    modules = dict(model.named_modules())
    for name, param, dim in tensors:
        owner, _, attr = name.rpartition(".")
        keep = torch.tensor([h for h in range(param.shape[dim]) if h not in gone], device=param.device)
        fresh = nn.Parameter(param.data.index_select(dim, keep).contiguous(), requires_grad=param.requires_grad)
        setattr(modules[owner], attr, fresh)


def slices(group, names):
    """Every parameter slice a dependency group removes (layers we cannot score are left out)."""
    out = []
    for item in group:
        dep, idxs, root = item.dep, item.idxs, item.root_idxs
        if root is None or any(r is None for r in root) or len(idxs) == 0:
            continue
        layer = dep.target.module
        is_out = is_out_handler(dep.handler)
        idxs_t, root_t = torch.as_tensor(list(idxs)), torch.as_tensor(list(root))

        def add(param, dim, groups=1):
            if param is not None and id(param) in names:
                out.append(Slice(names[id(param)], param, dim, idxs_t, root_t, groups))

        if isinstance(layer, nn.modules.conv._ConvNd):
            depthwise = layer.groups > 1 and layer.groups == layer.in_channels
            if is_out:
                add(layer.weight, 1 if layer.transposed else 0)
                add(layer.bias, 0)
            elif depthwise:
                continue  # the same elements as the output-channel slice
            elif layer.transposed:
                add(layer.weight, 0)
            else:
                add(layer.weight, 1, layer.groups)
        elif isinstance(layer, nn.Linear):
            add(layer.weight, 0 if is_out else 1)
            if is_out:
                add(layer.bias, 0)
            head_dim, attn_dim, tensors = getattr(names, "heads", {}).get(id(layer), (1, 1, ()))
            for name, param, dim in tensors if is_out else ():  # a head's bias table column goes with its q/k/v rows
                out.append(Slice(name, param, dim, head_of(idxs_t, head_dim, attn_dim), root_t))
        elif isinstance(layer, NORMS):
            add(getattr(layer, "weight", None), 0)
            add(getattr(layer, "bias", None), 0)
        elif isinstance(layer, nn.MultiheadAttention) and layer._qkv_same_embed_dim:
            # the embedding channel is q's, k's and v's row (in_proj stacks them) and every projection's column
            e = layer.in_proj_weight.shape[1]
            for k in range(3):
                for p in (layer.in_proj_weight, layer.in_proj_bias):
                    if p is not None and id(p) in names:
                        out.append(Slice(names[id(p)], p, 0, idxs_t + k * e, root_t))
            add(layer.in_proj_weight, 1)
            add(layer.out_proj.weight, 0)
            add(layer.out_proj.weight, 1)
            add(layer.out_proj.bias, 0)
        elif isinstance(layer, nn.Parameter):  # a token or embedding outside any layer (a ViT's class token)
            add(layer, dep.target.pruning_dim % layer.dim())
    return out


def is_out_handler(fn):
    name = getattr(fn, "__name__", "")
    return name.startswith("prune_out") or "out_channels" in name


def per_unit(group_slices, tensors, n):
    """Sum of tensors[name] over each root channel's elements (each element once): shape (n,)."""
    total = torch.zeros(n, dtype=torch.float64)
    by_param = {}
    for s in group_slices:
        by_param.setdefault(s.name, []).append(s)
    for name, group in by_param.items():
        t = tensors[name]
        if len(group) == 1:
            s = group[0]
            total.index_add_(0, s.root_idxs, s.reduce(t).double().cpu())
            continue
        # a layer whose input and output channels are in the same group (x + conv(x)): an element
        # can sit in two slices of the same channel, so sum over the union of its masks
        t = t.cpu()
        for unit in torch.unique(torch.cat([s.root_idxs for s in group])).tolist():
            mask = torch.zeros_like(t, dtype=torch.bool)
            for s in group:
                select = s.root_idxs == unit
                if select.any():
                    mask |= s.mask(select).cpu()
            total[unit] += t[mask].double().sum()
    return total


class UnitMap:
    """Per-unit sums of many groups' slices at once, indexed once: the cost per call is a few tensor ops per
    parameter, whatever the number of groups (per_unit loops over groups and slices). A slice reduces its
    parameter along the slice's dim (one dense sum per parameter and dim, shared by every group), then adds
    the channels it owns to their units. Units are numbered group after group. Where one group has two slices
    of the same parameter (x + conv(x)), an element of both counts once: those go element by element."""

    def __init__(self, group_slices, sizes):
        self.sizes = list(sizes)
        self.total = sum(self.sizes)
        dense, pairs = {}, {}  # (name, dim, groups) -> [(channel idxs, units)]; name -> [(elements, units)]
        offset = 0
        for gs, n in zip(group_slices, self.sizes):
            by_name = {}
            for s in gs:
                by_name.setdefault(s.name, []).append(s)
            for name, ss in by_name.items():
                if len(ss) == 1:
                    s = ss[0]
                    dense.setdefault((name, s.dim, s.groups), []).append((s.idxs.long(), s.root_idxs.long() + offset))
                    continue
                numel = ss[0].param.numel()
                parts = [_pairs(s) for s in ss]
                units = torch.cat([u for _, u in parts])
                elems = torch.cat([e for e, _ in parts])
                key = torch.unique(units * numel + elems)  # an element twice in one unit counts once
                pairs.setdefault(name, []).append((key % numel, key // numel + offset))
            offset += n
        self.dense = {k: (torch.cat([i for i, _ in v]), torch.cat([u for _, u in v])) for k, v in dense.items()}
        self.index = {k: (torch.cat([e for e, _ in v]), torch.cat([u for _, u in v])) for k, v in pairs.items()}
        self._on = {}

    def _device(self, key, pair, device):
        if (key, device) not in self._on:
            self._on[(key, device)] = tuple(t.to(device) for t in pair)
        return self._on[(key, device)]

    def sums(self, tensors):
        """Per-unit sums of tensors[name] (shaped like the parameters), all units at once: float64 on the CPU
        (accumulated in the tensors' own dtype, as the per-slice sums of per_unit are)."""
        total = None
        for kind, table in (("dense", self.dense), ("index", self.index)):
            for key, pair in table.items():
                t = tensors[key[0] if kind == "dense" else key]
                where, units = self._device((kind, key), pair, t.device)
                if total is None:
                    total = torch.zeros(self.total, dtype=t.dtype, device=t.device)
                values = _reduce(t, key[1], key[2]) if kind == "dense" else t.reshape(-1)
                total.index_add_(0, units, values[where].to(total.dtype))
        if total is None:
            return torch.zeros(self.total, dtype=torch.float64)
        return total.double().cpu()

    def split(self, flat):
        """A flat per-unit tensor back into one tensor per group."""
        return list(torch.split(flat, self.sizes))


def _reduce(t, dim, groups):
    """Sum of t over everything but its channels along `dim` (input channels of a grouped conv for groups > 1)."""
    if groups > 1:
        return t.reshape(groups, t.shape[0] // groups, t.shape[1], -1).sum(dim=(1, 3)).reshape(-1)
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).sum(1)


def _pairs(s):
    """(flat element index, root unit) for every element of a slice."""
    shape = s.param.shape
    numel = s.param.numel()
    idxs, roots = s.idxs.long(), s.root_idxs.long()
    ids = torch.arange(numel).view(shape)
    if s.groups > 1:
        g = s.groups
        view = ids.view(g, shape[0] // g, shape[1], -1)
        per_group = shape[1]
        elems = view[idxs // per_group, :, idxs % per_group]  # (k, out per group, kernel)
    else:
        elems = ids.movedim(s.dim, 0)[idxs]
    elems = elems.reshape(len(idxs), -1)
    units = roots[:, None].expand_as(elems)
    return elems.reshape(-1), units.reshape(-1)


def root_module(group):
    return group[0].dep.target.module


def channel_groups(group):
    """How many equal blocks the root channels form (grouped convs, GroupNorm, attention heads): 1 for most layers."""
    g = 1
    for item in group:
        layer = item.dep.target.module
        if isinstance(layer, nn.modules.conv._ConvNd) and 1 < layer.groups < layer.in_channels:
            g = max(g, layer.groups)
        elif isinstance(layer, nn.GroupNorm):
            g = max(g, layer.num_groups)
        elif isinstance(layer, nn.MultiheadAttention):  # every head keeps the same width
            g = max(g, layer.num_heads)
    return g


def all_groups(model, example_inputs, ignored_layers=()):
    """Build the dependency graph and return (graph, groups rooted at conv/linear layers). Groups that cross
    a reshape torch-pruning cannot map channel by channel (a channel shuffle's 5-D view) are left out: their
    channels would be removed at the wrong indices on the far side."""
    was_training = model.training  # build_dependency switches to eval and does not switch back
    try:
        with torch.enable_grad(), known_warnings_off(), attention_tracing():
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_inputs)
            names = param_names(model)
            groups = [g for g in _root_groups(graph, ignored_layers) if _in_bounds(g, names) and _supported(g)]
    except Exception as e:
        raise UserError(f"torch-pruning cannot trace this model's channel dependencies "
                        f"({e.__class__.__name__}: {str(e)[:120]}); singe-deploy cannot prune this model yet "
                        "(data-dependent reshapes are beyond torch-pruning); try another model") from None
    finally:
        model.train(was_training)
    return graph, groups


@contextlib.contextmanager
def known_warnings_off():
    """torch-pruning's warnings about cases handled here, silenced while it traces or prunes."""
    with warnings.catch_warnings():
        # tokens and layer scales outside a layer: the last non-singleton dim is their channel dim, as assumed
        warnings.filterwarnings("ignore", message="Unwrapped parameters detected")
        # shape inference giving up on a deep chain: the groups it concerns are left out (all_groups)
        warnings.filterwarnings("ignore", message="Maximum recursive depth reached")
        yield


def _root_groups(graph, ignored_layers):
    """graph.get_all_groups, except that a root whose group torch-pruning cannot map (it fails inside its
    index mapping: channels that cross a shuffle) is skipped instead of failing every group."""
    ignored = list(ignored_layers) + graph.IGNORED_LAYERS_IN_TRACING
    visited, groups = set(), []
    for m in list(graph.module2node):
        if m in visited or any(m is i for i in ignored) or not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            continue
        pruner = graph.get_pruner_of_module(m)
        if pruner is None or pruner.get_out_channels(m) is None:
            continue
        try:
            group = graph.get_pruning_group(m, pruner.prune_out_channels, list(range(pruner.get_out_channels(m))))
        except (_Opaque, IndexError):  # IndexError: a split whose sizes torch-pruning could not infer
            continue
        outs = [dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler)]
        visited.update(outs)
        if not any(o is i for o in outs for i in ignored):
            groups.append(group)
    return groups


def _supported(group):
    """Whether torch-pruning prunes every layer of the group consistently: not a depthwise conv with a channel
    multiplier (groups == in_channels < out_channels), whose input slices it cuts to nothing."""
    for item in group:
        layer = item.dep.target.module
        if (isinstance(layer, nn.modules.conv._ConvNd) and 1 < layer.groups == layer.in_channels
                and layer.out_channels != layer.in_channels):
            return False
    return True


def _in_bounds(group, names):
    """Whether every index the group removes exists in its parameter: torch-pruning maps some reshapes (split
    q/k/v heads) to indices past a layer's width; such a group would not prune consistently."""
    for s in slices(group, names):
        size = s.param.shape[s.dim] * s.groups
        if len(s.idxs) and int(s.idxs.max()) >= size:
            return False
    return True


OPAQUE = "_singe_opaque_reshapes"  # graph attribute: reshape nodes torch-pruning could not map


class _Opaque(Exception):
    """Raised when a group's traversal reaches a reshape whose channel mapping is unknown."""


def _opaque_mapping(idxs):
    raise _Opaque


def _tolerant(update):
    """Wrap torch-pruning's reshape index mapping. A channel shuffle's views regroup channels: torch-pruning
    divides by zero on the first (or maps it as a flatten, which blows indices up) and ignores the second.
    Mark such a reshape opaque on the graph, and make every dependency through it raise _Opaque, so the groups
    that cross it are skipped quickly instead of failing the trace or being pruned at the wrong indices."""
    if getattr(update, "_singe_tolerant", False):
        return update

    def guarded(graph, node):
        opaque = graph.__dict__.setdefault(OPAQUE, set())
        if node not in opaque and not _high_rank_reshape(node):
            try:
                return update(graph, node)
            except ZeroDivisionError:
                pass
        opaque.add(node)
        for dep in node.dependencies:
            dep.index_mapping[0] = _opaque_mapping
        for other in list(node.inputs) + list(node.outputs):
            for dep in other.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _opaque_mapping

    guarded._singe_tolerant = True
    return guarded


index_mapping.update_reshape_index_mapping = _tolerant(index_mapping.update_reshape_index_mapping)


def _spatial_slices(update):
    """Wrap torch-pruning's slice index mapping, which takes a slice along dim 1 of a 4-D tensor for a channel
    slice. A channels-last map (LeViT's subsampling: tokens viewed as (B, H, W, C), then [:, ::2, ::2]) is sliced
    along its height there, and channel indices pass through unchanged: such a slice keeps the identity mapping.
    A slice is taken as spatial when the sliced dim's size differs from the channel count of the layer that
    produced the tensor."""
    if getattr(update, "_singe_spatial", False):
        return update

    def guarded(graph, node):
        sizes, dim = _input_sizes(node), getattr(node.module, "dim", None)
        channels = _producer_channels(node)
        if sizes and dim is not None and channels is not None and sizes[dim] != channels and sizes[-1] == channels:
            return None
        return update(graph, node)

    guarded._singe_spatial = True
    return guarded


def _producer_channels(node, hops=8):
    """The output width of the nearest conv, linear or norm layer upstream of a node (through element-wise ops,
    reshapes and slices), or None."""
    frontier = list(node.inputs)
    for _ in range(hops):
        nxt = []
        for n in frontier:
            m = n.module
            if isinstance(m, nn.Linear):
                return m.out_features
            if isinstance(m, nn.modules.conv._ConvNd):
                return m.out_channels
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                return m.num_features
            if isinstance(m, nn.LayerNorm):
                return m.normalized_shape[-1]
            if n.type in (tp_ops.OPTYPE.ELEMENTWISE, tp_ops.OPTYPE.RESHAPE, tp_ops.OPTYPE.SLICE):
                nxt.extend(n.inputs)
        frontier = nxt
    return None


index_mapping.update_slice_index_mapping = _spatial_slices(index_mapping.update_slice_index_mapping)


def _high_rank_reshape(node, hops=3):
    """A view that regroups channels: its input has more than 4 dims, or its output reaches such a view through
    a few element-wise ops (the first view of a channel shuffle, then its transpose)."""
    if node.type != tp_ops.OPTYPE.RESHAPE:
        return False
    frontier = [node]
    for _ in range(hops + 1):
        nxt = []
        for n in frontier:
            if n.type == tp_ops.OPTYPE.RESHAPE and len(_input_sizes(n)) > 4:
                return True
            if n is node or n.type in (tp_ops.OPTYPE.ELEMENTWISE, tp_ops.OPTYPE.RESHAPE):
                nxt.extend(n.outputs)
        frontier = nxt
    return False


def _input_sizes(node):
    for attr in ("_saved_self_sym_sizes", "_saved_self_sizes"):
        sizes = getattr(node.grad_fn, attr, None)
        if sizes is not None:
            return tuple(sizes)
    return ()


def default_ignored(model):
    """Layers never pruned: the classifier (the last Linear, or a final 1x1 conv head) keeps its classes, and the
    projections an attention block reshapes into heads (q, k, v) keep their width, since the block's head count
    and head size are static attributes. Its output projection and the MLP stay prunable. A detector's heads (and
    what its RoI heads read) stay whole too (detection.py)."""
    from ..models.detection import kept_layers

    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        layers = [linears[-1]]
    else:
        layers = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)][-1:]
    for m in model.modules():
        layout = head_layout(m)
        if layout is not None:  # heads go whole through q/k/v; other layers inside (a bias MLP) stay whole
            layers += [x for name, c in m.named_children() if c is not layout[0] and name not in OUTPUT_PROJECTIONS
                       for x in c.modules() if isinstance(x, (nn.Linear, nn.modules.conv._ConvNd))]
        elif hasattr(m, "num_heads") and not isinstance(m, nn.MultiheadAttention) and not _holds_attention(m):
            layers += [x for name, c in m.named_children() if name not in OUTPUT_PROJECTIONS for x in c.modules()
                       if isinstance(x, (nn.Linear, nn.modules.conv._ConvNd))]  # q/k/v wrapped with a norm too
    return layers + [m for m in kept_layers(model) if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


def _holds_attention(m):
    """Whether m is a block around an attention module (torchvision's EncoderBlock keeps a num_heads too), not
    the attention itself."""
    return any(x is not m and (hasattr(x, "num_heads") or isinstance(x, nn.MultiheadAttention)) for x in m.modules())


def head_layout(m):
    """(qkv layer, head size) for an attention block whose heads can go whole: one qkv Linear producing q, k and
    v of num_heads x head_dim each, a width of its own (attn_dim, as timm's Attention), so removing a head
    leaves head_dim and the embedding as they are. None for any other block."""
    if has_head_attributes(m) and m.attn_dim == m.num_heads * m.head_dim and m.qkv.out_features == 3 * m.attn_dim:
        return m.qkv, m.head_dim
    return None


# attention outputs, back to the stream
OUTPUT_PROJECTIONS = ("proj", "out_proj", "o_proj", "to_out", "fc_out", "merge")
