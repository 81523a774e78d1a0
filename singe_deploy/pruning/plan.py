"""From group scores to a plan: which channels each dependency group loses at a pruning step.

A pruning level is turned into per-group channel counts by ranking (see Planner); `search` finds by bisection
the lowest level whose pruned model meets the step's target. A level's cost is predicted exactly from the
channel counts where the model allows it (Predictor: every MAC in a leaf conv or linear layer, whose MACs
scale with its weight's size) and the chosen level is then measured on a pruned copy with the real counter;
where the prediction is not exact, or the measurement disagrees, every level tried is measured, so the
target holds for any topology.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import UserError
from ..measure.flops import channels_of, count
from ..models.specs import fix_size_attributes
from ..progress import progress
from .groups import (
    UnitMap,
    all_groups,
    channel_groups,
    drop_heads,
    head_layout,
    is_out_handler,
    known_warnings_off,
    param_names,
    slices,
)

# how a pruning level becomes channel counts per group (see Planner)
RANKINGS = ("global", "raw", "cost", "local")


def measure(model, input_shape, metric):
    if metric == "params":
        return sum(p.numel() for p in model.parameters())
    return count(model, input_shape).macs


def measure_pruned(model, input_shape, metric):
    """measure() of a freshly pruned model, whose forward pass must still run (counting MACs runs it)."""
    try:
        if metric == "params":
            with torch.no_grad():
                model.eval()(torch.zeros(input_shape))
        return measure(model, input_shape, metric)
    except Exception as e:
        raise UserError(f"pruning breaks this model's forward pass ({e.__class__.__name__}: {str(e)[:120]}): "
                        "it has static shapes (reshape sizes, head counts) that torch-pruning does not update; "
                        "keep those layers with --ignore-layers or prune another model") from None


class Planner:
    """Turns group scores and an integer level into channel indices to remove per group.

    Global rankings: each group's channels, sorted by score, are cut into chunks of `round_to`
    channels (per block for grouped convs); level k removes the k chunks of lowest key across all
    groups, so one level more is one chunk more. The key of a chunk is its mean score divided by the
    group's mean score (`global`), its mean score (`raw`: for criteria whose scale is comparable
    across layers), or its mean score divided by what one channel of the group costs (`cost`: MACs or
    params, from channel_costs; removed greedily by damage per unit of cost). Local ranking: level k
    of `levels` removes the fraction k/levels of every group, kept counts rounded up. The q/k/v projection of an
    attention block with its own width (groups.head_layout) loses whole heads: its unit is a head (a head's
    channels of q, k and v go together, scored by their mean), and round_to does not apply.
    """

    LOCAL_LEVELS = 1000

    def __init__(self, model, groups, scores, dense_channels, schedule, names, costs=None):
        self.schedule = schedule
        self.entries = []  # (name, handler, channels per block, blocks, block scores, most removable)
        self.divisors = []  # per entry: what a chunk's mean score is divided by to rank it
        self.groups = []  # per entry: its dependency group
        if schedule.ranking == "cost" and costs is None:
            raise UserError("ranking 'cost' needs the channel costs (prune() passes them)")
        self.units = []  # per entry: root channels per unit within a block (a head's size; 1 for channels)
        self.quanta = []  # per entry: units per block removed at a time (_quantum)
        heads = {id(layout[0]): layout[1] for m in model.modules() if (layout := head_layout(m)) is not None}
        for k, (g, s) in enumerate(zip(groups, scores)):
            if s is None:
                continue
            root = g[0].dep.target.module
            name = names[id(root)]
            unit = heads.get(id(root), 1)
            blocks = 3 if unit > 1 else channel_groups(g)  # q, k and v lose the same heads
            n = len(g[0].idxs)
            if n % (blocks * unit):
                continue
            per_block = s.double().view(blocks, -1, unit).mean((0, 2))  # one score per unit of a block
            dense = dense_channels.setdefault(name, n) // (blocks * unit)
            q = self._quantum(blocks, unit, dense * blocks * unit)
            keep_min = max(q, math.ceil((1 - schedule.max_layer_ratio) * dense))
            most = len(per_block) - keep_min
            self.entries.append((name, g[0].dep.handler, len(per_block), blocks, per_block, max(most, 0)))
            self.units.append(unit)
            self.quanta.append(q)
            self.groups.append(g)
            self.divisors.append(self._divisor(per_block, costs[k] if costs is not None else None))
        self.chunks = self._chunks() if schedule.ranking != "local" else None
        self.levels = len(self.chunks) if self.chunks is not None else self.LOCAL_LEVELS

    def _quantum(self, blocks, unit=1, width=None):
        """Units removed at a time per block: round_to channels in all (whole heads are one unit each). A layer
        narrower than twice round_to (its dense `width`) takes the largest half of it that fits twice, so that it can
        still be pruned: 8 for a 16-channel layer at round_to 16 (narrow_layers "keep": it stays whole)."""
        r = self.schedule.round_to or 1
        while self.schedule.narrow_layers == "halve" and width is not None and r > 1 and 2 * r > width:
            r //= 2
        return 1 if unit > 1 else r // math.gcd(r, blocks)

    def _divisor(self, scores, cost):
        ranking = self.schedule.ranking
        if ranking == "global":
            return float(scores.mean()) + 1e-12
        if ranking == "cost":
            return max(float(cost), 1e-12)
        return 1.0

    def _chunks(self):
        """(key, entry index, channels removed after this chunk), in the order they are removed."""
        out = []
        for i, (_, _, n, blocks, s, most) in enumerate(self.entries):
            q = self.quanta[i]
            norm = torch.sort(s / self.divisors[i]).values
            removed = n % q  # first bring an unaligned layer to a multiple of q
            if removed and removed <= most:
                out.append((float(norm[:removed].mean()), i, removed))
            elif removed:
                continue
            while removed + q <= most:
                out.append((float(norm[removed:removed + q].mean()), i, removed + q))
                removed += q
        # within a group, chunk means never decrease, so sorting keeps each group's order
        return sorted(out, key=lambda c: (c[0], c[1], c[2]))

    def counts(self, level):
        """Channels removed per block for each entry at an integer level in [0, levels]."""
        if self.chunks is not None:
            out = [0] * len(self.entries)
            for _, i, removed in self.chunks[:level]:
                out[i] = max(out[i], removed)
            return out
        out = []
        for (_, _, n, blocks, _, most), q in zip(self.entries, self.quanta):
            r = min(int(math.floor(level / self.levels * n + 1e-9)), most)
            kept = math.ceil((n - r) / q) * q
            out.append(0 if kept >= n else n - kept)
        return out

    def removed(self, i, r):
        """The root channel indices entry i loses when it loses r units (channels, or whole heads) per block."""
        _, _, n, blocks, s, _ = self.entries[i]
        unit = self.units[i]
        positions = torch.argsort(s, stable=True)[:r].tolist()
        return sorted((b * n + p) * unit + j for b in range(blocks) for p in positions for j in range(unit))

    def removals(self, counts):
        """(module name, handler, idxs) for every entry that loses channels."""
        return [(self.entries[i][0], self.entries[i][1], self.removed(i, r)) for i, r in enumerate(counts) if r > 0]


def channel_costs(model, groups, input_shape, metric):
    """What removing one root channel of each group saves: MACs (per sample) or params, summed over every layer
    slice the group removes with it (each layer's cost split evenly over its channels; a layer that also
    loses channels of another group is counted in full for each, so this is the first-order saving)."""
    if metric == "params":
        names = param_names(model)
        group_slices = [slices(g, names) for g in groups]
        sizes = [len(g[0].idxs) for g in groups]
        umap = UnitMap(group_slices, sizes)
        per = umap.split(umap.sums({n: torch.ones_like(p) for n, p in model.named_parameters()}))
        return [float(p.mean()) if len(p) else 0.0 for p in per]
    layer_macs = {layer.name: layer.macs for layer in count(model, input_shape).layers}
    modules = {id(m): n for n, m in model.named_modules()}
    costs = []
    for g in groups:
        n = len(g[0].idxs)
        total = 0.0
        for item in g:
            layer = item.dep.target.module
            macs = layer_macs.get(modules.get(id(layer)), 0)
            if not macs:
                continue
            cin, cout = channels_of(layer)
            out = is_out_handler(item.dep.handler)
            depthwise = isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == layer.in_channels > 1
            if (not out and depthwise) or not (cout if out else cin):
                continue  # a depthwise conv's input channels are its output channels
            total += macs / (cout if out else cin) * len(item.idxs) / n
        costs.append(total)
    return costs


def apply_plan(model, plan, example, graph=None):
    """Remove the planned channels through the dependency graph (consistent across coupled layers); `graph`:
    the model's graph when already built (it is used up)."""
    if not plan:
        return model
    if graph is None:
        graph, _ = all_groups(model, example)
    modules = dict(model.named_modules())
    heads = param_names(model).heads
    with known_warnings_off():
        for name, handler, idxs in plan:
            graph.get_pruning_group(modules[name], handler, idxs).prune()
            if id(modules[name]) in heads:
                drop_heads(model, heads[id(modules[name])], idxs)
    fix_size_attributes(model)
    for p in model.parameters():
        p.grad = None
        if not p.data.is_contiguous():  # pruned 1x1 convs can keep the dense strides
            p.data = p.data.contiguous()
    return model


