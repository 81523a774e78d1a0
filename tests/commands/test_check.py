import json

import pytest

from singe_deploy import schemas
from singe_deploy.cli import main
from singe_deploy.errors import UserError

from ..conftest import ROOT
from .test_bench import _without_torch, fixed_batch_onnx


def _budget(tmp_path, text, name="budget.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _report(compressed, tmp_path, **changes):
    """The fixture's report with some figures changed (still valid against the schema)."""
    data = json.loads((compressed / "report.json").read_text())
    for key, value in changes.items():
        section, field = key.split("__")
        data[section][field] = value
    assert schemas.errors(data, "report") == []
    path = tmp_path / "report.json"
    path.write_text(json.dumps(data))
    return str(path), data


ALL = """
max_macs: {macs}
max_params: {params}
min_accuracy: 0.90
max_accuracy_drop: 0.02
min_macs_reduction: 1.5
max_latency_ms:
  - {{backend: onnxruntime, device: cpu, batch_size: 1, stat: median, ms: 1000}}
  - {{backend: onnxruntime, device: cpu, batch_size: 2, stat: p90, ms: 1000}}
max_parity_abs_diff: {{onnx: 1e-3, torch: 1.0e-5}}
min_top1_agreement: 0.99
onnx_opset: 18
"""


def test_a_report_within_budget_passes_every_key(compressed, tmp_path, capsys):
    report, data = _report(compressed, tmp_path, dense__accuracy=0.93, pruned__accuracy=0.92)
    budget = _budget(tmp_path, ALL.format(macs=data["pruned"]["macs"], params=data["pruned"]["params"]))
    assert main(["check", "--budget", budget, report]) == 0
    out = capsys.readouterr().out
    for key in ("max_macs", "max_params", "min_accuracy", "max_accuracy_drop", "min_macs_reduction",
                "max_parity_abs_diff (onnx)", "max_parity_abs_diff (torch)", "min_top1_agreement", "onnx_opset",
                "max_latency_ms (pruned, onnxruntime, cpu, batch 1, median)",
                "max_latency_ms (pruned, onnxruntime, cpu, batch 2, p90)", "compress checks"):
        assert f"| {key} |" in out, key
    assert "MISS" not in out


@pytest.mark.parametrize("budget_text,changes,missed", [
    ("max_macs: {macs_less}", {}, "max_macs"),
    ("max_params: {params_less}", {}, "max_params"),
    ("min_accuracy: 0.95", {"pruned__accuracy": 0.94}, "min_accuracy"),
    ("max_accuracy_drop: 0.01", {"dense__accuracy": 0.95, "pruned__accuracy": 0.93}, "max_accuracy_drop"),
    ("min_accuracy: 0.5", {"pruned__accuracy": None}, "min_accuracy"),  # not measured is not a pass
    ("min_macs_reduction: 100", {}, "min_macs_reduction"),
    ("max_latency_ms: 0.000001", {}, "max_latency_ms"),
    ("max_latency_ms: [{{backend: tensorrt, ms: 5}}]", {}, "max_latency_ms"),  # no such entry
    ("max_parity_abs_diff: 0", {}, "max_parity_abs_diff"),
    ("min_top1_agreement: 1.0\nmax_parity_abs_diff: {{tensorrt: 0.01}}", {}, "max_parity_abs_diff (tensorrt)"),
    ("onnx_opset: {{min: 19}}", {}, "onnx_opset"),
])
def test_each_budget_key_can_fail(compressed, tmp_path, capsys, budget_text, changes, missed):
    report, data = _report(compressed, tmp_path, **changes)
    text = budget_text.format(macs_less=data["pruned"]["macs"] - 1, params_less=data["pruned"]["params"] - 1)
    assert main(["check", "--budget", _budget(tmp_path, text), report]) == 1
    out, err = capsys.readouterr()
    misses = out.split("checks missed:")[1]
    assert f"| {missed}" in misses and "MISS" in misses
    assert len(err.strip().splitlines()) == 1 and "budget checks missed" in err


def test_a_report_whose_own_checks_failed_misses(compressed, tmp_path, capsys):
    data = json.loads((compressed / "report.json").read_text())
    data["checks"] = {"passed": False, "failures": ["onnx pruned parity: max |diff| 1"]}
    (tmp_path / "r.json").write_text(json.dumps(data))
    assert main(["check", "--budget", _budget(tmp_path, "max_macs: 1e12"), str(tmp_path / "r.json")]) == 1
    assert "| compress checks | passed | onnx pruned parity" in capsys.readouterr().out


def test_an_onnx_file_gets_the_export_checks_without_torch(compressed, tmp_path):
    data = json.loads((compressed / "report.json").read_text())
    budget = _budget(tmp_path, f"""
max_macs: {data['pruned']['macs']}
max_parity_abs_diff: 1e-4
min_top1_agreement: 1.0
onnx_opset: 18
max_latency_ms: [{{batch_size: 2, ms: 1000}}]
""")
    r = _without_torch("check", "--budget", budget, str(compressed / "pruned.onnx"), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    checks = {c["check"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["graph MACs/params"]["ok"] and f"{data['pruned']['macs']:,} MACs" in checks["graph MACs/params"]["actual"]
    assert float(checks["max_parity_abs_diff"]["actual"]) <= 1e-4  # onnxruntime vs the ONNX reference evaluator
    assert checks["onnx_opset"]["actual"] == "18"
    assert checks["max_latency_ms (pruned, batch 2, median)"]["ok"]


def test_an_onnx_file_cannot_answer_accuracy(compressed, tmp_path, capsys):
    assert main(["check", "--budget", _budget(tmp_path, "min_accuracy: 0.5"), str(compressed / "pruned.onnx")]) == 1
    assert "not recorded in an .onnx file" in capsys.readouterr().out


def test_a_broken_onnx_graph_fails_the_checker_and_the_run(tmp_path, capsys):
    import onnx

    path = fixed_batch_onnx(tmp_path / "m.onnx")
    m = onnx.load(str(path))
    m.graph.node[0].input[1] = "missing_weight"
    onnx.save(m, str(path))
    assert main(["check", "--budget", _budget(tmp_path, "onnx_opset: 18"), str(path)]) == 1
    out = capsys.readouterr().out
    assert "| onnx checker | passes |" in out and "| onnxruntime load | loads |" in out


def test_a_latency_file_answers_latency_only(compressed, tmp_path, capsys):
    lat = tmp_path / "lat.json"
    assert main(["bench", str(compressed / "pruned.onnx"), "--iters", "5", "--seconds", "0", "--out", str(lat)]) == 0
    assert main(["check", "--budget", _budget(tmp_path, "max_latency_ms: 1000"), str(lat)]) == 0
    assert main(["check", "--budget", _budget(tmp_path, "max_latency_ms: 1000\nmax_macs: 1"), str(lat)]) == 1
    assert "not recorded in a latency file" in capsys.readouterr().out


@pytest.mark.parametrize("text,match", [
    ("max_mac: 5", "unknown budget key 'max_mac' in .* \\(did you mean 'max_macs'\\?\\)"),
    ("max_macs: lots", "must be a number"),
    ("max_params: -3", "must not be negative"),
    ("min_accuracy: 93", "between 0 and 1"),
    ("min_macs_reduction: 0.5", ">= 1"),
    ("max_latency_ms: [{ms: 5, stat: p99}]", "stat must be median or p90"),
    ("max_latency_ms: [{batch: 1, ms: 5}]", "unknown key\\(s\\) batch"),
    ("max_latency_ms: [{backend: onnxruntime}]", "needs 'ms'"),
    ("max_latency_ms: 0", "'ms' must be > 0"),
    ("onnx_opset: eighteen", "opset number"),
    ("max_macs: true", "must be a number"),
    ("- max_macs", "must be a mapping"),
    ("max_macs: [1", "not valid YAML"),
    ("", "is empty"),
])
def test_bad_budgets_exit_2_with_one_line(compressed, tmp_path, capsys, text, match):
    assert main(["check", "--budget", _budget(tmp_path, text), str(compressed / "report.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    import re

    assert re.search(match, err[0]), err[0]


@pytest.mark.parametrize("artifact,content,match", [
    ("missing.json", None, "does not exist"),
    ("garbage.json", "{not json", "is not valid JSON"),
    ("other.json", '{"a": 1}', "neither a singe-deploy report nor a latency file"),
    ("broken.json", '{"schema_version": 1, "dense": {}, "pruned": {}}', "breaks its schema"),
    ("corrupt.onnx", b"\x08\x07not a model", "not a readable ONNX file"),
])
def test_unreadable_artifacts_exit_2(tmp_path, capsys, artifact, content, match):
    path = tmp_path / artifact
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert main(["check", "--budget", _budget(tmp_path, "max_macs: 5"), str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err


def test_missing_budget_file_exits_2(compressed, tmp_path, capsys):
    assert main(["check", "--budget", str(tmp_path / "nope.yaml"), str(compressed / "report.json")]) == 2
    assert "budget file" in capsys.readouterr().err


def test_shipped_budgets_are_valid():

    from singe_deploy.commands.check import load_budget

    budgets = sorted((ROOT / "configs" / "budgets").glob("*.yaml"))
    assert len(budgets) >= 2
    for b in budgets:
        assert load_budget(b)


def test_a_shipped_budget_is_found_by_name(tmp_path, monkeypatch):
    from singe_deploy.commands.check import load_budget

    monkeypatch.chdir(tmp_path)  # no configs/ here, as after an install from a wheel
    assert load_budget("ci") == load_budget(ROOT / "configs" / "budgets" / "ci.yaml")
    with pytest.raises(UserError, match="budget file cj does not exist; fix the path or name a shipped one: ci, onnx"):
        load_budget("cj")


def test_the_ci_workflow_example_runs_the_export_check():

    import yaml

    root = ROOT
    flow = yaml.safe_load((root / ".github" / "workflows" / "export-check.yml").read_text())
    steps = [s.get("run", "") for job in flow["jobs"].values() for s in job["steps"]]
    assert any("tools/export_check.sh" in s for s in steps)
    script = (root / "tools" / "export_check.sh").read_text()
    assert "singe-deploy check --budget" in script
    for budget in ("configs/budgets/ci.yaml", "configs/budgets/onnx.yaml"):
        assert budget in script and (root / budget).is_file()
    assert "tools/export_check.sh" in (root / ".ci" / "run").read_text()


def test_per_precision_budgets_read_the_deployables(compressed, tmp_path, capsys):
    data = json.loads((compressed / "report.json").read_text())
    row = {"variant": "pruned", "format": "onnx", "latency_ms": {}, "macs": 1, "params": 1, "top1_agreement": 1.0}
    data["deployables"] = [dict(row, name="pruned", precision="fp32", accuracy=0.92, size_bytes=2_000_000),
                           dict(row, name="pruned.int8", precision="int8", accuracy=0.91, size_bytes=600_000)]
    fp32 = next(e for e in data["latency"] if e["variant"] == "pruned")
    data["latency"].append(dict(fp32, precision="int8", quantized=True, median_ms=fp32["median_ms"] / 10))
    report = tmp_path / "r.json"
    report.write_text(json.dumps(data))
    ok = ("min_accuracy: {fp32: 0.92, int8: 0.90}\nmax_size_mb: {int8: 0.7}\n"
          f"max_latency_ms: [{{precision: int8, ms: {fp32['median_ms'] / 5}}}]\n")
    assert main(["check", "--budget", _budget(tmp_path, ok), str(report)]) == 0
    out = capsys.readouterr().out
    for key in ("min_accuracy (fp32)", "min_accuracy (int8)", "max_size_mb (int8)", "max_latency_ms (pruned, int8"):
        assert f"| {key}" in out, key
    # without a precision a latency rule reads the model as exported, not its int8 file
    slow = _budget(tmp_path, f"max_latency_ms: {fp32['median_ms'] / 5}")
    assert main(["check", "--budget", slow, str(report)]) == 1
    for text, missed in (("min_accuracy: {int8: 0.95}", "min_accuracy (int8)"),
                         ("max_size_mb: 1.5", "max_size_mb (fp32)"),
                         ("min_accuracy: {fp16: 0.5}", "min_accuracy (fp16)")):  # no fp16 file: a miss
        capsys.readouterr()
        assert main(["check", "--budget", _budget(tmp_path, text), str(report)]) == 1
        assert f"| {missed}" in capsys.readouterr().out.split("checks missed:")[1]
    assert main(["check", "--budget", _budget(tmp_path, "max_size_mb: {int4: 1}"), str(report)]) == 2
    assert "unknown precision 'int4'" in capsys.readouterr().err


def test_max_accuracy_drop_in_points_on_the_command_line(compressed, tmp_path, capsys):
    report = json.loads((compressed / "report.json").read_text())
    report["dense"]["accuracy"], report["pruned"]["accuracy"] = 0.9421, 0.9371  # a real run's figures
    drop = 100 * (report["dense"]["accuracy"] - report["pruned"]["accuracy"])  # points
    path = str(tmp_path / "report.json")
    (tmp_path / "report.json").write_text(json.dumps(report))
    assert main(["check", "--max-accuracy-drop", f"{drop + 0.01:.4f}", path]) == 0
    assert "| max_accuracy_drop" in capsys.readouterr().out
    assert main(["check", "--max-accuracy-drop", f"{drop - 0.01:.4f}", path]) == 1
    loose = _budget(tmp_path, "max_accuracy_drop: 0.5\nmax_macs: 1e12\n")  # the flag replaces the file's fraction
    assert main(["check", "--budget", loose, "--max-accuracy-drop", f"{drop - 0.01:.4f}", path]) == 1
    capsys.readouterr()
    for argv, match in ((["--max-accuracy-drop", "-1"], "0 to 100"), (["--max-accuracy-drop", "101"], "0 to 100"),
                        ([], "give a budget")):
        assert main(["check", *argv, path]) == 2
        err = capsys.readouterr().err
        assert match in err and len(err.strip().splitlines()) == 1
