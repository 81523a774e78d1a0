import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_pruning as tp

from singe_deploy.errors import UserError
from singe_deploy.pruning.groups import all_groups, default_ignored, param_names, slices
from singe_deploy.scoring.importance import make_criterion

from ..conftest import batches, needs_fashion


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


def test_frozen_path_is_the_unit_path_with_its_gradient_held_at_one(tiny):
    """frozen at m steps = the exact unit path at one step (mu = 1 only) times sum_k w_k mu_k, in one pass per
    batch; the completeness form is |<W_g, grad_g L>| (the first-order loss change of removing g)."""
    data = batches(2)
    groups = _groups(tiny)
    for elementwise in (False, True):
        crit = make_criterion("singe", path="frozen", steps=8, elementwise=elementwise)
        frozen = crit.score(tiny, groups, data)
        assert crit.passes == len(data)
        at_one = make_criterion("singe", path="unit", steps=1, elementwise=elementwise).score(tiny, groups, data)
        for a, b in zip(frozen, at_one):
            assert torch.allclose(a, b * 9 / 16, rtol=1e-5, atol=1e-12)  # mean of k/8, k = 1..8
    signed = make_criterion("singe", path="frozen", variant="completeness", rule="gauss", steps=3).score(
        tiny, groups, data)
    params = dict(tiny.named_parameters())
    grads = [_grads(tiny, x, y) for x, y in data]
    for g, s in zip(groups, signed):  # the batches' signed sums averaged, then |.| (Gauss weights sum to 1)
        mean = sum(_per_unit_manual(tiny, g, lambda n, m: (params[n].detach() * gr[n])[m].sum()) for gr in grads)
        assert torch.allclose(s, (mean / len(data)).abs(), rtol=1e-4, atol=1e-9)


def test_frozen_is_the_default_path_at_taylors_pass_count(tiny):
    crit = make_criterion("singe")
    assert crit.options["path"] == "frozen"
    assert crit.passes_per_sample(_groups(tiny)) == make_criterion("taylor").passes_per_sample(_groups(tiny))


