import copy
import json

import pytest

from singe_deploy.errors import CheckFailed
from singe_deploy.report import markdown, schema, validate

from .conftest import SHARED


def _minimal():
    cost = {"macs": 10, "params": 5, "other_ops": 1, "accuracy": None}
    lat = {"backend": "onnxruntime", "device": "cpu", "variant": "dense", "batch_size": 1, "warmup": 1,
           "iterations": 3, "median_ms": 1.0, "p90_ms": 1.1, "p99_ms": 1.2, "mean_ms": 1.0, "std_ms": 0.1,
           "throughput_per_s": 900.0}
    return {"schema_version": 1, "tool": {"name": "singe-deploy", "version": "0"},
            "model": {"spec": "builtin:resnet20", "input_shape": [1, 1, 28, 28]},
            "dense": dict(cost), "pruned": dict(cost, macs=5), "criterion": {"name": "singe"},
            "exports": [{"format": "onnx", "path": "p.onnx", "parity": {"max_abs_diff": 0.0, "top1_agreement": 1.0,
                                                                        "reference": "pytorch"}}],
            "latency": [lat, dict(lat, variant="pruned", median_ms=0.5,
                                  speedup={"speedup": 2.0, "ci95": [1.9, 2.1], "paired": True, "verdict": "faster"})],
            "environment": {"python": "3", "torch": "2", "platform": "x"},
            "target": {"metric": "macs", "reduction": 2.0, "hit": True}, "convention": "MACs"}


@pytest.mark.skipif(not (SHARED / "spec" / "report.schema.json").exists(), reason="no ../shared checkout")
def test_schema_copy_is_in_sync_with_the_shared_contract():
    assert schema() == json.loads((SHARED / "spec" / "report.schema.json").read_text())


def test_validate_accepts_a_minimal_report_and_rejects_breaks():
    validate(_minimal())
    for breaking in (lambda r: r.pop("latency"), lambda r: r["dense"].update(macs=-1),
                     lambda r: r["exports"][0]["parity"].update(top1_agreement=2),
                     lambda r: r["latency"][0].update(variant="other")):
        r = copy.deepcopy(_minimal())
        breaking(r)
        with pytest.raises(CheckFailed, match="schema"):
            validate(r)


def test_markdown_shows_costs_latency_and_speedup():
    md = markdown(_minimal())
    assert "| MACs | 10 | 5 | 0.500 |" in md
    assert "2.00x (95%: 1.90-2.10)" in md  # the pruned entry's speedup and its interval
    assert "n/a" in md  # accuracy of a latency-only run


def test_markdown_shows_the_graph_count_beside_parity():
    r = _minimal()
    r["exports"][0]["graph_count"] = {"macs": 5, "macs_rel_diff": 0.0}
    line = next(l for l in markdown(r).splitlines() if l.startswith("| onnx |"))
    assert line.rstrip().endswith("| 5 (+0.000%) |")


def test_latency_entries_of_latency_files_have_the_report_form():
    from singe_deploy import schemas

    report_item = schemas.load("report")["properties"]["latency"]["items"]
    latency_items = schemas.load("latency")["properties"]["latency"]["items"]["allOf"]
    assert latency_items[0] == report_item
    assert set(report_item["required"]) <= set(latency_items[0]["required"])


def test_report_environment_carries_the_device_block():
    from singe_deploy.report import environment

    env = environment(threads=3)
    assert env["device"]["threads"] == 3 and env["device"]["cores_logical"] >= 1 and "runtimes" in env["device"]


def test_a_speedup_whose_interval_holds_one_is_no_measurable_speedup():
    r = _minimal()
    r["latency"][1].update(median_ms=1.02, speedup={"speedup": 0.98, "ci95": [0.95, 1.01], "paired": True,
                                                     "verdict": "no measurable speedup"})
    row = [line for line in markdown(r).splitlines() if line.startswith("| onnxruntime |")][1]
    assert row.endswith("| no measurable speedup (95%: 0.95-1.01x) |")
    assert "0.98x" not in row


