import torch

from singe_deploy.groups import all_groups, channel_groups, default_ignored, param_names, per_unit, slices


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
