import re

import pytest
import torch
import torchvision
from torch import nn

from singe_deploy.errors import UserError
from singe_deploy.measure.flops import count
from singe_deploy.models.specs import build_model
from singe_deploy.pruning.entwined import Schedule, Target, check_reachable, prune
from singe_deploy.scoring.importance import make_criterion

from ..conftest import Chain, TinyNet, chain_groups


def _prune(model, shape, reduction=2.0, metric="macs", **kw):
    schedule = Schedule(**dict(dict(steps=2, finetune_iters=0, epochs=0), **kw))
    dense = count(model, shape)
    result = prune(model, shape, make_criterion("l2"), Target(metric, reduction), schedule, log=lambda *a: None)
    return dense, count(model, shape), result


@pytest.mark.parametrize("reduction", [2.0, 3.0])
def test_macs_target_is_hit_on_resnet20(reduction):
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense, pruned, result = _prune(model, (1, 1, 28, 28), reduction)
    assert dense.macs / reduction * 0.9 <= pruned.macs <= dense.macs / reduction * 1.03
    assert len(result.steps) == 2 and result.steps[0]["macs"] > result.steps[1]["macs"]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_params_target():
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense, pruned, _ = _prune(model, (1, 1, 28, 28), 2.5, metric="params", steps=1)
    assert dense.params / 2.5 * 0.9 <= pruned.params <= dense.params / 2.5 * 1.03


def _changed(dense, pruned, types=("Conv2d", "Linear")):
    after = {l.name: l for l in pruned.layers}
    return [(l.name, after[l.name].out_channels) for l in dense.layers
            if l.type in types and after[l.name].out_channels != l.out_channels]


def test_round_to_keeps_pruned_counts_multiples():
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense, pruned, _ = _prune(model, (1, 1, 28, 28), 2.0, round_to=8)
    changed = _changed(dense, pruned)
    assert changed and all(c % 8 == 0 for _, c in changed)
    assert pruned.macs <= dense.macs / 2 * 1.03


def test_grouped_and_depthwise_convs_stay_consistent():
    model = TinyNet().eval()
    dense, pruned, _ = _prune(model, (1, 1, 12, 12), 1.6, round_to=4, max_layer_ratio=0.75)
    assert model.grouped.in_channels % model.grouped.groups == 0
    assert model.grouped.out_channels % model.grouped.groups == 0
    assert model.dw.groups == model.dw.in_channels == model.dw.out_channels
    assert all(c % 4 == 0 for _, c in _changed(dense, pruned))
    assert model(torch.zeros(2, 1, 12, 12)).shape == (2, 4)


def test_mobilenet_v2_depthwise_with_round_to():
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    dense, pruned, _ = _prune(model, (1, 3, 64, 64), 2.0, steps=1, round_to=8)
    assert pruned.macs <= dense.macs / 2 * 1.03
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    assert all(c % 8 == 0 for _, c in _changed(dense, pruned))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(3, 12, 1)
        self.bn = nn.BatchNorm2d(20)
        self.c = nn.Conv2d(20, 16, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.fc(torch.relu(self.c(x)).mean((2, 3)))


def test_concatenation_is_pruned_consistently():
    model = Concat().eval()
    _prune(model, (1, 3, 10, 10), 2.0, steps=1)
    assert model.bn.num_features == model.a.out_channels + model.b.out_channels == model.c.in_channels
    assert model(torch.zeros(1, 3, 10, 10)).shape == (1, 5)


def test_local_ranking_prunes_every_group():
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense, pruned, _ = _prune(model, (1, 1, 28, 28), 2.0, steps=1, ranking="local")
    assert pruned.macs <= dense.macs / 2 * 1.03
    inner = [l for l in pruned.layers if l.name.endswith("conv1") and l.name.startswith("layers")]
    dense_inner = {l.name: l.out_channels for l in dense.layers}
    assert all(l.out_channels < dense_inner[l.name] for l in inner)


@pytest.mark.parametrize("metric", ["macs", "params"])
def test_an_unreachable_target_names_a_reduction_that_is_then_reached(metric):
    shape, schedule = (1, 1, 28, 28), Schedule(max_layer_ratio=0.5, round_to=8, steps=2, finetune_iters=0, epochs=0)
    with pytest.raises(UserError, match="unreachable") as e:
        check_reachable(build_model("builtin:resnet20", 10, 1).eval(), shape, Target(metric, 50.0), schedule)
    said = re.search(rf"rerun with --{metric}-reduction ([0-9.]+) or lower", str(e.value))
    assert said, str(e.value)
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense = count(model, shape)
    result = prune(model, shape, make_criterion("l2"), Target(metric, float(said[1])), schedule, log=lambda *a: None)
    pruned = count(model, shape)
    assert result.target_met
    assert getattr(pruned, metric) <= getattr(dense, metric) / float(said[1])


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0])
def test_reduction_must_exceed_one(bad):
    with pytest.raises(UserError, match="> 1"):
        Target("macs", bad)


