"""Latency targets: the per-group table, its cache, its prediction, and the planner meeting it, with a fake
(deterministic) timer whose latency is a step function of every conv's output channels, as on hardware with
tiles of 8 channels."""
import json
import math
import re

import pytest
import torch
from torch import nn

from singe_deploy.errors import UserError
from singe_deploy.pruning import latency
from singe_deploy.pruning.entwined import Schedule, prune
from singe_deploy.pruning.groups import all_groups, default_ignored
from singe_deploy.pruning.plan import Planner
from singe_deploy.scoring.importance import make_criterion

from ..conftest import TinyNet

SHAPE = (1, 1, 12, 12)


class TileTimer:
    """ms = 1 + per conv, its weight (ms per tile) x tiles of 8 output channels; counts its calls."""

    def __init__(self, weights=None, batch=1):
        self.weights, self.batch, self.calls = weights or {}, batch, 0

    def __call__(self, model):
        self.calls += 1
        return 1.0 + sum(self.weights.get(n, 0.1) * math.ceil(m.out_channels / 8)
                         for n, m in model.named_modules() if isinstance(m, nn.Conv2d))

    def key(self):
        return {"backend": "fake", "version": "1", "device": type(self).__name__, "threads": 1, "batch": self.batch}

    def with_shape(self, shape):
        return self


def _planner(model, ranking="global", costs=None, scores=None):
    example = torch.zeros(SHAPE)
    _, groups = all_groups(model, example, default_ignored(model))
    names = {id(m): n for n, m in model.named_modules()}
    scores = scores or [torch.ones(len(g[0].idxs)) for g in groups]
    return Planner(model, groups, scores, {}, Schedule(ranking=ranking, round_to=8), names,
                   costs if costs is not None else [1.0] * len(groups)), groups, names