def test_the_latency_targets_own_check_is_shown_beside_the_table():
    r = _minimal()
    r["target"]["latency"] = {"dense_ms": 2.0, "measured_ms": 1.3, "achieved": 2.0 / 1.3, "reduction": 1.5}
    assert "dense 2.000 ms, pruned 1.300 ms, 1.54x (target 1.5x)" in markdown(r)


def test_the_channel_alignment_and_its_probe_are_in_the_first_paragraph():
    r = _minimal()
    r["alignment"] = {"round_to": 16, "source": "probe", "scores": {"1": 1.0, "8": 0.9, "16": 0.8},
                      "key": {"backend": "onnxruntime", "device": "CPU X"}}
    first = markdown(r).split("\n\n")[1]
    assert "multiples of 16 (--round-to auto, measured on onnxruntime, CPU X" in first and "16: 0.800" in first


def test_a_budget_is_named_in_ms_with_the_drift_between_the_table_and_the_check():
    r = _minimal()
    r["target"] = {"metric": "latency", "reduction": 1.6, "budget_ms": 25.0, "achieved": 1.62, "hit": True,
                   "latency": {"dense_ms": 42.0, "measured_ms": 26.0, "achieved": 42 / 26, "reduction": 1.6,
                               "table_dense_ms": 40.0, "budget_ms": 25.0, "budget_ms_at_check": 26.25}}
    text = markdown(r)
    assert "target latency <= 25 ms (1.6x of dense), met" in text.split("\n\n")[1]
    assert "ran the dense model 5.0% slower, which makes the budget 26.250 ms" in text
    assert "the pruned model is 4.0% slower than 25 ms" in text


def test_the_measured_thread_count_is_in_the_first_paragraph():
    r = _minimal()
    r["threads"] = {"threads": 1, "source": "measured", "counts": [1, 2], "ms": [0.5, 0.6]}
    first = markdown(r).split("\n\n")[1]
    assert "Latency timed with 1 thread (--threads auto, the dense model at each count, 1: 0.500 ms, 2: 0.600 ms)" \
        in first


def test_environment_versions_come_from_package_metadata():
    from importlib import metadata

    from singe_deploy.report import environment, installed_version

    env = environment()
    assert env["torch_pruning"] == metadata.version("torch-pruning")
    assert env["onnxruntime"] in (installed_version("onnxruntime"),)
    assert installed_version("no_such_module_here") is None


def test_the_tradeoff_plot_needs_accuracies_and_marks_the_file_to_ship(tmp_path):
    from singe_deploy.deploy.recommend import recommend
    from singe_deploy.report import plot_tradeoff

    r = _minimal()
    assert plot_tradeoff(r, tmp_path / "none.png") is False and not (tmp_path / "none.png").exists()
    r["dense"]["accuracy"], r["pruned"]["accuracy"] = 0.94, 0.93
    step = {"removed_channels": 1, "score_seconds": 0.1, "plan_seconds": 0.1, "finetune_seconds": 1.0}
    r["steps"] = [dict(step, step=1, macs=7, params=4, accuracy=0.92), dict(step, step=2, macs=5, params=3,
                                                                         accuracy=None)]
    row = {"variant": "pruned", "format": "onnx", "precision": "fp32", "accuracy": 0.93, "latency_ms": {"1": 0.5},
           "speedup": {}, "top1_agreement": 1.0, "macs": 5, "params": 3, "size_bytes": 100}
    r["deployables"] = [dict(row, name="dense", variant="dense", accuracy=0.94, latency_ms={"1": 1.0}, path="d.onnx"),
                        dict(row, name="pruned", path="p.onnx")]
    r["recommended"] = recommend(r["deployables"])
    assert plot_tradeoff(r, tmp_path / "t.png") is True
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = markdown(r)
    assert "tradeoff.png plots" in md and "**To ship**: p.onnx (fp32, 0.500 ms at batch 1, 93.00%)" in md
    assert "| dense (slower than pruned fp32) |" in md