@needs_fashion
def test_frozen_path_ranks_channels_like_the_exact_unit_path_on_a_trained_model():
    """On a small net trained on Fashion-MNIST (grouped and depthwise convolutions included), the frozen path's
    ranking is within the tolerance measured on three real models (Spearman >= 0.93 against the exact unit path,
    docs/research/singe-paths), and closer to it than the network path, the former default."""
    from singe_deploy.data.specs import make_data

    from ..conftest import TinyNet

    torch.manual_seed(0)
    data = make_data("fashion-mnist", batch_size=64, sample_shape=(1, 12, 12), seed=0, train_limit=12800)
    model = TinyNet(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _, (x, y) in zip(range(200), data.train):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    calib = data.calibration(1)
    groups = _groups(model)
    flat = lambda path: torch.cat(make_criterion("singe", path=path, steps=8).score(model, groups, calib)).numpy()  # noqa: E731
    unit = flat("unit")
    frozen, network = _spearman(flat("frozen"), unit), _spearman(flat("network"), unit)
    assert frozen >= 0.93 and frozen > network


def _spearman(a, b):
    rank = lambda v: np.argsort(np.argsort(v, kind="stable"), kind="stable")  # noqa: E731
    return float(np.corrcoef(rank(a), rank(b))[0, 1])


def test_singe_paths_agree_on_a_single_group(tiny):
    data = batches(1)
    g = _groups(tiny)[:1]
    net = make_criterion("singe", steps=2, path="network").score(tiny, g, data)[0]
    grp = make_criterion("singe", steps=2, path="group").score(tiny, g, data)[0]
    assert torch.allclose(net, grp, rtol=1e-6)


def test_singe_is_not_magnitude_times_gradient_at_one_point(tiny):
    data = batches(1)
    groups = _groups(tiny)
    one = make_criterion("singe", path="network", steps=1).score(tiny, groups, data)
    many = make_criterion("singe", path="network", steps=8).score(tiny, groups, data)
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


@pytest.mark.parametrize("path,elementwise,chunk", [("network", False, 4), ("network", True, 3), ("group", False, 2),
                                                    ("unit", False, 4)])
def test_batched_path_steps_equal_one_pass_per_step(tiny, path, elementwise, chunk):
    data = batches(2)
    groups = _groups(tiny)[:2] if path == "unit" else _groups(tiny)
    score = lambda b: make_criterion("singe", steps=4, path=path, elementwise=elementwise,
                                     batch_steps=b).score(tiny, groups, data)
    for a, b in zip(score(1), score(chunk)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-10)


def test_batched_path_steps_are_one_vmapped_pass(tiny, monkeypatch):
    import singe_deploy.scoring.importance as imp

    calls = []
    real = imp._vmapped_grads
    monkeypatch.setattr(imp, "_vmapped_grads", lambda *a: calls.append(len(next(iter(a[1].values())))) or real(*a))
    crit = make_criterion("singe", path="network", steps=8, batch_steps=3)
    crit.score(tiny, _groups(tiny), batches(2))
    assert calls == [3, 3, 2, 3, 3, 2]  # per batch: ceil(8 / 3) passes, not 8
    assert crit.fallback is None


def test_batched_path_steps_fall_back_when_vmap_cannot_batch(tiny, monkeypatch):
    import singe_deploy.scoring.importance as imp

    def refuse(*a):
        raise RuntimeError("vmap: an op without a batching rule\nmore")

    data, groups = batches(1), _groups(tiny)
    monkeypatch.setattr(imp, "_vmapped_grads", refuse)
    crit = make_criterion("singe", path="network", steps=4, batch_steps=4)
    fell_back = crit.score(tiny, groups, data)
    assert crit.fallback == "vmap: an op without a batching rule"
    monkeypatch.undo()
    one_by_one = make_criterion("singe", path="network", steps=4, batch_steps=1).score(tiny, groups, data)
    for a, b in zip(fell_back, one_by_one):
        assert torch.allclose(a, b)


def test_batch_steps_auto_is_one_by_one_on_cpu(tiny, monkeypatch):
    import singe_deploy.scoring.importance as imp

    monkeypatch.setattr(imp, "_vmapped_grads", lambda *a: pytest.fail("batched on CPU"))
    crit = make_criterion("singe", path="network", steps=4)
    crit.score(tiny, _groups(tiny), batches(2))
    assert crit.describe()["options"]["batch_steps"] == 1
    for bad in (0, "two", -1):
        with pytest.raises(UserError, match="batch_steps"):
            make_criterion("singe", batch_steps=bad)


@pytest.mark.parametrize("batched_cost,chosen", [(0.001, 4), (0.03, 1)])
def test_batch_steps_auto_on_cuda_keeps_the_faster_way(monkeypatch, batched_cost, chosen):
    import time

    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    seen = []

    def grads_at(mus):
        time.sleep(batched_cost * len(mus) if len(mus) > 1 else 0.01)
        return [{} for _ in mus]

    crit = make_criterion("singe", steps=8)
    mus = [mu for mu, _ in crit.nodes()]
    crit._choose_batch_steps(torch.device("cuda"), mus, grads_at, lambda mu, g: seen.append(mu))
    assert crit.options["batch_steps"] == chosen
    assert sorted(seen) == [k / 8 for k in range(1, 9)]  # every step computed once, none wasted


def test_batched_path_steps_halve_on_out_of_memory(tiny, monkeypatch):
    import singe_deploy.scoring.importance as imp

    sizes, real = [], imp._vmapped_grads

    def small_memory(model, stacked, x, y):
        sizes.append(len(next(iter(stacked.values()))))
        if sizes[-1] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return real(model, stacked, x, y)

    data, groups = batches(2), _groups(tiny)
    monkeypatch.setattr(imp, "_vmapped_grads", small_memory)
    crit = make_criterion("singe", path="network", steps=8, batch_steps=8)
    halved = crit.score(tiny, groups, data)
    assert crit.options["batch_steps"] == 2 and sizes.count(8) == 1 and sizes.count(4) == 1
    monkeypatch.undo()
    for a, b in zip(halved, make_criterion("singe", path="network", steps=8, batch_steps=1).score(tiny, groups, data)):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-10)