def test_one_verb_api_takes_constraints_as_data():
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense = count(model, (1, 1, 28, 28)).params
    prune(model, (1, 1, 28, 28), make_criterion("l1"), {"params_reduction": 2}, {"steps": 1, "round_to": 8},
          log=lambda *a: None)
    assert count(model, (1, 1, 28, 28)).params <= dense / 2 * 1.03
    with pytest.raises(UserError, match="macs_reduction"):
        prune(model, (1, 1, 28, 28), make_criterion("l1"), {"flops": 2}, {})


def test_a_second_pruning_of_a_coarse_model_still_lands_in_the_window():
    model = build_model("builtin:resnet20", 10, 1).eval()
    _prune(model, (1, 1, 28, 28), 2.0, steps=1, round_to=8)
    dense, pruned, _ = _prune(model, (1, 1, 28, 28), 1.3, steps=1, round_to=8)
    assert dense.macs / 1.3 * 0.9 <= pruned.macs <= dense.macs / 1.3 * 1.03


def test_a_model_that_pruning_breaks_gets_a_clear_error():
    class Reshaper(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.fc = nn.Linear(8 * 4 * 4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).reshape(x.shape[0], 8 * 16))  # a static channel count

    with pytest.raises(UserError, match="static shapes|cannot trace"):
        check_reachable(Reshaper().eval(), (1, 3, 4, 4), Target("macs", 1.5), Schedule(round_to=1))


@pytest.mark.parametrize("ranking", ["raw", "cost"])
def test_every_ranking_hits_the_target(ranking):
    model = build_model("builtin:resnet20", 10, 1).eval()
    dense, pruned, _ = _prune(model, (1, 1, 28, 28), 2.0, ranking=ranking, steps=1)
    assert dense.macs / 2 * 0.9 <= pruned.macs <= dense.macs / 2 * 1.03


def test_calibration_is_cut_to_the_sample_cap_or_the_mac_budget():
    from singe_deploy.pruning.entwined import MIN_CALIB_SAMPLES, calibration

    model = Chain().eval()
    groups = chain_groups(model)
    shape = (1, 1, 16, 16)
    data = [(torch.zeros(10, 1, 16, 16), torch.zeros(10, dtype=torch.long)) for _ in range(3)]
    crit = make_criterion("singe", path="network", steps=8)
    cut, n = calibration(data, Schedule(calib_samples=14), crit, model, groups, shape)
    assert n == 14 and [len(x) for x, _ in cut] == [10, 4]
    macs = count(model, shape).macs
    lines = []
    cut, n = calibration(data, Schedule(calib_macs=24 * macs * 20), crit, model, groups, shape, lines.append)
    assert n == 20 and sum(len(x) for x, _ in cut) == 20 and "20 of 30 samples" in lines[0]
    cut, n = calibration(data, Schedule(calib_macs=1.0), crit, model, groups, shape)
    assert n == MIN_CALIB_SAMPLES
    cut, n = calibration(data, Schedule(calib_macs=1.0), make_criterion("l2"), model, groups, shape)
    assert n == 30  # a data-free criterion costs no passes
