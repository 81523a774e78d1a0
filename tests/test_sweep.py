"""--sweep: one entwined run, one fine-tuned model per MACs reduction, and the front of accuracy against latency."""
import json

import torch

from singe_deploy.cli import main
from singe_deploy.measure.flops import count
from singe_deploy.models.specs import load_pruned
from singe_deploy.sweep import front

from .conftest import needs_fashion
from .test_cli import FAST, _validate


def _point(x, ms, acc):
    return {"reduction": x, "macs": int(1000 / x), "latency_ms": ms, "dense_latency_ms": 1.0, "accuracy": acc}


def test_the_front_keeps_the_points_no_other_beats_on_both_latency_and_accuracy():
    points = [_point(1.5, 0.8, 0.93), _point(2, 0.7, 0.94), _point(3, 0.5, 0.90), _point(4, 0.55, 0.89)]
    assert [q["reduction"] for q in front(points)] == [3, 2]  # 1.5x: slower and less accurate than 2x; 4x: than 3x
    untimed = [dict(q, latency_ms=None) for q in points]  # ordered by MACs instead
    assert [q["reduction"] for q in front(untimed)] == [4, 3, 2]


@needs_fashion
def test_a_sweep_writes_one_fine_tuned_model_per_reduction_from_one_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["compress", "--out", str(out), "--criterion", "l2", "--sweep", "1.6,1.3"] + FAST)
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    d, points = report["dense"], report["sweep"]["points"]
    assert [q["reduction"] for q in points] == [1.3, 1.6] and len(report["steps"]) == 2
    for q, step in zip(points, report["steps"]):
        assert d["macs"] / q["reduction"] * 0.9 <= q["macs"] == step["macs"] <= d["macs"] / q["reduction"] * 1.03
        model = load_pruned(out / q["pruned_pt"])
        assert count(model, (1, 1, 28, 28)).macs == q["macs"] and (out / q["pruned_onnx"]).is_file()
        assert 0 <= q["accuracy"] <= 1 and q["latency_ms"] > 0
        assert not (out / q["pruned_pt"]).with_name("step.pt").exists()
    assert set(report["sweep"]["front"]) <= {1.3, 1.6} and report["sweep"]["front"]
    last = torch.load(out / points[-1]["pruned_pt"], weights_only=True)["state_dict"]
    run = torch.load(out / "pruned.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(last[k], run[k]) for k in run)  # the run's model is the last point's
    assert report["pruned"]["accuracy"] == points[-1]["accuracy"]
    assert "## Sweep" in (out / "report.md").read_text() and (out / "sweep.png").is_file()
