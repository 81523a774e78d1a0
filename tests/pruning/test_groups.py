import copy

import torch

from singe_deploy.pruning.groups import (
    all_groups,
    channel_groups,
    default_ignored,
    param_names,
    per_unit,
    slices,
)


def _groups(model, shape=(1, 1, 12, 12)):
    return all_groups(model, torch.zeros(shape), default_ignored(model))[1]


def test_classifier_is_never_a_group(tiny):
    groups = _groups(tiny)
    roots = [g[0].dep.target.module for g in groups]
    assert tiny.head not in roots
    out_pruned = {item.dep.target.module for g in groups for item in g if "out" in item.dep.handler.__name__}
    assert {tiny.stem, tiny.grouped, tiny.dw, tiny.expand} <= out_pruned
    assert tiny.head not in out_pruned


def test_slice_reduce_matches_masked_sum(tiny):
    """For every slice, reduce(t) over an idx equals the sum of t over that idx's mask."""
    names = param_names(tiny)
    for g in _groups(tiny):
        for s in slices(g, names):
            t = torch.rand_like(s.param)
            reduced = s.reduce(t)
            for j in range(len(s.idxs)):
                select = torch.zeros(len(s.idxs), dtype=torch.bool)
                select[j] = True
                assert torch.allclose(reduced[j], t[s.mask(select)].sum()), (s.name, j)


def test_grouped_conv_input_slice_only_touches_its_group(tiny):
    names = param_names(tiny)
    seen = False
    for g in _groups(tiny):
        for s in slices(g, names):
            if s.groups > 1:
                seen = True
                m = s.mask(torch.arange(len(s.idxs)) == 0)
                c = int(s.idxs[0])
                per_in = s.param.shape[1]
                rows = torch.nonzero(m.any(dim=(1, 2, 3))).flatten()
                per_out = s.param.shape[0] // s.groups
                assert rows.min() >= (c // per_in) * per_out and rows.max() < (c // per_in + 1) * per_out
    assert seen


def test_channel_groups_of_grouped_conv(tiny):
    blocks = {g[0].dep.target.module: channel_groups(g) for g in _groups(tiny)}
    assert max(blocks.values()) == 4


def test_per_unit_sums_over_slices(tiny):
    names = param_names(tiny)
    g = _groups(tiny)[0]
    gs = slices(g, names)
    ones = {s.name: torch.ones_like(s.param) for s in gs}
    counts = per_unit(gs, ones, len(g[0].idxs))
    manual = torch.zeros(len(g[0].idxs), dtype=torch.float64)
    for s in gs:
        for j, r in enumerate(s.root_idxs):
            sel = torch.zeros(len(s.idxs), dtype=torch.bool)
            sel[j] = True
            manual[r] += s.mask(sel).sum()
    assert torch.equal(counts, manual)


def test_building_the_graph_keeps_train_mode(tiny):
    tiny.train()
    _groups(tiny)
    assert tiny.training


def _tiny_shufflenet():
    from torchvision.models import ShuffleNetV2
    return ShuffleNetV2(stages_repeats=[2, 1, 1], stages_out_channels=[8, 16, 32, 64, 96], num_classes=5)


def _pruned_equals_masked(factory, shape):
    """For each group: removing two root channels (one per block of a grouped conv) gives the same output as the dense model with those
    channels' input slices (every conv/linear that reads them) zeroed. A group mapped at the wrong indices
    (a channel shuffle followed as if it were a flatten) fails this."""
    x = torch.randn(2, *shape[1:])
    torch.manual_seed(0)
    reference = factory().eval()
    n = len(_groups(reference, shape))
    assert n > 0
    for i in range(n):
        pruned, masked = [copy.deepcopy(reference) for _ in range(2)]
        graph, groups = all_groups(pruned, torch.zeros(shape), default_ignored(pruned))
        root = groups[i][0].dep
        size, blocks = len(groups[i][0].idxs), channel_groups(groups[i])
        remove = [b * (size // blocks) for b in range(blocks)] if blocks > 1 else [0, size - 1]
        graph.get_pruning_group(root.target.module, root.handler, remove).prune()
        names = param_names(masked)
        with torch.no_grad():
            for s in slices(_groups(masked, shape)[i], names):
                reads = s.dim == 1 and s.param.dim() >= 2  # input channels of a conv or linear (none transposed here)
                if reads:
                    select = torch.isin(s.root_idxs, torch.tensor(remove))
                    s.param[s.mask(select)] = 0
            assert torch.allclose(pruned.eval()(x), masked.eval()(x), atol=1e-5), f"group {i}"
    return n


def test_pruning_equals_masking_on_a_residual_model(tiny):
    assert _pruned_equals_masked(lambda: tiny, (1, 1, 12, 12)) == 2  # the stream (residual, grouped) and expand


def test_channel_shuffle_groups_are_mapped_or_left_out():
    """ShuffleNetV2's shuffles regroup channels: torch-pruning cannot map them, so the groups crossing one are
    left out and the branch-internal ones stay prunable, removed exactly as masking them would."""
    model = _tiny_shufflenet().eval()
    shape = (1, 3, 32, 32)
    groups = _groups(model, shape)
    roots = {g[0].dep.target.module for g in groups}
    mids = {m for name, m in model.named_modules() if name.endswith("branch2.3")}  # depthwise in each block
    assert mids <= {item.dep.target.module for g in groups for item in g}
    assert model.conv5[0] in roots
    last = model.stage4[0].branch2[5]  # its output goes through the shuffle
    assert last not in {item.dep.target.module for g in groups for item in g if "out" in item.dep.handler.__name__}
    assert _pruned_equals_masked(_tiny_shufflenet, shape) == len(groups)


class _Subsample(torch.nn.Module):
    """Tokens viewed as a channels-last map and subsampled (LeViT): the slices cut the height and width, and
    the channels pass through them unchanged."""

    def __init__(self):
        super().__init__()
        self.embed, self.mid = torch.nn.Linear(3, 16), torch.nn.Linear(16, 24)
        self.down, self.head = torch.nn.Linear(24, 32), torch.nn.Linear(32, 5)

    def forward(self, x):
        t = torch.relu(self.mid(self.embed(x.flatten(2).transpose(1, 2))))  # (B, 64 tokens, 24)
        b, n, c = t.shape
        t = t.view(b, 8, 8, c)[:, ::2, ::2].reshape(b, -1, c)  # (B, 16 tokens, 24)
        return self.head(torch.relu(self.down(t)).mean(1))


def test_a_slice_along_the_height_of_a_channels_last_map_keeps_the_channel_indices():
    model = _Subsample().eval()
    roots = {g[0].dep.target.module for g in _groups(model, (1, 3, 8, 8))}
    assert model.mid in roots
    assert _pruned_equals_masked(_Subsample, (1, 3, 8, 8)) == len(roots)
