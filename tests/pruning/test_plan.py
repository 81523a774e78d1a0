import pytest
import torch
from torch import nn

from singe_deploy.models.specs import build_model
from singe_deploy.pruning.entwined import Schedule
from singe_deploy.scoring.importance import make_criterion

from ..conftest import Chain, TinyNet, chain_groups


def test_global_levels_remove_one_chunk_at_a_time():
    from singe_deploy.pruning.groups import all_groups, default_ignored
    from singe_deploy.pruning.plan import Planner

    model = build_model("builtin:resnet20", 10, 1).eval()
    _, groups = all_groups(model, torch.zeros(1, 1, 28, 28), default_ignored(model))
    scores = make_criterion("l2").score(model, groups)
    names = {id(m): n for n, m in model.named_modules()}
    planner = Planner(model, groups, scores, {}, Schedule(round_to=8), names)
    previous = planner.counts(0)
    assert sum(previous) == 0 and planner.levels > 10
    for level in range(1, planner.levels + 1):
        counts = planner.counts(level)
        grown = [(a, b) for a, b in zip(previous, counts) if a != b]
        assert len(grown) == 1 and grown[0][1] - grown[0][0] == 8
        previous = counts


def test_pruning_leaves_no_stale_gradients():
    from singe_deploy.pruning.groups import all_groups, default_ignored
    from singe_deploy.pruning.plan import Planner, apply_plan

    model = TinyNet().eval()
    model(torch.randn(2, 1, 12, 12)).sum().backward()
    _, groups = all_groups(model, torch.zeros(1, 1, 12, 12), default_ignored(model))
    names = {id(m): n for n, m in model.named_modules()}
    planner = Planner(model, groups, make_criterion("l1").score(model, groups), {}, Schedule(round_to=1), names)
    apply_plan(model, planner.removals(planner.counts(planner.levels // 2)), torch.zeros(1, 1, 12, 12))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_channel_costs_are_what_removing_one_channel_saves(metric):
    import copy

    from singe_deploy.pruning.plan import apply_plan, channel_costs, measure

    model, shape = Chain().eval(), (1, 1, 16, 16)
    groups = chain_groups(model)
    costs = channel_costs(model, groups, shape, metric)
    names = {id(m): n for n, m in model.named_modules()}
    dense = measure(model, shape, metric)
    assert len(costs) == len(groups) >= 3
    for g, cost in zip(groups, costs):
        pruned = apply_plan(copy.deepcopy(model), [(names[id(g[0].dep.target.module)], g[0].dep.handler, [0])],
                            torch.zeros(shape))
        assert dense - measure(pruned, shape, metric) == pytest.approx(cost), names[id(g[0].dep.target.module)]


def _planner(model, groups, scores, ranking, costs=None):
    from singe_deploy.pruning.plan import Planner

    names = {id(m): n for n, m in model.named_modules()}
    return Planner(model, groups, scores, {}, Schedule(round_to=1, ranking=ranking), names, costs)


def test_global_ranking_ignores_a_group_scale_raw_and_cost_do_not():
    model = Chain().eval()
    groups = chain_groups(model)
    torch.manual_seed(1)
    scores = [torch.rand(len(g[0].idxs)) for g in groups]
    scaled = [s * (10.0 if i == 0 else 1.0) for i, s in enumerate(scores)]
    order = lambda p: [(i, r) for _, i, r in p.chunks]  # noqa: E731
    assert order(_planner(model, groups, scores, "global")) == order(_planner(model, groups, scaled, "global"))
    assert order(_planner(model, groups, scores, "raw")) != order(_planner(model, groups, scaled, "raw"))
    ones = [1.0] * len(groups)
    assert order(_planner(model, groups, scores, "cost", ones)) == order(_planner(model, groups, scores, "raw"))
    # a group made 10x more expensive is pruned as if its scores were 10x smaller
    costs = [10.0 if i == 0 else 1.0 for i in range(len(groups))]
    shrunk = [s / (10.0 if i == 0 else 1.0) for i, s in enumerate(scores)]
    assert order(_planner(model, groups, scores, "cost", costs)) == order(_planner(model, groups, shrunk, "raw"))


def test_cost_ranking_removes_expensive_cheap_to_lose_channels_first():
    model = Chain().eval()
    groups = chain_groups(model)
    from singe_deploy.pruning.plan import channel_costs

    costs = channel_costs(model, groups, (1, 1, 16, 16), "macs")
    scores = [torch.ones(len(g[0].idxs)) for g in groups]  # every channel equally important
    planner = _planner(model, groups, scores, "cost", costs)
    first = planner.chunks[0][1]
    assert costs[first] == max(costs)




class Mixed(nn.Module):
    """A concatenation, a grouped conv, a depthwise conv and a residual add: coupled channels of every kind."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(24)
        self.c = nn.Conv2d(24, 32, 1)
        self.grouped = nn.Conv2d(32, 32, 3, padding=1, groups=4)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.pw = nn.Conv2d(32, 32, 1)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        x = torch.relu(self.grouped(torch.relu(self.c(x))))
        x = x + self.pw(torch.relu(self.dw(x)))
        return self.fc(x.mean((2, 3)))


def _planner_for(model, shape, ranking="global", round_to=1, seed=0):
    from singe_deploy.pruning.groups import all_groups, default_ignored
    from singe_deploy.pruning.plan import Planner

    _, groups = all_groups(model, torch.zeros(shape), default_ignored(model))
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(len(gr[0].idxs), generator=g) for gr in groups]
    names = {id(m): n for n, m in model.named_modules()}
    return Planner(model, groups, scores, {}, Schedule(round_to=round_to, ranking=ranking), names)


@pytest.mark.parametrize("metric", ["macs", "params"])
@pytest.mark.parametrize("name", ["mixed", "chain", "resnet20"])
def test_predicted_costs_equal_the_counted_costs_of_pruned_copies(name, metric):
    from singe_deploy.pruning.plan import Predictor, _Measured

    model, shape = {"mixed": (Mixed(), (1, 3, 8, 8)), "chain": (Chain(), (1, 1, 16, 16)),
                    "resnet20": (build_model("builtin:resnet20", 10, 1), (1, 1, 28, 28))}[name]
    model.eval()
    for ranking in ("global", "local"):
        planner = _planner_for(model, shape, ranking)
        predict = Predictor.build(planner, model, shape, metric)
        real = _Measured(planner, model, torch.zeros(shape), shape, metric)
        assert predict is not None
        levels = sorted({1, planner.levels // 5, planner.levels // 2, planner.levels})
        tried = [planner.counts(level) for level in levels if sum(planner.counts(level)) > 0]
        assert len(tried) >= 3
        for counts in tried:
            assert predict(counts) == real(counts), (ranking, counts)


class Attention(nn.Module):
    """MACs in a module's own forward (a matmul), which the predictor cannot scale."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 16), nn.Linear(8, 16)
        self.fc = nn.Linear(16, 3)

    def forward(self, x):
        q, k = self.q(x), self.k(x)
        return self.fc((q @ k.transpose(1, 2)).softmax(-1) @ q).mean(1)


def test_attention_whose_matmuls_shrink_is_measured_at_every_level():
    from singe_deploy.pruning.plan import measure, search

    model, shape = Attention().eval(), (1, 4, 8)
    planner = _planner_for(model, shape)  # its one group narrows q and k, so the matmuls' MACs change
    dense = measure(model, shape, "macs")
    plan, cost, reached, measured = search(planner, model, torch.zeros(shape), shape, "macs", dense / 1.5, None)
    assert measured and reached and plan and cost <= dense / 1.5


class AttentionMLP(nn.Module):
    """q and k kept whole (as Swin's), an MLP after them: the matmuls' MACs do not change with pruning."""

    def __init__(self):
        super().__init__()
        self.q, self.k = nn.Linear(8, 16), nn.Linear(8, 16)
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 3)

    def forward(self, x):
        q, k = self.q(x), self.k(x)
        return self.fc2(torch.relu(self.fc1((q @ k.transpose(1, 2)).softmax(-1) @ q))).mean(1)


def test_attention_with_whole_q_and_k_is_predicted_exactly_with_its_matmuls_constant():
    from singe_deploy.pruning.groups import all_groups, default_ignored
    from singe_deploy.pruning.plan import Planner, Predictor, _Measured, measure, search

    model, shape = AttentionMLP().eval(), (1, 4, 8)
    _, groups = all_groups(model, torch.zeros(shape), default_ignored(model) + [model.q, model.k])
    scores = [torch.rand(len(g[0].idxs), generator=torch.Generator().manual_seed(0)) for g in groups]
    planner = Planner(model, groups, scores, {}, Schedule(round_to=1), {id(m): n for n, m in model.named_modules()})
    predict = Predictor.build(planner, model, shape, "macs")
    real = _Measured(planner, model, torch.zeros(shape), shape, "macs")
    assert predict.constant > 0
    for level in (1, planner.levels // 2, planner.levels - 1):
        assert predict(planner.counts(level)) == real(planner.counts(level))
    dense = measure(model, shape, "macs")
    plan, cost, reached, measured = search(planner, model, torch.zeros(shape), shape, "macs", dense / 1.3, None)
    assert not measured and reached and cost <= dense / 1.3


def test_a_wrong_prediction_falls_back_to_measuring_and_finds_the_same_plan(monkeypatch):
    from singe_deploy.pruning import plan as P

    model, shape = build_model("builtin:resnet20", 10, 1).eval(), (1, 1, 28, 28)
    planner = _planner_for(model, shape, round_to=8)
    dense = P.measure(model, shape, "macs")
    exact = P.search(planner, model, torch.zeros(shape), shape, "macs", dense / 2, None)
    assert not exact[3]
    measured = P._bisect(planner, P._Measured(planner, model, torch.zeros(shape), shape, "macs"), dense / 2, None)
    assert exact[0] == planner.removals(measured[0])  # the prediction changes nothing but the time
    monkeypatch.setattr(P.Predictor, "_cost", lambda self, counts: 0.8 * P._Measured(
        self.planner, model, torch.zeros(shape), shape, "macs")(counts))
    wrong = P.search(planner, model, torch.zeros(shape), shape, "macs", dense / 2, None)
    assert wrong[3] and wrong[0] == exact[0] and wrong[1] == exact[1]


@pytest.mark.parametrize("kind", ["vit", "swin", "swin_v2", "maxvit"])
def test_attention_that_loses_whole_heads_is_predicted_exactly(kind):
    """MACs and params, with the per-head tensors (relative position biases, V2's bias MLP rows) going too."""
    from singe_deploy.models.attention import split_heads
    from singe_deploy.pruning.plan import Predictor, _Measured, measure, search

    from ..models.test_architectures import _tiny_vit
    from ..models.test_attention import WINDOWED

    torch.manual_seed(0)
    build = _tiny_vit if kind == "vit" else WINDOWED[kind][0]
    model, shape = split_heads(build()).eval(), (1, 3, 32, 32)
    planner = _planner_for(model, shape)
    for metric in ("macs", "params"):
        predict = Predictor.build(planner, model, shape, metric)
        real = _Measured(planner, model, torch.zeros(shape), shape, metric)
        assert metric == "params" or predict.rows  # the matmuls scale with each block's inner width
        for level in (1, planner.levels // 3, 2 * planner.levels // 3):
            assert predict(planner.counts(level)) == real(planner.counts(level)), metric
    dense = measure(model, shape, "macs")
    plan, cost, reached, measured = search(planner, model, torch.zeros(shape), shape, "macs", dense / 1.5, None)
    assert not measured and reached and cost <= dense / 1.5


def test_a_far_overshoot_tries_a_later_chunk_and_shows_those_trials(monkeypatch):
    from singe_deploy.pruning import plan as P

    class Chunks:  # three groups; chunks in removal order, as Planner._chunks gives them
        chunks = [(0.1, 0, 1), (0.2, 1, 1), (0.3, 0, 2), (0.4, 2, 1)]
        entries = [None] * 3
        levels = 4
        counts = P.Planner.counts

    bars = []

    class Bar:
        def __init__(self, total=None, desc=None, disable=False, **_):
            self.total, self.desc, self.disable, self.n = total, desc, disable, 0
            bars.append(self)

        def update(self):
            self.n += 1

        def close(self):
            pass

    monkeypatch.setattr(P, "progress", Bar)
    cost = P._Predicted(lambda c: 10 - 3 * c[0] - c[1] - 2 * c[2])
    best, reached = P._bisect(Chunks(), cost, 8.5, "plan")
    # level 1 (cost 7) overshoots 8.5 by far; of the later single chunks only group 2's meets it, at 8
    assert reached and best == [0, 0, 1] and cost(best) == 8
    closer = bars[-1]
    assert closer.desc == "plan, nearer the target" and closer.total == 3 and closer.n == 3 and not closer.disable


@pytest.mark.parametrize("width,expected", [(16, 8), (24, 8), (32, 16), (64, 16), (8, 4)])
def test_layers_narrower_than_twice_the_alignment_take_a_finer_one(width, expected):
    from singe_deploy.pruning.plan import Planner

    planner = Planner.__new__(Planner)
    planner.schedule = Schedule(round_to=16)
    assert planner._quantum(1, 1, width) == expected


def test_a_16_channel_stage_is_pruned_at_alignment_16():
    from singe_deploy.pruning.groups import all_groups, default_ignored
    from singe_deploy.pruning.plan import Planner

    model = build_model("builtin:resnet20", 10, 1).eval()
    shape = (1, 1, 28, 28)
    _, groups = all_groups(model, torch.zeros(shape), default_ignored(model))
    names = {id(m): n for n, m in model.named_modules()}
    scores = [torch.rand(len(g[0].idxs)) for g in groups]
    planner = Planner(model, groups, scores, {}, Schedule(round_to=16), names)
    narrow = [i for i, e in enumerate(planner.entries) if e[2] == 16]
    assert narrow and all(planner.entries[i][5] >= 8 and planner.quanta[i] == 8 for i in narrow)