class _Costs:
    """A cost per channel counts, cached (a search asks for the same counts more than once)."""

    def __call__(self, counts):
        counts = tuple(counts)
        if counts not in self.cache:
            self.cache[counts] = self._cost(counts)
        return self.cache[counts]


class Predictor(_Costs):
    """The exact MACs or params of the model pruned to given channel counts, without pruning it.

    Every parameter slice the planner's groups remove is known (groups.slices), so each parameter's pruned
    shape follows from the counts. Params are the sum of those shapes' sizes. A conv's or linear layer's MACs
    are its weight's size times the positions it is applied at (output pixels, tokens), which pruning channels
    does not change, so they scale with the weight's size. An attention block whose heads go whole
    (groups.head_layout) has matmul MACs proportional to its inner width, q/k/v's rows. MACs anywhere else
    (other attention matmuls in a module's own forward) are taken as unchanged: exact where pruning leaves their
    sizes alone (Swin's q/k/v stay whole), an overestimate where it does not. `search` checks the chosen level against a pruned copy and measures
    every level when they differ. `build` returns None where a layer's MACs cannot be scaled at all."""

    def __init__(self, planner, model, metric, names, layers=None, constant=0, rows=None):
        self.planner = planner
        self.shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
        self.slices = []  # per entry: [(param name, dim, groups, idxs, root idxs)]
        for g in planner.groups:
            self.slices.append([(s.name, s.dim, s.groups, s.idxs.long(), s.root_idxs.long())
                                for s in slices(g, names)])
        # what is counted: {param name: MACs per weight element} for MACs, {param name: 1} for params
        self.weights = layers if metric == "macs" else {n: 1 for n in self.shapes}
        self.constant = constant if metric == "macs" else 0
        self.rows = (rows or {}) if metric == "macs" else {}  # {q/k/v weight name: MACs per unit of inner width}
        self.cache = {}

    @classmethod
    def build(cls, planner, model, input_shape, metric):
        names = param_names(model)
        if metric == "params":
            return cls(planner, model, metric, names)
        modules = dict(model.named_modules())
        per_element, constant, rows = {}, 0, {}
        for layer in count(model, input_shape).layers:
            if not layer.macs:
                continue
            m = modules.get(layer.name)
            layout = head_layout(m) if m is not None else None
            width = layout[0].weight.shape[0] // 3 if layout is not None else 0  # q/k/v's rows / 3
            if width and id(layout[0].weight) in names and layer.macs % width == 0:
                rows[names[id(layout[0].weight)]] = layer.macs // width  # q @ k^T, attn @ v: tokens^2 x width
                continue
            if not isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)) or any(True for _ in m.children()):
                constant += layer.macs
                continue
            weight = m.weight
            if (id(weight) not in names or names[id(weight)] in per_element or layer.macs % weight.numel()
                    or (isinstance(m, nn.modules.conv._ConvNd) and m.transposed and m.groups > 1)):
                return None
            per_element[names[id(weight)]] = layer.macs // weight.numel()
        return cls(planner, model, metric, names, per_element, constant, rows)

    def _cost(self, counts):
        removed = {}  # (param name, dim, groups) -> [removed indices along dim]
        for i, r in enumerate(counts):
            if r <= 0:
                continue
            roots = torch.tensor(self.planner.removed(i, r))
            for name, dim, groups, idxs, root_idxs in self.slices[i]:
                removed.setdefault((name, dim, groups), []).append(idxs[torch.isin(root_idxs, roots)])
        shapes = {n: list(s) for n, s in self.shapes.items()}
        for (name, dim, groups), parts in removed.items():
            gone = len(torch.unique(torch.cat(parts)))
            shapes[name][dim] -= gone // groups
        return (self.constant + sum(w * math.prod(shapes[n]) for n, w in self.weights.items())
                + sum(w * shapes[n][0] // 3 for n, w in self.rows.items()))


def search(planner, model, example, input_shape, metric, target, desc, predict=None, timed=None):
    """Lowest level whose pruned copy meets `target` (bisection on levels); returns (plan, cost, reached,
    measured): levels are costed by the Predictor where it is exact and the chosen one is measured on a pruned
    copy; where it is not (or the measurement disagrees), every level tried is measured (`measured` True).
    `predict` (counts -> cost) replaces both, for latency: a prediction; with `timed` (a pruned copy -> measured
    cost) too, the levels are bisected again by measurement (`measured` True), the prediction deciding only what
    is unreachable."""
    if predict is not None:
        cost = _Predicted(predict)
        counts, reached = _bisect(planner, cost, target, None)
        planner.predicted = cost(counts)
        if timed is None or not reached:
            return planner.removals(counts), cost(counts), reached, False
        real = _Predicted(lambda c: timed(apply_plan(copy.deepcopy(model), planner.removals(c), example)))
        # removing nothing cannot make the model faster: where the prediction says it misses, a timing saying
        # otherwise is the machine's noise, and the bisection does not take level 0
        counts, reached = _bisect(planner, real, target, desc, zero_misses=cost(planner.counts(0)) > target)
        planner.predicted = cost(counts)
        return planner.removals(counts), real(counts), reached, True
    predictor = Predictor.build(planner, model, input_shape, metric)
    real = _Measured(planner, model, example, input_shape, metric)
    if predictor is not None:
        counts, reached = _bisect(planner, predictor, target, None)
        if real(counts) == predictor(counts):
            return planner.removals(counts), real(counts), reached, False
    counts, reached = _bisect(planner, real, target, desc)
    return planner.removals(counts), real(counts), reached, True


class _Predicted(_Costs):
    def __init__(self, predict):
        self._cost, self.cache = predict, {}


class _Measured(_Costs):
    """The real count of a pruned copy, per channel counts (cached)."""

    def __init__(self, planner, model, example, input_shape, metric):
        self.planner, self.model, self.example, self.shape, self.metric = planner, model, example, input_shape, metric
        self.cache = {}

    def _cost(self, counts):
        pruned = apply_plan(copy.deepcopy(self.model), self.planner.removals(counts), self.example)
        return measure_pruned(pruned, self.shape, self.metric)


def _bisect(planner, cost, target, desc, zero_misses=False):
    """(channel counts of the lowest level whose cost meets target, reached); a progress bar when `desc`.
    zero_misses: level 0 is known to miss (not costed)."""
    lo, hi = 0, planner.levels
    if not zero_misses and cost(planner.counts(lo)) <= target:
        return planner.counts(lo), True
    best = planner.counts(hi)
    if cost(best) > target:
        return best, False
    bar = progress(total=max(1, math.ceil(math.log2(hi + 1))), desc=desc, unit="trial", disable=desc is None)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if cost(planner.counts(mid)) <= target:
            hi, best = mid, planner.counts(mid)
        else:
            lo = mid
        bar.update()
    bar.close()
    if planner.chunks is not None and cost(best) < 0.97 * target:
        best = _closer(planner, cost, lo, target, best, desc)
    return best, True


def _closer(planner, cost, lo, target, best, desc=None, tries=16):
    """When the next chunk overshoots the target by far, try one later (cheaper) chunk instead."""
    base = planner.counts(lo)
    candidates = []
    for _, i, removed in planner.chunks[lo + 1:lo + 1 + tries]:
        if removed > base[i]:
            candidates.append(list(base))
            candidates[-1][i] = removed
    # measured levels take seconds each: their own bar, so the one above does not sit at "done"
    bar = progress(total=len(candidates), desc=desc and f"{desc}, nearer the target", unit="trial",
                   disable=desc is None or not candidates)
    for candidate in candidates:
        if cost(best) < cost(candidate) <= target:
            best = candidate
        bar.update()
    bar.close()
    return best