@pytest.mark.parametrize("unit", latency.UNITS)
def test_the_table_predicts_the_fake_timer_exactly_at_multiples_of_its_tiles(tmp_path, unit):
    torch.manual_seed(0)
    model, timer = TinyNet(), TileTimer()
    planner, _, _ = _planner(model)
    table, path = latency.load_or_measure(tmp_path / "t.json", planner, model, torch.zeros(SHAPE), timer, SHAPE,
                                          log=lambda *a: None, unit=unit)
    assert table.key["unit"] == unit
    assert table.dense_ms == pytest.approx(timer(model)) and path.is_file()
    from singe_deploy.pruning.plan import apply_plan
    for level in (0, planner.levels // 3, planner.levels // 2, planner.levels):
        counts = planner.counts(level)
        pruned = apply_plan(__import__("copy").deepcopy(model), planner.removals(counts), torch.zeros(SHAPE))
        assert table.predict(planner, counts) == pytest.approx(timer(pruned))


def test_the_cache_is_reused_only_for_the_same_key(tmp_path):
    torch.manual_seed(0)
    model = TinyNet()
    planner, _, _ = _planner(model)
    path, quiet = tmp_path / "t.json", (lambda *a: None)
    first = TileTimer()
    latency.load_or_measure(path, planner, model, torch.zeros(SHAPE), first, SHAPE, quiet)
    assert first.calls > 1
    again = TileTimer()
    table, _ = latency.load_or_measure(path, planner, model, torch.zeros(SHAPE), again, SHAPE, quiet)
    assert again.calls == 0 and table.dense_ms == pytest.approx(first(model))
    timer = TileTimer()
    latency.load_or_measure(path, planner, model, torch.zeros(SHAPE), timer, SHAPE, quiet, unit="model")
    assert timer.calls > 1  # another unit of timing
    for changed, shape, timer in ((model, SHAPE, TileTimer(batch=8)),  # another batch size
                                  (model, (1, 1, 16, 16), TileTimer()),  # another input shape
                                  (TinyNet(num_classes=5), SHAPE, TileTimer())):  # another architecture
        table, _ = latency.load_or_measure(path, planner, changed, torch.zeros(shape), timer, shape, quiet)
        assert timer.calls > 1 and json.loads(path.read_text())["key"] == table.key
    path.write_text("{not json")
    timer = TileTimer()
    latency.load_or_measure(path, planner, model, torch.zeros(SHAPE), timer, SHAPE, quiet)
    assert timer.calls > 1  # a corrupt cache is measured again, not a crash


def test_a_synthetic_table_is_met_exactly_and_cost_ranking_follows_it():
    torch.manual_seed(0)
    model = TinyNet()
    planner, groups, names = _planner(model)
    entries = [e[0] for e in planner.entries]
    slow = entries[0]  # only this group costs time: 1 ms per removed channel
    n = len(planner.groups[0][0].idxs)
    table = latency.LatencyTable(10.0, {slow: [[0, 10.0 - n], [n, 10.0]]}, {})
    assert table.at(slow, n - 8) == pytest.approx(10.0 - 8) and table.at(slow, n) == 10.0
    costs = table.channel_costs(groups, names)
    assert costs[[names[id(g[0].dep.target.module)] for g in groups].index(slow)] == pytest.approx(1.0)
    cost_planner, _, _ = _planner(model, "cost", costs)
    from singe_deploy.pruning.plan import search
    plan, cost, reached, _ = search(cost_planner, model, None, SHAPE, "latency", 10.0 - 8, None,
                                    predict=lambda c: table.predict(cost_planner, c))
    assert reached and cost == pytest.approx(10.0 - 8)  # 8 channels of the slow group, exactly the target
    assert [name for name, _, _ in plan] == [slow]  # groups that cost no time are left alone


def _pruned(timer, reduction, tmp_path, unit="layer", **schedule):
    """(model, dense ms, PruneResult) of TinyNet pruned to a latency reduction with `timer`."""
    torch.manual_seed(0)
    model = TinyNet()
    dense = timer(model)
    result = prune(model, SHAPE, make_criterion("l2"), {"latency_reduction": reduction},
                   Schedule(finetune_iters=0, epochs=0, **schedule), None, timer=timer,
                   latency_table=tmp_path / "t.json", log=lambda *a: None, latency_unit=unit)
    return model, dense, result


def test_prune_meets_a_latency_target_measured_by_the_timer(tmp_path):
    timer = TileTimer()
    model, dense, result = _pruned(timer, 1.3, tmp_path, steps=2, round_to=8)
    lat = result.latency
    assert result.target_met and lat["hit"] and lat["measured_ms"] == pytest.approx(timer(model))
    assert lat["measured_ms"] <= dense / 1.3 * 1.03 and lat["dense_ms"] == pytest.approx(dense)
    assert lat["predicted_ms"] == pytest.approx(lat["measured_ms"])  # additive and exact for this timer
    assert result.steps[0]["latency_table"] == str(tmp_path / "t.json")


def test_a_budget_is_met_as_a_ratio_and_reported_in_milliseconds(tmp_path):
    timer = TileTimer()
    torch.manual_seed(0)
    model = TinyNet()
    dense = timer(model)
    result = prune(model, SHAPE, make_criterion("l2"), {"latency_budget_ms": dense / 1.3},
                   Schedule(finetune_iters=0, epochs=0, steps=2, round_to=8), None, timer=timer,
                   latency_table=tmp_path / "t.json", log=lambda *a: None)
    lat = result.latency
    assert lat["hit"] and lat["reduction"] == pytest.approx(1.3) and lat["budget_ms"] == pytest.approx(dense / 1.3)
    assert lat["measured_ms"] <= lat["budget_ms"] * 1.03  # this timer does not drift: the ratio is the budget
    assert lat["budget_ms_at_check"] == pytest.approx(lat["budget_ms"] * lat["dense_ms"] / lat["table_dense_ms"])


def test_budgets_that_cannot_be_met_are_bad_input(tmp_path):
    torch.manual_seed(0)
    model, timer = TinyNet(), TileTimer()
    dense = timer(model)
    run = dict(schedule=Schedule(steps=1, finetune_iters=0, epochs=0), timer=timer, log=lambda *a: None,
               latency_table=tmp_path / "t.json")
    with pytest.raises(UserError, match="above the dense model's"):
        prune(TinyNet(), SHAPE, make_criterion("l2"), {"latency_budget_ms": dense * 2}, **run)
    with pytest.raises(UserError, match="allow at most [0-9.]+x .* rerun with --latency-budget-ms"):
        prune(TinyNet(), SHAPE, make_criterion("l2"), {"latency_budget_ms": 0.5}, **run)
    with pytest.raises(UserError, match="needs a timer"):
        prune(TinyNet(), SHAPE, make_criterion("l2"), {"latency_reduction": 2}, Schedule())


def test_compress_with_a_latency_target_times_onnxruntime_and_reports_both_figures(tmp_path, capsys, monkeypatch):
    import jsonschema

    from singe_deploy.cli import main
    from singe_deploy.measure import bench
    from singe_deploy.pruning import latency
    from singe_deploy.schemas import load

    # real exports and onnxruntime sessions, timed by a stand-in clock: a graph's ms is its size, so that the outcome
    # is one (target hit), whatever else the machine runs
    opened = latency._opened

    def tagged(blob, name, open_runner):
        runner = opened(blob, name, open_runner)
        runner.fake_ms = len(blob) / 1e5
        return runner

    def stats(runner):
        return {"median_ms": runner.fake_ms, "cv": 0.0}

    monkeypatch.setattr(latency, "_opened", tagged)
    monkeypatch.setattr(bench, "measure", lambda runner, *a, **k: stats(runner))
    monkeypatch.setattr(bench, "measure_interleaved", lambda runners, *a, **k: [stats(r) for r in runners])

    out, table = tmp_path / "run", tmp_path / "table.json"
    argv = ["compress", "--out", str(out), "--data", "synthetic", "--criterion", "l1", "--model",
            "tests/conftest.py:wide_factory", "--input-shape", "1,1,24,24", "--steps", "1", "--finetune-iters", "0",
            "--epochs", "0", "--no-export", "--latency-reduction", "1.2", "--latency-table", str(table),
            "--latency-iters", "10", "--latency-seconds", "0", "--round-to", "1", "--threads", "2"]  # nothing
    # probed (alignment, threads): the clock is fake
    code = main(argv)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, load("report"))
    target = report["target"]
    lat = target["latency"]
    assert target["metric"] == "latency" and target["hit"] == (code == 0) and lat["timer"]["backend"] == "onnxruntime"
    assert lat["measured_ms"] > 0 and lat["predicted_ms"] > 0 and target["achieved"] == lat["dense_ms"] / lat["measured_ms"]
    assert json.loads(table.read_text())["key"] == lat["timer"] and lat["table"] == str(table)
    assert report["pruned"]["macs"] < report["dense"]["macs"] and "latency table: timing" in capsys.readouterr().out


