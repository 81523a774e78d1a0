import copy

import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from singe_deploy.errors import UserError
from singe_deploy.groups import all_groups, default_ignored, param_names, slices
from singe_deploy.importance import make_criterion

from .conftest import batches


def _groups(model):
    return all_groups(model, torch.zeros(1, 1, 12, 12), default_ignored(model))[1]


def _grads(model, x, y, overrides=None):
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _per_unit_manual(model, group, fn):
    """fn(name, mask) summed over the parameters, mask = the union of a root channel's elements."""
    names = param_names(model)
    n = len(group[0].idxs)
    out = torch.zeros(n, dtype=torch.float64)
    for unit in range(n):
        masks = {}
        for s in slices(group, names):
            masks.setdefault(s.name, torch.zeros_like(s.param, dtype=torch.bool))
            masks[s.name] |= s.mask(s.root_idxs == unit)
        out[unit] = sum(fn(name, m).double() for name, m in masks.items())
    return out


def test_l2_is_the_group_norm(tiny):
    groups = _groups(tiny)
    scores = make_criterion("l2").score(tiny, groups)
    params = dict(tiny.named_parameters())
    for g, s in zip(groups, scores):
        manual = _per_unit_manual(tiny, g, lambda n, m: params[n].detach()[m].pow(2).sum()).sqrt()
        assert torch.allclose(s, manual, rtol=1e-6)


def test_taylor_counts_every_slice_batchnorm_included(tiny):
    data = batches(1)
    groups = _groups(tiny)
    scores = make_criterion("taylor").score(tiny, groups, data)
    grads = _grads(tiny, *data[0])
    params = dict(tiny.named_parameters())
    for g, s in zip(groups, scores):
        contrib = lambda n, m: (params[n].detach() * grads[n])[m].abs().sum()
        manual = _per_unit_manual(tiny, g, contrib)
        assert torch.allclose(s, manual, rtol=1e-4, atol=1e-9)
        if any(isinstance(i.dep.target.module, torch.nn.BatchNorm2d) for i in g):
            bn = _per_unit_manual(tiny, g, lambda n, m: contrib(n, m) if n.startswith("bn") else torch.tensor(0.0))
            assert bn.min() > 0  # torch-pruning 1.6.1's Taylor leaves these out


def test_hessian_accumulates_every_batch(tiny):
    data = batches(2)
    groups = _groups(tiny)
    hess = lambda b: make_criterion("hessian").score(tiny, groups, b)
    both, first, second = hess(data), hess(data[:1]), hess(data[1:])
    for a, b, c in zip(both, first, second):
        assert torch.allclose(a, (b + c) / 2, rtol=1e-5)
        assert not torch.allclose(a, c)  # keeping only the last batch would give c


def test_singe_one_step_elementwise_is_taylor(tiny):
    data = batches(2)
    groups = _groups(tiny)
    taylor = make_criterion("taylor", norm=1).score(tiny, groups, data)
    singe = make_criterion("singe", steps=1, norm=1, elementwise=True, path="network").score(tiny, groups, data)
    for a, b in zip(taylor, singe):
        assert torch.allclose(a, b, rtol=1e-5)


def test_singe_unit_path_matches_a_direct_riemann_sum(tiny):
    data = batches(1)
    groups = _groups(tiny)
    steps, p = 3, 2
    g = min(groups, key=lambda g: len(g[0].idxs))
    scores = make_criterion("singe", steps=steps, norm=p, path="unit").score(tiny, [g], data)[0]
    names = param_names(tiny)
    gs = slices(g, names)
    for unit in (0, 3):
        total = 0.0
        for k in range(1, steps + 1):
            mu = k / steps
            moved = copy.deepcopy(tiny)
            params = dict(moved.named_parameters())
            masks = {}
            for s in gs:
                masks.setdefault(s.name, torch.zeros_like(s.param, dtype=torch.bool))
                masks[s.name] |= s.mask(s.root_idxs == unit)
            with torch.no_grad():
                for n, m in masks.items():
                    params[n][m] *= mu
            grads = _grads(moved, *data[0])
            wn = sum(params[n].detach()[m].pow(2).sum() for n, m in masks.items()).sqrt()
            gn = sum(grads[n][m].pow(2).sum() for n, m in masks.items()).sqrt()
            total += float(wn * gn)
        assert scores[unit].item() == pytest.approx(total / steps, rel=1e-4)


def test_singe_paths_agree_on_a_single_group(tiny):
    data = batches(1)
    g = _groups(tiny)[:1]
    net = make_criterion("singe", steps=2, path="network").score(tiny, g, data)[0]
    grp = make_criterion("singe", steps=2, path="group").score(tiny, g, data)[0]
    assert torch.allclose(net, grp, rtol=1e-6)


def test_singe_is_not_magnitude_times_gradient_at_one_point(tiny):
    data = batches(1)
    groups = _groups(tiny)
    one = make_criterion("singe", steps=1).score(tiny, groups, data)
    many = make_criterion("singe", steps=8).score(tiny, groups, data)
    assert not all(torch.allclose(a, b) for a, b in zip(one, many))


def test_bn_scores_sum_gamma_and_skip_groups_without_norms(tiny):
    groups = _groups(tiny)
    scores = make_criterion("bn").score(tiny, groups)
    for g, s in zip(groups, scores):
        has_bn = any(isinstance(i.dep.target.module, torch.nn.BatchNorm2d) for i in g)
        assert (s is None) == (not has_bn)
        if has_bn:
            manual = _per_unit_manual(tiny, g, lambda n, m: dict(tiny.named_parameters())[n].detach()[m].abs().sum()
                                      if n.startswith("bn") and n.endswith("weight") else torch.tensor(0.0))
            assert torch.allclose(s, manual)


def test_random_is_seeded(tiny):
    groups = _groups(tiny)
    a = make_criterion("random", seed=1).score(tiny, groups)
    b = make_criterion("random", seed=1).score(tiny, groups)
    c = make_criterion("random", seed=2).score(tiny, groups)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not all(torch.equal(x, y) for x, y in zip(a, c))


def test_criteria_are_torch_pruning_importances(tiny):
    """A fitted criterion drives torch-pruning's own pruner."""
    crit = make_criterion("singe", steps=2)
    crit.fit(tiny, _groups(tiny), batches(1))
    pruner = tp.pruner.BasePruner(tiny, torch.zeros(1, 1, 12, 12), importance=crit, pruning_ratio=0.5,
                                  ignored_layers=[tiny.head])
    pruner.step()
    assert tiny.expand.out_channels == 12
    assert tiny(torch.zeros(2, 1, 12, 12)).shape == (2, 4)


def test_bad_names_and_options():
    with pytest.raises(UserError, match="unknown criterion"):
        make_criterion("magnitude")
    with pytest.raises(UserError, match="path"):
        make_criterion("singe", path="layerwise")
    with pytest.raises(UserError):
        make_criterion("l1", steps=3)


def test_data_criteria_need_batches(tiny):
    with pytest.raises(UserError, match="calibration"):
        make_criterion("taylor").score(tiny, _groups(tiny), [])


def test_scoring_restores_train_mode(tiny):
    tiny.train()
    make_criterion("taylor").score(tiny, _groups(tiny), batches(1))
    assert tiny.training
