"""tools/prune_zoo.py: one compress run per model, rows kept across runs, latency columns with --latency."""
import json

from .conftest import load_tool


def test_a_model_runs_at_the_asked_reduction_with_latency_and_passed_rows_are_kept(tmp_path, monkeypatch):
    zoo = load_tool("prune_zoo")
    out = tmp_path / "zoo"
    assert zoo.main(["--models", "builtin:resnet20@32", "--reduction", "2", "--latency", "--out", str(out)]) == 0
    data = json.loads(out.with_suffix(".json").read_text())
    row = data["rows"][0]
    assert data["reduction"] == row["reduction"] == 2.0 and row["status"] == "pass" and row["graph_macs_agree"]
    assert 2.0 <= row["macs_ratio"] < 2.2 and row["dense_macs"] > row["pruned_macs"]
    assert row["dense_ms"] > 0 and row["pruned_ms"] > 0
    assert abs(row["speedup"] - row["dense_ms"] / row["pruned_ms"]) < 0.01  # both ms are rounded
    md = out.with_suffix(".md").read_text()
    assert "2.0x fewer MACs" in md and "| speedup |" in md and "load" in md
    monkeypatch.setattr(zoo, "run", lambda *a, **k: {"model": "other", "input": 8, "status": "fail", "reason": "x"})
    assert zoo.main(["--models", "builtin:resnet20@32,other", "--out", str(out)]) == 1  # the passed row is kept
    rows = {r["model"]: r for r in json.loads(out.with_suffix(".json").read_text())["rows"]}
    assert rows["builtin:resnet20@32"] == row and rows["other"]["status"] == "fail"