def test_the_onnx_timer_falls_back_to_the_dynamo_exporter(monkeypatch):
    real, used = torch.onnx.export, []

    def export(*args, dynamo=True, **kwargs):
        used.append(dynamo)
        if not dynamo:
            raise RuntimeError("no TorchScript exporter here")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export)
    ms = latency.OnnxTimer(SHAPE, min_iters=3, min_seconds=0)(TinyNet())
    assert ms > 0 and used == [False, True]


class ConvexTimer(TileTimer):
    """ms = 1 + 1e-4 x (all conv output channels)^2: narrowing two groups saves less than the two savings added, so
    a whole-model table's additive prediction is too optimistic and only the measurement can tell."""

    def __call__(self, model):
        self.calls += 1
        return 1.0 + 1e-4 * sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)) ** 2


def test_levels_are_bisected_by_measurement_where_the_table_is_optimistic(tmp_path):
    timer = ConvexTimer()
    model, dense, result = _pruned(timer, 1.4, tmp_path, "model", steps=1, round_to=1)
    step, lat = result.steps[0], result.latency
    assert lat["corrections"] == 0 and lat["hit"] and step["latency_measured_ms"] <= dense / 1.4
    assert step["latency_predicted_ms"] < step["latency_measured_ms"]  # the table alone would have missed
    assert lat["measured_ms"] == pytest.approx(step["latency_measured_ms"])


def test_a_missed_measured_target_is_corrected_by_further_steps(tmp_path, monkeypatch):
    import singe_deploy.pruning.entwined as P

    monkeypatch.setattr(P, "_timed", lambda *a: None)  # levels by the table alone, as after a resume
    timer = ConvexTimer()
    model, dense, result = _pruned(timer, 1.4, tmp_path, "model", steps=1, round_to=1)
    lat = result.latency
    assert lat["corrections"] >= 1 and result.steps[-1]["correction"] and len(result.steps) == 1 + lat["corrections"]
    assert result.steps[0]["latency_predicted_ms"] <= dense / 1.4  # the first plan met the prediction, not the timer
    assert lat["hit"] and lat["measured_ms"] == pytest.approx(timer(model)) and lat["measured_ms"] <= dense / 1.4 * 1.03
    assert lat["predicted_ms"] < lat["measured_ms"]  # the table is still optimistic; the measurement decided