def test_quadrature_rules():
    import numpy as np

    for rule in ("riemann", "gauss"):
        for m in (1, 3, 8):
            nodes = make_criterion("singe", steps=m, rule=rule).nodes()
            assert len(nodes) == m and all(0 < mu <= 1 for mu, _ in nodes)
            assert abs(sum(w for _, w in nodes) - 1) < 1e-12
    cubic = lambda mu: 4 * mu ** 3  # integral over [0, 1] is 1
    gauss = sum(w * cubic(mu) for mu, w in make_criterion("singe", steps=2, rule="gauss").nodes())
    riemann = sum(w * cubic(mu) for mu, w in make_criterion("singe", steps=2).nodes())
    assert abs(gauss - 1) < 1e-12 and abs(riemann - 1) > 0.1
    assert np.allclose([mu for mu, _ in make_criterion("singe", steps=4).nodes()], [0.25, 0.5, 0.75, 1.0])
    with pytest.raises(UserError, match="rule"):
        make_criterion("singe", rule="simpson")


def test_gauss_rule_weights_each_node(tiny):
    """One-node Gauss is the integrand at mu = 1/2 (weight 1): twice the elementwise Taylor score of the
    half-scaled model's gradient, which a direct computation reproduces."""
    data = batches(1)
    groups = _groups(tiny)
    half = make_criterion("singe", path="network", steps=1, rule="gauss", norm=1, elementwise=True).score(
        tiny, groups, data)
    scaled = copy.deepcopy(tiny)
    names = param_names(tiny)
    with torch.no_grad():
        masks = {}
        for g in groups:
            for s in slices(g, names):
                masks.setdefault(s.name, torch.zeros_like(s.param, dtype=torch.bool))
                masks[s.name] |= s.mask(None)
        for n, p in scaled.named_parameters():
            if n in masks:
                p[masks[n]] *= 0.5
    grads = _grads(scaled.eval(), *data[0])
    params = dict(tiny.named_parameters())
    for g, s in zip(groups, half):
        manual = _per_unit_manual(tiny, g, lambda n, m: (0.5 * params[n].detach() * grads[n])[m].abs().sum())
        assert torch.allclose(s, manual, rtol=1e-4, atol=1e-9)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_path_steps_on_cuda_match_the_cpu(tiny):
    data, groups = batches(2), _groups(tiny)
    cpu = make_criterion("singe", path="network", steps=8, batch_steps=1).score(tiny, groups, data)
    gpu_model = copy.deepcopy(tiny).cuda()
    gpu_groups = _groups_on(gpu_model)
    for bs in (8, "auto"):
        crit = make_criterion("singe", path="network", steps=8, batch_steps=bs)
        scores = crit.score(gpu_model, gpu_groups, [(x.cuda(), y.cuda()) for x, y in data])
        assert crit.fallback is None and crit.options["batch_steps"] in (1, 4, 8)
        for a, b in zip(cpu, scores):
            assert torch.allclose(a, b.cpu(), rtol=1e-3, atol=1e-7)


def _groups_on(model):
    return all_groups(model, torch.zeros(1, 1, 12, 12, device="cuda"), default_ignored(model))[1]


# --- completeness, removal and the replicated unit path ---

class ChainNet(torch.nn.Module):
    """Residual, grouped, depthwise and linear layers, no layer with input and output channels in one group
    (so the activation hooks serve it); `act` is the nonlinearity."""

    def __init__(self, act=torch.nn.functional.relu):
        super().__init__()
        nn = torch.nn
        self.act = act
        self.stem = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.a = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn1 = nn.BatchNorm2d(8)
        self.b = nn.Conv2d(8, 8, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.fc1 = nn.Linear(8, 12)
        self.ln = nn.LayerNorm(12)
        self.head = nn.Linear(12, 4)
        for bn in (self.bn0, self.bn1, self.bn2):  # statistics that are not the identity
            bn.running_mean.uniform_(-0.3, 0.3)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.3, 0.3)

    def forward(self, x):
        x = self.act(self.bn0(self.stem(x)))
        x = x + self.bn2(self.b(self.act(self.bn1(self.a(x)))))
        x = self.act(self.dw(x)).mean((2, 3))
        return self.head(self.ln(self.act(self.fc1(x))))


def _chain(act=torch.nn.functional.relu):
    model = ChainNet(act).eval()
    return model, all_groups(model, torch.zeros(1, 1, 12, 12), default_ignored(model))[1]


def _removal_measured(model, groups, data):
    """Loss change of zeroing each unit's parameter slices, measured directly."""
    names = param_names(model)
    out = []
    with torch.no_grad():
        base = sum(F.cross_entropy(model(x), y).item() for x, y in data) / len(data)
        for g in groups:
            gs = slices(g, names)
            scores = []
            for j in range(len(g[0].idxs)):
                m = copy.deepcopy(model)
                mp = dict(m.named_parameters())
                for s in gs:
                    mp[s.name].data[s.mask(s.root_idxs == j)] = 0
                scores.append(sum(F.cross_entropy(m(x), y).item() for x, y in data) / len(data) - base)
            out.append(torch.tensor(scores, dtype=torch.float64))
    return out


