import json

import pytest

from singe_deploy.config import defaults, validate
from singe_deploy.errors import UserError
from singe_deploy.measure import bench, threads

from ..conftest import TinyNet


@pytest.mark.parametrize("cores, counts", [(1, [1]), (2, [1, 2]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])])
def test_candidates_double_up_to_the_physical_cores(cores, counts):
    assert threads.candidates(cores) == counts


def test_the_fewest_threads_within_the_tolerance_of_the_fastest_win():
    assert threads.choose([1, 2, 4], [1.0, 0.6, 0.3]) == 4
    assert threads.choose([1, 2], [1.0, 1.01]) == 1  # one thread is the faster: fewer threads wasted
    assert threads.choose([1, 2], [1.0, 0.98]) == 1  # within 3%: the fewer threads
    assert threads.choose([1, 2], [1.0, 0.9]) == 2


def test_a_count_is_measured_once_per_key_and_cached(tmp_path, monkeypatch):
    calls = []

    def fake(model, input_shape, batch, counts, opset=18):
        calls.append(batch)
        return [0.5, 0.6][:len(counts)]

    monkeypatch.setattr(threads, "measure", fake)
    monkeypatch.setattr(bench, "default_threads", lambda: 2)
    cache = tmp_path / "t.json"
    n, record = threads.resolve(TinyNet(), [1, 1, 16, 16], "onnx", cache=cache, log=lambda *a: None)
    assert n == 1 and record["source"] == "measured" and json.loads(cache.read_text())["ms"] == [0.5, 0.6]
    again, record = threads.resolve(TinyNet(), [1, 1, 16, 16], "onnx", cache=cache, log=lambda *a: None)
    assert again == 1 and record["source"] == "measured (cached)" and calls == [1]
    threads.resolve(TinyNet(), [1, 1, 16, 16], "onnx", batch=8, cache=cache, log=lambda *a: None)
    assert calls == [1, 8]  # another batch is another key


def test_measuring_times_the_dense_model_at_each_count():
    ms = threads.measure(TinyNet(), [1, 1, 16, 16], 1, [1, 2], min_iters=3, min_seconds=0.01)
    assert len(ms) == 2 and all(t > 0 for t in ms)


def test_other_targets_keep_their_runtime_default(monkeypatch):
    monkeypatch.setattr(threads, "measure", lambda *a, **k: pytest.fail("only onnxruntime is measured"))
    assert threads.resolve(TinyNet(), [1, 1, 16, 16], "torch", log=lambda *a: None)[0] is None


def test_the_option_takes_auto_or_a_positive_count():
    assert validate(defaults())["threads"] == "auto"
    assert validate(dict(defaults(), threads="3"))["threads"] == 3
    for bad in ("0", "many", "-1"):
        with pytest.raises(UserError, match="--threads must be 'auto' or a positive integer"):
            validate(dict(defaults(), threads=bad))


def test_a_resumed_run_keeps_its_count_and_a_run_that_times_nothing_measures_none(monkeypatch):
    from singe_deploy.compress import _threads

    monkeypatch.setattr(threads, "resolve", lambda *a, **k: pytest.fail("not measured"))
    kept = {"threads": 1, "source": "measured"}
    cfg = validate(defaults())
    assert _threads(cfg, TinyNet(), [1, 1, 16, 16], {"threads": kept}, print) == kept
    assert _threads(validate(dict(defaults(), threads=2)), None, None, None, print) == {"threads": 2,
                                                                                        "source": "option"}
    quiet = validate(dict(defaults(), export=False, round_to=8))
    assert _threads(quiet, None, None, None, print)["threads"] is None


def test_bench_times_a_compress_folder_with_the_count_its_report_names(tmp_path):
    from singe_deploy.commands.bench import threads_from_reports
    from singe_deploy.measure.device import cpu_model

    folder = tmp_path / "out"
    folder.mkdir()
    rep = {"threads": {"threads": 1}, "environment": {"device": {"cpu": cpu_model()}}}
    (folder / "report.json").write_text(json.dumps(rep))
    n, note = threads_from_reports([str(folder)])
    assert n == 1 and "as compress measured" in note
    rep["environment"]["device"]["cpu"] = "another CPU"
    (folder / "report.json").write_text(json.dumps(rep))
    assert threads_from_reports([str(folder), str(tmp_path / "x.onnx")]) == (None, None)