class SharedCostTimer(TileTimer):
    """Whole models cost 0.2 ms per tile, a layer timed alone 0.1: what shrinks between layers is half the saving."""

    def __call__(self, model):
        self.calls += 1
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        return 1.0 + (0.1 if len(convs) == 1 else 0.2) * sum(math.ceil(m.out_channels / 8) for m in convs)


def test_a_layer_table_is_calibrated_on_the_most_pruned_model(tmp_path):
    from copy import deepcopy

    from singe_deploy.pruning.plan import apply_plan

    torch.manual_seed(0)
    model, timer = TinyNet(), SharedCostTimer()
    planner, _, _ = _planner(model)
    table, _ = latency.load_or_measure(tmp_path / "t.json", planner, model, torch.zeros(SHAPE), timer, SHAPE,
                                       log=lambda *a: None)
    assert table.scale == pytest.approx(2.0)
    for level in (planner.levels // 2, planner.levels):
        counts = planner.counts(level)
        pruned = apply_plan(deepcopy(model), planner.removals(counts), torch.zeros(SHAPE))
        assert table.predict(planner, counts) == pytest.approx(timer(pruned))
    again, _ = latency.load_or_measure(tmp_path / "t.json", planner, model, torch.zeros(SHAPE), timer, SHAPE,
                                       log=lambda *a: None)
    assert again.scale == table.scale and again.groups == table.groups  # the cache keeps the calibration


def test_paired_onnxruntime_sessions_do_not_spin():
    runner = latency.OnnxTimer(SHAPE, min_iters=3, min_seconds=0).runner(TinyNet())
    options = runner.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert runner.info()["spinning"] is False


def test_the_trt_timer_builds_one_engine_per_variant_with_the_run_options(monkeypatch):
    """--target trt: each variant exported, built with the run's EngineOptions and a profile of the timed batch only,
    and run by the TensorRT runner (here stand-ins that run the ONNX graph with onnxruntime: no GPU on CI)."""
    from types import SimpleNamespace

    from singe_deploy.deploy import trt
    from singe_deploy.measure import bench

    builds = []

    def build(onnx_path, engine_path, input_shape, precision, tf32, profile, workspace_gb, timing_cache, log):
        builds.append((list(input_shape), precision, tf32, profile, workspace_gb))
        engine_path.write_bytes(onnx_path.read_bytes())
        return {}

    class Engine(bench.OnnxRuntime):
        def __init__(self, path, cuda_graph=False):
            super().__init__(path, 1, spinning=False)
            self.cuda_graph = cuda_graph

    monkeypatch.setattr(trt, "import_trt", lambda: SimpleNamespace(__version__="10.16.1"))
    monkeypatch.setattr(trt, "build_engine", build)
    monkeypatch.setattr(trt, "TensorRT", Engine)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Stand-in GPU")
    options = trt.EngineOptions(tf32=False, workspace_gb=1.0, cuda_graph=True)
    timer = latency.timer_for("trt", SHAPE, batch=2, engine=options, min_iters=3, min_seconds=0)
    assert timer(TinyNet()) > 0
    assert builds == [([2, 1, 12, 12], "fp32", False, trt.Profile(2, 2, 2), 1.0)]
    a, b = timer.factory(TinyNet()), timer.factory(TinyNet())
    assert all(ms > 0 for ms in timer.pair(a(), b())) and len(builds) == 3 and a().cuda_graph
    key = timer.key()
    assert key["backend"] == "tensorrt" and key["version"] == "10.16.1" and key["batch"] == 2
    assert key["device"] == "cuda: Stand-in GPU" and key["tf32"] is False and key["precision"] == "fp32"


def test_a_noisy_timing_never_makes_removing_nothing_meet_a_target():
    """The measured bisection: where the prediction says that level 0 (nothing removed) misses, a timing that says
    it meets the target (a busy machine) must not end the search with nothing pruned."""
    from singe_deploy.pruning.plan import search

    torch.manual_seed(0)
    model = TinyNet()
    planner, _, _ = _planner(model)
    predict = lambda counts: 10.0 - 0.01 * sum(counts)  # noqa: E731
    removals, _, reached, measured = search(planner, model, torch.zeros(SHAPE), SHAPE, "latency", 9.95, None,
                                            predict=predict, timed=lambda pruned: 0.0)
    assert reached and measured and removals and all(len(idxs) > 0 for _, _, idxs in removals)


@pytest.mark.parametrize("first,corrected", [(1.06, False), (1.30, True)])
def test_a_near_miss_is_timed_again_before_pruning_more(tmp_path, monkeypatch, first, corrected):
    """A final check a few percent over the target (noise on a busy machine) is timed again with more pairs; only
    a miss that stands, or one far over, prunes further."""
    import singe_deploy.pruning.entwined as P

    calls = []

    def pair(timer, dense_model, model, table, rounds=1):
        calls.append(rounds)
        goal = table.dense_ms / 1.3
        return table.dense_ms, goal * (first if len(calls) == 1 else 1.0)

    monkeypatch.setattr(P, "_latency_pair", pair)
    _, _, result = _pruned(TileTimer(), 1.3, tmp_path, steps=1, round_to=8)
    lat = result.latency
    assert (lat["corrections"] > 0) == corrected and lat["hit"]
    assert calls[:2] == ([3, P.CONFIRM_ROUNDS] if not corrected else [3, 3])
    # the check that ended the loop is the one reported: no third timing that could say otherwise
    assert len(calls) == 2
    assert lat["achieved"] == pytest.approx(1.3)


class ConcaveTimer(TileTimer):
    """ms = 1 + 0.3 x sqrt(all conv output channels): narrowing two groups saves more than the two savings added,
    so a whole-model table's additive prediction is too pessimistic and a plan by the table alone overshoots."""

    def __call__(self, model):
        self.calls += 1
        return 1.0 + 0.3 * math.sqrt(sum(m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)))


