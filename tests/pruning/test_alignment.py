import json

import numpy as np
import pytest
import torch

from singe_deploy.errors import UserError
from singe_deploy.pruning import alignment
from singe_deploy.pruning.entwined import Schedule

from ..conftest import TinyNet


def _times(counts, fast_every, gain=0.2):
    """A line through the counts, `gain` faster at multiples of `fast_every`."""
    return [(0.1 + 0.01 * n) * (1 - gain if n % fast_every == 0 else 1) for n in counts]


@pytest.mark.parametrize("fast_every", [16, 8, 4])
def test_the_alignment_whose_multiples_are_fast_is_chosen(fast_every):
    counts = alignment.window(64)
    value, scores = alignment.choose([alignment.score(counts, _times(counts, fast_every))])
    assert value == fast_every
    assert scores[fast_every] < scores[1]


def test_without_an_alignment_effect_any_count_is_kept():
    counts = alignment.window(64)
    value, _ = alignment.choose([alignment.score(counts, _times(counts, 1, gain=0.0))])
    assert value == 1


def test_a_coarser_alignment_must_beat_a_finer_one_by_more_than_the_tolerance():
    counts = alignment.window(64)
    times = [t * (0.995 if n % 16 == 0 else 1) for n, t in zip(counts, _times(counts, 8))]  # 16: 0.5% better
    assert alignment.choose([alignment.score(counts, times)])[0] == 8


def test_windows_start_at_aligned_counts_near_half_the_width():
    assert alignment.window(64) == list(range(32, 64))
    assert alignment.window(16) == list(range(16, 48))
    wide = alignment.window(1024)
    assert wide[0] == 512 and len(wide) == 64  # multiples of 32 timed twice


def test_probe_shapes_are_the_heaviest_ungrouped_convolutions():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.Conv2d(32, 32, 3, padding=1, groups=32),
                                torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.Conv2d(64, 64, 1))
    shapes = alignment.probe_shapes(model, [1, 3, 16, 16])
    assert shapes[0] == (64, 3, 2, 1, 16, 16)  # 32 -> 64 at stride 2: the most MACs
    assert (32, 3, 1, 1, 16, 16) in shapes and len(shapes) == 3  # the depthwise one is not probed
    assert all(s[0] != 32 or s[1] == 3 for s in shapes)


@pytest.mark.parametrize("probe", [alignment.OnnxProbe(), alignment.TorchProbe()], ids=["onnxruntime", "torch"])
def test_a_probe_times_every_count_of_a_window(probe):
    layers = alignment.measure(probe, [(16, 3, 1, 1, 8, 8)], min_iters=3, min_seconds=0.0)
    assert layers[0]["counts"] == list(range(16, 48))
    assert len(layers[0]["ms"]) == 32 and all(t > 0 for t in layers[0]["ms"])


def test_a_probe_is_cached_per_key_and_measured_again_when_it_changes(tmp_path, monkeypatch):
    calls = []

    def fake(probe, shapes, **_):
        calls.append(probe.key())
        counts = alignment.window(shapes[0][0])
        return [{"shape": {}, "counts": counts, "ms": _times(counts, 16)}]

    monkeypatch.setattr(alignment, "measure", fake)
    cache = tmp_path / "a.json"
    value, record = alignment.resolve(TinyNet(), [1, 1, 16, 16], "onnx", cache=cache, log=lambda *a: None)
    assert value == 16 and record["source"] == "probe" and json.loads(cache.read_text())["round_to"] == 16
    again, record = alignment.resolve(TinyNet(), [1, 1, 16, 16], "onnx", cache=cache, log=lambda *a: None)
    assert again == 16 and record["source"] == "probe (cached)" and len(calls) == 1
    alignment.resolve(TinyNet(), [1, 1, 16, 16], "onnx", threads=1, cache=cache, log=lambda *a: None)
    assert len(calls) == 2  # another thread count is another key


def test_tensorrt_keeps_its_rule_without_a_probe(monkeypatch):
    monkeypatch.setattr(alignment, "measure", lambda *a, **k: pytest.fail("TensorRT is not probed"))
    value, record = alignment.resolve(TinyNet(), [1, 1, 16, 16], "trt", log=lambda *a: None)
    assert value == 8 and record["source"] == "rule"


def test_a_python_schedule_left_at_auto_is_resolved_and_a_bad_one_refused(monkeypatch):
    monkeypatch.setattr(alignment, "resolve", lambda *a, **k: (16, {}))
    assert alignment.resolved(Schedule(), TinyNet(), [1, 1, 16, 16]).round_to == 16
    assert alignment.resolved(Schedule(round_to=4), TinyNet(), [1, 1, 16, 16]).round_to == 4
    with pytest.raises(UserError, match="round_to must be 'auto' or a positive integer"):
        Schedule(round_to="fast")


def test_a_resumed_run_keeps_the_alignment_it_started_with(monkeypatch):
    from singe_deploy.compress import _alignment
    from singe_deploy.config import defaults, validate

    monkeypatch.setattr(alignment, "resolve", lambda *a, **k: pytest.fail("a resumed run is not probed again"))
    kept = {"round_to": 16, "source": "probe"}
    assert _alignment(validate(defaults()), TinyNet(), [1, 1, 16, 16], {"alignment": kept}, None, print) == kept
    assert _alignment(validate(dict(defaults(), round_to=4)), None, None, None, None, print) == \
        {"round_to": 4, "source": "option"}


def test_scores_need_two_multiples_in_the_window():
    counts = list(range(16, 48))
    assert 32 not in alignment.score(counts, _times(counts, 16))  # one multiple of 32 (32) only
    assert set(alignment.score(counts, np.ones(32))) == {1, 2, 4, 8, 16}


def test_the_probe_writes_an_ir_version_the_oldest_supported_onnxruntime_loads(monkeypatch):
    import onnx

    saved, save = [], onnx.save
    monkeypatch.setattr(onnx, "save", lambda model, path: (saved.append(model.ir_version), save(model, path)))
    alignment.OnnxProbe().runner(16, 3, 1, 1, 8, 8)
    assert saved and saved[0] <= 10  # onnxruntime 1.20 (tools/constraints/oldest.txt) loads IR 10 at most
