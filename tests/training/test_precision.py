import json

import pytest
import torch

from singe_deploy.pruning.entwined import Schedule
from singe_deploy.training import precision

from ..conftest import TinyNet

BF16 = {"avx2", "avx512f", "avx512_bf16"}


def test_bf16_is_tried_only_where_the_cpu_has_bf16_instructions():
    assert precision.candidates("auto", "auto", {"avx2"}) == ["fp32", "fp32+cl"]
    assert precision.candidates("auto", "auto", BF16) == ["fp32", "fp32+cl", "bf16", "bf16+cl"]
    assert precision.candidates("auto", "auto", {"amx_bf16"})[-1] == "bf16+cl"


def test_a_fixed_option_leaves_only_the_settings_that_agree_with_it():
    assert precision.candidates("off", "auto", BF16) == ["fp32", "fp32+cl"]
    assert precision.candidates("auto", "on", BF16) == ["fp32+cl", "bf16+cl"]


def test_a_setting_must_beat_fp32_by_more_than_the_margin():
    assert precision.choose({"fp32": 100.0, "fp32+cl": 104.0}) == "fp32"
    assert precision.choose({"fp32": 100.0, "fp32+cl": 130.0, "bf16+cl": 200.0}) == "bf16+cl"
    assert precision.choose({"fp32+cl": 100.0, "bf16+cl": 103.0}) == "fp32+cl"  # no fp32: the first is the base


def test_the_choice_is_measured_once_per_key_and_cached(tmp_path, monkeypatch):
    calls = []

    def fake(model, input_shape, batch, settings, distill, num_classes):
        calls.append((batch, tuple(settings)))
        return {s: 100.0 * (2 if s == "bf16+cl" else 1) for s in settings}

    monkeypatch.setattr(precision, "measure", fake)
    monkeypatch.setattr(precision, "cpu_flags", lambda: BF16)
    cache = tmp_path / "p.json"
    args = (TinyNet(), [1, 1, 16, 16], 32, True, 10)
    amp, cl, record = precision.resolve("auto", "auto", *args, cache=cache, log=lambda *a: None)
    assert (amp, cl, record["source"]) == ("bf16", "on", "measured")
    torch.save(record, tmp_path / "state.pt")  # it goes into the resume state, which loads without unpickling code
    assert torch.load(tmp_path / "state.pt", weights_only=True)["key"]["torch"] == torch.__version__
    assert json.loads(cache.read_text())["images_per_s"]["bf16+cl"] == 200.0
    again = precision.resolve("auto", "auto", *args, cache=cache, log=lambda *a: None)
    assert again[:2] == ("bf16", "on") and again[2]["source"] == "measured (cached)" and len(calls) == 1
    precision.resolve("auto", "auto", TinyNet(), [1, 1, 16, 16], 64, True, 10, cache=cache, log=lambda *a: None)
    assert len(calls) == 2  # another batch size is another key


def test_fixed_options_and_a_cpu_without_choice_are_not_measured(monkeypatch):
    monkeypatch.setattr(precision, "measure", lambda *a, **k: pytest.fail("nothing to measure"))
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2"})
    assert precision.resolve("off", "on", TinyNet(), [1, 1, 16, 16], 8, False, 10)[:2] == ("off", "on")
    amp, cl, record = precision.resolve("auto", "off", TinyNet(), [1, 1, 16, 16], 8, False, 10)
    assert (amp, cl) == ("off", "off") and "only setting" in record["source"]


def test_a_probe_that_fails_falls_back_to_fp32(monkeypatch, tmp_path):
    def broken(*a, **k):
        raise RuntimeError("this model cannot train on random batches")

    monkeypatch.setattr(precision, "measure", broken)
    amp, cl, record = precision.resolve("auto", "auto", TinyNet(), [1, 1, 16, 16], 8, False, 10,
                                        cache=tmp_path / "p.json", log=lambda *a: None)
    assert (amp, cl) == ("off", "off") and record["source"].startswith("probe failed")


def test_measuring_trains_copies_and_leaves_the_random_state_alone():
    model = TinyNet()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    rates = precision.measure(model, [1, 1, 16, 16], 8, ["fp32", "fp32+cl"], True, 4, iters=1, warmup=1)
    assert set(rates) == {"fp32", "fp32+cl"} and all(r > 0 for r in rates.values())
    assert torch.equal(torch.get_rng_state(), rng)  # a cached run and a measured one train alike
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_a_schedule_that_does_not_fine_tune_is_left_as_it_is(monkeypatch):
    monkeypatch.setattr(precision, "resolve", lambda *a, **k: pytest.fail("no fine-tuning, nothing to measure"))

    class Synthetic:
        real = False

    schedule = Schedule()
    assert precision.resolved(schedule, TinyNet(), [1, 1, 16, 16], Synthetic()) == (schedule, None)
    assert precision.resolved(schedule, TinyNet(), [1, 1, 16, 16], None) == (schedule, None)


def test_a_resumed_run_keeps_the_precision_it_started_with(monkeypatch):
    from singe_deploy.compress import _precision

    monkeypatch.setattr(precision, "resolve", lambda *a, **k: pytest.fail("a resumed run is not measured again"))
    kept = {"amp": "bf16", "channels_last": "on", "source": "measured"}
    assert _precision(Schedule(), TinyNet(), [1, 1, 16, 16], None, {"precision": kept}, print) == kept