def test_an_overshooting_step_is_undone_and_planned_again_to_remove_less(tmp_path, monkeypatch):
    import singe_deploy.pruning.entwined as P

    monkeypatch.setattr(P, "_timed", lambda *a: None)  # levels by the table alone, which is pessimistic here
    monkeypatch.setattr(P, "CORRECTIONS", 0)
    _, dense, uncorrected = _pruned(ConcaveTimer(), 1.3, tmp_path / "a", "model", steps=1, round_to=1)
    assert dense / uncorrected.latency["measured_ms"] > 1.3 * P.LATENCY_SLACK  # the plan alone overshoots
    monkeypatch.setattr(P, "CORRECTIONS", 3)
    _, dense, result = _pruned(ConcaveTimer(), 1.3, tmp_path / "b", "model", steps=1, round_to=1)
    lat = result.latency
    assert lat["corrections"] >= 1 and lat["hit"] and lat["within_3pct"]
    assert dense / lat["measured_ms"] <= 1.3 * P.LATENCY_SLACK  # not faster than asked by more than 3%
    assert len(result.steps) == 1 and result.steps[0]["correction"]  # the overshooting step replaced, not kept


def test_a_replanned_step_that_misses_gives_back_the_model_that_met_the_target(tmp_path, monkeypatch):
    import singe_deploy.pruning.entwined as P

    calls = []

    def pair(timer, dense_model, model, table, rounds=1):
        calls.append(sum(p.numel() for p in model.parameters()))
        speed = 1.6 if len(calls) == 1 else 1.1  # far faster than asked, then every replanned model misses
        return table.dense_ms, table.dense_ms / speed

    monkeypatch.setattr(P, "_latency_pair", pair)
    model, _, result = _pruned(TileTimer(), 1.3, tmp_path, steps=1, round_to=8)
    lat = result.latency
    assert lat["hit"] and lat["achieved"] == pytest.approx(1.6)
    assert sum(p.numel() for p in model.parameters()) == calls[0]  # the model first measured, restored
    assert len(result.steps) == 1 and not result.steps[0].get("correction")


@pytest.mark.parametrize("asked", [{"latency_reduction": 50}, {"latency_budget_ms": 0.5}])
def test_an_unreachable_latency_names_a_target_that_is_then_met(tmp_path, asked):
    run = dict(schedule=Schedule(steps=1, finetune_iters=0, epochs=0, round_to=8), timer=TileTimer(),
               log=lambda *a: None, latency_table=tmp_path / "t.json")
    with pytest.raises(UserError, match="unreachable") as e:
        prune(TinyNet(), SHAPE, make_criterion("l2"), asked, **run)
    said = re.search(r"rerun with --latency-(reduction|budget-ms) ([0-9.]+)", str(e.value))
    assert said, str(e.value)
    torch.manual_seed(0)
    result = prune(TinyNet(), SHAPE, make_criterion("l2"), {f"latency_{said[1].replace('-', '_')}": float(said[2])},
                   **run)
    assert result.target_met and result.latency["hit"]
