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
            "latency": [lat, dict(lat, variant="pruned", median_ms=0.5)],
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
    assert "2.00x" in md  # pruned 0.5 ms vs dense 1.0 ms
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


def test_markdown_marks_noisy_latency_beside_the_table():
    r = _minimal()
    for x in r["latency"]:
        x["std_ms"] = 0.01 * x["mean_ms"]
    assert "Noisy" not in markdown(r)
    r["latency"][1].update(std_ms=0.2, mean_ms=0.5)  # CV 40%
    md = markdown(r)
    rows = [line for line in md.splitlines() if line.startswith("| onnxruntime |")]
    assert "40.0% noisy" in rows[1] and "noisy" not in rows[0]
    assert "**Noisy**: 1 of 2 rows vary by more than 2.5%" in md


def test_environment_versions_come_from_package_metadata():
    from importlib import metadata

    from singe_deploy.report import environment, installed_version

    env = environment()
    assert env["torch_pruning"] == metadata.version("torch-pruning")
    assert env["onnxruntime"] in (installed_version("onnxruntime"),)
    assert installed_version("no_such_module_here") is None