def _force_weights(monkeypatch):
    from singe_deploy.scoring import unitpath

    monkeypatch.setattr(unitpath.UnitScaler, "_check", lambda self, model, gs: "forced for the test")


def test_completeness_is_the_loss_change_of_removal_smooth_model():
    model, groups = _chain(torch.nn.functional.gelu)
    data = batches(2, size=16)
    measured = _removal_measured(model, groups, data)
    crit = make_criterion("singe", path="unit", variant="completeness", steps=8, rule="gauss")
    scores = crit.score(model, groups, data)
    assert crit.fallback is None  # the replicated hooks served it
    for est, true in zip(scores, measured):
        # Gauss-Legendre with 8 points is exact to degree 15; a smooth integrand leaves float error only
        assert torch.allclose(est, true.abs(), atol=2e-5, rtol=1e-3), (est, true)
    assert max(t.abs().max() for t in measured) > 1e-3  # not trivially zero


def test_completeness_converges_to_the_removal_loss_change_on_a_relu_model():
    model, groups = _chain()
    data = batches(1, size=16)
    true = torch.cat(_removal_measured(model, groups, data)).abs()
    def error(m, rule):
        crit = make_criterion("singe", path="unit", variant="completeness", steps=m, rule=rule)
        return (torch.cat(crit.score(model, groups, data)) - true).abs().max().item()

    assert error(32, "riemann") < error(2, "riemann") / 8  # the right Riemann sum's error is O(1/m)
    assert error(32, "gauss") < 0.005 * true.max().item()  # ReLU's kinks leave a small quadrature error


def test_replicated_unit_path_equals_moving_the_weights(monkeypatch):
    model, groups = _chain()
    data = batches(2, size=8)
    hooks = make_criterion("singe", path="unit", variant="completeness", steps=3, replicas=5)
    a = hooks.score(model, groups, data)
    units = sum(len(g[0].idxs) for g in groups)
    assert hooks.passes == len(data) * -(-units * 3 // 5)  # R = 5 (unit, mu) points per pass
    _force_weights(monkeypatch)
    moved = make_criterion("singe", path="unit", variant="completeness", steps=3)
    b = moved.score(model, groups, data)
    assert moved.fallback == "forced for the test"
    for x, y in zip(a, b):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_replicated_pass_on_cuda_waits_for_the_gpu_once_not_once_per_hook():
    import warnings

    from singe_deploy.scoring.unitpath import UnitScaler

    model, groups = _chain()
    data = batches(1, size=8)
    cpu = make_criterion("singe", path="unit", variant="completeness", steps=2, replicas=4).score(model, groups, data)
    model = model.cuda()
    groups = all_groups(model, torch.zeros(1, 1, 12, 12, device="cuda"), default_ignored(model))[1]
    scaler = UnitScaler(model, [slices(g, param_names(model)) for g in groups])
    (x, y), units = [(x.cuda(), y.cuda()) for x, y in data][0], [(i, 0) for i, p in enumerate(scaler.plan) if p]
    scaler.losses(model, x, y, units, [0.5] * len(units))  # the first pass places the plan on the GPU
    hooked = {site for i, j in units for site, _ in scaler.plan[i][j]}
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            scaler.losses(model, x, y, units, [0.5] * len(units))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    waits = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(hooked) >= 6 and len(waits) <= 2, [str(w.message) for w in waits]  # the final .tolist(), not per hook
    crit = make_criterion("singe", path="unit", variant="completeness", steps=2, replicas=4)
    for a, b in zip(cpu, crit.score(model, groups, [(x, y)])):
        assert crit.fallback is None and torch.allclose(a, b.cpu(), rtol=1e-3, atol=1e-6)


def test_removal_variant_is_the_measured_loss_change(monkeypatch):
    model, groups = _chain()
    data = batches(2, size=8)
    measured = _removal_measured(model, groups, data)
    hooks = make_criterion("singe", variant="removal", replicas=7).score(model, groups, data)
    _force_weights(monkeypatch)
    moved = make_criterion("singe", variant="removal").score(model, groups, data)
    for h, w, true in zip(hooks, moved, measured):
        assert torch.allclose(h, true.abs(), atol=1e-5)
        assert torch.allclose(w, true.abs(), atol=1e-5)


def test_units_the_hooks_cannot_scale_fall_back_to_moving_weights(tiny):
    from singe_deploy.scoring.unitpath import UnitScaler

    groups = _groups(tiny)
    names = param_names(tiny)
    scaler = UnitScaler(tiny, [slices(g, names) for g in groups])
    assert "input and output channels in one group" in scaler.unsupported  # x + grouped(x)
    data = batches(1, size=4)
    crit = make_criterion("singe", variant="removal")
    scores = crit.score(tiny, groups, data)
    assert crit.fallback == scaler.unsupported
    for s, true in zip(scores, _removal_measured(tiny, groups, data)):
        assert torch.allclose(s, true.abs(), atol=1e-5)


def test_unit_map_sums_equal_per_unit_on_every_group():
    import torchvision

    from singe_deploy.pruning.groups import UnitMap, per_unit

    for model, shape in ((TinyNetForMap(), (1, 1, 12, 12)),
                         (torchvision.models.mobilenet_v3_small(num_classes=5).eval(), (1, 3, 32, 32)),
                         (torchvision.models.densenet121(num_classes=5).eval(), (1, 3, 32, 32))):
        _, groups = all_groups(model, torch.zeros(shape), default_ignored(model))
        names = param_names(model)
        gs = [slices(g, names) for g in groups]
        sizes = [len(g[0].idxs) for g in groups]
        tensors = {n: torch.rand_like(p) for n, p in model.named_parameters()}
        umap = UnitMap(gs, sizes)
        for got, s, n in zip(umap.split(umap.sums(tensors)), gs, sizes):
            assert torch.allclose(got, per_unit(s, tensors, n), rtol=1e-5, atol=1e-6)  # per_unit sums in float32


def TinyNetForMap():
    from ..conftest import TinyNet

    return TinyNet().eval()


def test_singe_work_per_step_is_one_unit_sum_whatever_the_groups(monkeypatch):
    """m passes per batch, and per path point one UnitMap.sums (a gather and an index_add per parameter), not a
    loop over groups and slices."""
    from singe_deploy.pruning import groups as groups_mod
    from singe_deploy.scoring import importance

    model, groups = _chain()
    data = batches(2, size=8)
    calls = {"sums": 0, "per_unit": 0}
    real_sums = groups_mod.UnitMap.sums

    def counting(self, tensors):
        calls["sums"] += 1
        return real_sums(self, tensors)

    monkeypatch.setattr(groups_mod.UnitMap, "sums", counting)
    monkeypatch.setattr(importance, "per_unit", lambda *a: calls.__setitem__("per_unit", 1))
    crit = make_criterion("singe", path="network", steps=6)
    crit.score(model, groups, data)
    assert crit.passes == 6 * len(data)
    assert calls["sums"] == 6 * len(data) + 1  # + the weight norms, once
    assert calls["per_unit"] == 0


def test_passes_per_sample_follow_path_and_variant():
    model, groups = _chain()
    units = sum(len(g[0].idxs) for g in groups)
    assert make_criterion("singe", path="network", steps=8).passes_per_sample(groups) == 24
    assert make_criterion("singe", steps=8, path="unit").passes_per_sample(groups) == 24 * units
    assert make_criterion("singe", variant="removal").passes_per_sample(groups) == units
    assert make_criterion("taylor").passes_per_sample(groups) == 3
    assert make_criterion("l2").passes_per_sample(groups) == 0


def test_unknown_variant_is_bad_input():
    with pytest.raises(UserError, match="variant"):
        make_criterion("singe", variant="oracle")


def test_path_fidelity_ranks_each_path_against_the_unit_path_in_multiples_of_taylor(monkeypatch):  # and --unit-sample
    from ..conftest import ROOT, load_tool

    monkeypatch.syspath_prepend(str(ROOT / "tools"))  # the tool imports its sibling bench_scoring
    tool = load_tool("path_fidelity")
    model, groups = _chain()
    data = batches(1, size=8)
    result = {"paths": {}}
    tool.paths(model, groups, data, 2, result, replicas=[4])
    rows = result["paths"]
    assert list(rows) == ["unit", "frozen", "group", "network", "unit, completeness, R = 4",
                          "removal (measured), R = 4"]
    assert result["taylor_seconds"] > 0 and rows["unit"]["spearman_all"] == 1.0
    for v in rows.values():
        assert v["x_taylor"] == pytest.approx(v["seconds"] / result["taylor_seconds"])
    unit = torch.cat(make_criterion("singe", path="unit", steps=2).score(model, groups, data)).numpy()
    network = torch.cat(make_criterion("singe", path="network", steps=2).score(model, groups, data)).numpy()
    assert rows["network"]["spearman_all"] == pytest.approx(tool.spearman(network, unit))
    frozen = torch.cat(make_criterion("singe", path="frozen", steps=2).score(model, groups, data)).numpy()
    assert rows["frozen"]["spearman_all"] == pytest.approx(tool.spearman(frozen, unit))
    # --unit-sample: the exact path on channels drawn at random gives those channels' exact scores
    full = [s.numpy() for s in make_criterion("singe", path="unit", steps=2).score(model, groups, data) if s is not None]
    idx, ref, seconds, total = tool.sampled_unit_path(model, groups, data, 2, 10)
    assert total == len(unit) and sum(len(i) for i in idx) == 10 and seconds > 0
    for f, i, r in zip(full, idx, ref):
        assert np.allclose(f[i], r, rtol=1e-6, atol=1e-9)
    sampled = {"paths": {}}
    tool.paths(model, groups, data, 2, sampled, unit_sample=len(unit))  # every channel drawn: the full figures
    assert sampled["unit_sample"] == {"channels": len(unit), "of": len(unit), "seconds": pytest.approx(
        sampled["unit_sample"]["seconds"])}
    assert sampled["paths"]["network"]["spearman_all"] == pytest.approx(rows["network"]["spearman_all"])


def test_path_fidelity_calibration_sweep_ranks_a_drawn_subset_against_every_image(monkeypatch):
    from ..conftest import ROOT, load_tool

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    tool = load_tool("path_fidelity")
    model, groups = _chain()
    data = batches(2, size=8)
    result = {}
    tool.calibration_sweep(model, groups, data, [4, 16, 99], result, draws=2,
                           criteria=(("singe", {"steps": 2}), ("taylor", {})))
    rows = result["calibration"]["rows"]
    assert result["calibration"]["images"] == 16 and [(r["criterion"], r["images"]) for r in rows] == [
        ("singe", 4), ("taylor", 4)]  # sizes of all the images or more are not a subset
    x, y = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    full = [s.numpy() for s in make_criterion("taylor").score(model, groups, data) if s is not None]
    spearmans = []
    for seed in range(2):
        pick = torch.randperm(16, generator=torch.Generator().manual_seed(seed))[:4]
        part = [s.numpy() for s in make_criterion("taylor").score(model, groups, [(x[pick], y[pick])]) if s is not None]
        spearmans.append(tool.spearman(np.concatenate(part), np.concatenate(full)))
    assert rows[1]["spearman_all"] == pytest.approx(np.mean(spearmans))
    assert rows[1]["spearman_all_min"] == min(spearmans)
    assert -1 <= rows[0]["spearman_all"] < 1  # 4 images of 16 do not give the same ranking


def test_path_expansions_ranks_each_candidate_against_the_exact_path_of_the_drawn_channels(monkeypatch):
    from ..conftest import ROOT, load_tool

    monkeypatch.syspath_prepend(str(ROOT / "tools"))
    tool = load_tool("path_expansions")
    model, groups = _chain()
    (x, y), = batches(1, size=8)
    result = tool.study(model, groups, x, y, n=10, m=4)
    assert result["channels"] == 10 and result["of"] == sum(len(g[0].idxs) for g in groups)
    rows = result["rows"]
    assert len(rows) == 5 and rows["frozen (gradient at mu = 1)"]["x_taylor"] == 1.0
    # the exact path at all 4 nodes is the reference; the frozen row is the frozen path's own ranking of those channels
    idx, ref, _, _ = load_tool("path_fidelity").sampled_unit_path(model, groups, [(x, y)], 4, 10)
    frozen = [s.numpy() for s in make_criterion("singe", path="frozen", steps=4).score(model, groups, [(x, y)])
              if s is not None]
    picked = np.concatenate([f[i] for f, i in zip(frozen, idx)])
    assert rows["frozen (gradient at mu = 1)"]["spearman"] == pytest.approx(_spearman(picked, np.concatenate(ref)))
