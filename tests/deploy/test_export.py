import numpy as np
import onnx
import pytest
import torch

from singe_deploy.deploy.export import check_onnx, export_onnx, parity
from singe_deploy.errors import CheckFailed, UserError
from singe_deploy.measure.bench import OnnxRuntime, Torch, measure
from singe_deploy.models.specs import build_model

from ..conftest import TinyNet


def test_onnx_export_has_a_dynamic_batch_and_matches_pytorch(tmp_path):
    m = TinyNet().eval()
    path = export_onnx(m, (1, 1, 12, 12), tmp_path / "m.onnx")
    assert check_onnx(path) >= 18
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param
    ort = OnnxRuntime(path, threads=1)
    x = [torch.randn(5, 1, 12, 12) for _ in range(2)]
    q = parity(Torch(m), ort, x, "pytorch")
    assert q["max_abs_diff"] < 1e-4 and q["top1_agreement"] == 1.0 and q["samples"] == 10


def test_weights_in_a_side_file_are_checked_by_path(tmp_path, monkeypatch):
    """Models past protobuf's 2 GB limit keep their weights beside the graph; the checker reads them by path
    (a ModelProto that large cannot be serialised in memory)."""
    m = TinyNet().eval()
    path = export_onnx(m, (1, 1, 12, 12), tmp_path / "m.onnx", external_data=True)
    graph = onnx.load(str(path), load_external_data=False).graph
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer)
    checked = []
    real = onnx.checker.check_model
    monkeypatch.setattr(onnx.checker, "check_model", lambda model, **kw: checked.append(model) or real(model, **kw))
    assert check_onnx(path) >= 18
    assert checked == [str(path)]


def test_parity_catches_a_different_model(tmp_path):
    a, b = TinyNet().eval(), TinyNet().eval()
    q = parity(Torch(a), Torch(b), [torch.randn(16, 1, 12, 12)], "a")
    assert q["max_abs_diff"] > 1e-3


def test_old_opset_is_refused(tmp_path):
    with pytest.raises(UserError, match="opset"):
        export_onnx(TinyNet(), (1, 1, 12, 12), tmp_path / "m.onnx", opset=13)


def test_checker_failure_is_a_check_failure(tmp_path):
    m = TinyNet().eval()
    path = export_onnx(m, (1, 1, 12, 12), tmp_path / "m.onnx")
    model = onnx.load(str(path))
    model.graph.node[0].input[0] = "no_such_tensor"
    onnx.save(model, str(tmp_path / "broken.onnx"))
    with pytest.raises(CheckFailed, match="checker"):
        check_onnx(tmp_path / "broken.onnx")


def test_measure_follows_the_schema_fields(report_schema):
    stats = measure(Torch(build_model("builtin:resnet20", 10, 1)), (1, 1, 28, 28), batch_size=2, min_iters=5,
                    min_seconds=0.05, warmup_iters=2)
    item = report_schema["properties"]["latency"]["items"]
    for key in item["required"]:
        if key != "variant":
            assert key in stats, key
    assert stats["iterations"] >= 5 and stats["warmup"] >= 2
    assert stats["p99_ms"] >= stats["p90_ms"] >= stats["median_ms"] > 0
    assert stats["throughput_per_s"] > 0 and stats["batch_size"] == 2


def test_a_missing_onnxruntime_provider_is_bad_input_not_a_silent_cpu_run(tmp_path):
    import onnxruntime as ort


    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    export_onnx(build_model("builtin:resnet20", 10, 1), (1, 1, 28, 28), tmp_path / "m.onnx")
    with pytest.raises(UserError, match="no CUDAExecutionProvider"):
        OnnxRuntime(tmp_path / "m.onnx", provider="cuda")


def test_parity_of_segmentation_maps_is_the_share_of_pixels_that_agree():
    class Map:
        def __init__(self, flip):
            self.flip = flip

        def infer(self, x):
            out = torch.zeros(2, 3, 4, 5)
            out[:, 1] = 1.0  # class 1 everywhere
            if self.flip:
                out[0, 2, 0, 0] = 2.0  # one pixel of the first sample says class 2
            return out.numpy()

    q = parity(Map(False), Map(True), [torch.zeros(2, 3, 4, 5)], "a")
    assert q["samples"] == 2 and abs(q["top1_agreement"] - (1 - 1 / 20 / 2)) < 1e-9


class _Fixed:
    def __init__(self, out):
        self.out = np.asarray(out, dtype=np.float32)

    def infer(self, x):
        return self.out


def test_top1_counts_a_tie_within_the_tolerance_as_agreement_and_a_real_flip_as_not():
    ref = _Fixed([[1.0, 1.0000001, 0.0], [2.0, 0.0, 0.0]])  # sample 0: classes 0 and 1 tie within rounding
    near = _Fixed([[1.0000002, 1.0, 0.0], [2.0, 0.0, 0.0]])
    flipped = _Fixed([[1.0, 1.0000001, 0.0], [0.0, 2.0, 0.0]])
    assert parity(ref, near, [np.zeros(1)], "a")["top1_agreement"] == 0.5  # exact argmax: the tie flips
    assert parity(ref, near, [np.zeros(1)], "a", tie=1e-3)["top1_agreement"] == 1.0
    assert parity(ref, flipped, [np.zeros(1)], "a", tie=1e-3)["top1_agreement"] == 0.5


def test_parity_of_detection_outputs_is_the_share_of_anchors_that_agree():
    ref = np.zeros((2, 4, 6), dtype=np.float32)
    ref[..., 1] = 1.0  # (N, anchors, scores and box deltas): class 1 at every anchor
    other = ref.copy()
    other[0, 0, 3] = 5.0  # one anchor of the first sample disagrees
    q = parity(_Fixed(ref), _Fixed(other), [np.zeros(1)], "a", tie=1e-3)
    assert abs(q["top1_agreement"] - (1 - 1 / 4 / 2)) < 1e-9


def test_a_relative_tolerance_scales_with_each_samples_largest_output():
    big = _Fixed([[1.6e9, 0.0], [1.0, 0.0]])
    off = _Fixed([[1.6e9 + 4.5e3, 3e3], [1.0, 2e-3]])  # float32 rounding at the first sample's scale
    assert parity(big, off, [np.zeros(1)], "a")["beyond_rtol"] > 4e3
    q = parity(big, off, [np.zeros(1)], "a", rtol=1e-5)
    assert q["max_abs_diff"] > 4e3
    assert q["beyond_rtol"] == pytest.approx(2e-3, rel=1e-2)  # the small sample keeps its own scale


def test_nan_outputs_are_counted_and_fail_the_parity_check_never_a_difference_of_0():
    from singe_deploy.deploy.deployables import Deployed, DeploySettings, _check_parity

    class Fixed:
        def __init__(self, out):
            self.out = out

        def infer(self, x):
            return self.out

    good = np.array([[1.0, 2.0], [3.0, 0.5]], dtype=np.float32)
    bad = good.copy()
    bad[1, 0] = np.nan
    q = parity(Fixed(good), Fixed(bad), [np.zeros((2, 1))], "pytorch")
    assert q["nonfinite"] == 1 and q["max_abs_diff"] == 0.0
    out = Deployed(exports=[{"format": "onnx", "variant": "pruned", "path": "pruned.onnx", "parity": q}])
    _check_parity(DeploySettings(), out)
    assert out.failures == ["onnx pruned parity: 1 NaN or infinite outputs"]


def test_quantized_files_are_held_to_their_own_thresholds_on_real_data():
    from singe_deploy.deploy.deployables import (
        Deployed,
        DeploySettings,
        _check_accuracy,
        _check_parity,
    )

    q = {"max_abs_diff": 0.4, "top1_agreement": 0.5, "beyond_rtol": 0.4, "rtol": 0.0, "nonfinite": 0}
    s = DeploySettings(quant_top1=0.98, quant_accuracy_drop=0.005)
    out = Deployed(exports=[{"format": "onnx", "variant": "pruned", "precision": "int8", "path": "pruned.int8.onnx",
                             "parity": q}])
    _check_parity(s, out)  # the parity batches' few images do not decide: the validation set does
    assert out.failures == [] and out.exports[0]["thresholds"] == {"top1_agreement": 0.98, "accuracy_drop": 0.005}
    rows = [{"name": "pruned", "variant": "pruned", "format": "onnx", "precision": "fp32", "accuracy": 0.93,
             "path": "pruned.onnx"},
            {"name": "pruned.int8", "variant": "pruned", "format": "onnx", "precision": "int8", "accuracy": 0.92,
             "path": "pruned.int8.onnx"}]
    predicted = {"pruned": [0] * 97 + [1, 2, 3], "pruned.int8": [0] * 100}
    _check_accuracy(rows, s, out, predicted)
    assert rows[1]["agreement_with_fp32"] == 0.97 and abs(rows[1]["accuracy_drop"] - 0.01) < 1e-12
    assert out.failures == [
        "pruned.int8.onnx: top-1 agreement 0.9700 with pruned.onnx on 100 images (>= 0.98, --quant-top1)",
        "pruned.int8.onnx: accuracy 0.9200, 0.0100 below pruned.onnx's 0.9300 (<= 0.005, --quant-accuracy-drop)"]
    synthetic = Deployed(exports=[dict(out.exports[0])])
    _check_parity(s, synthetic, real=False)
    assert synthetic.failures == [] and synthetic.exports[0]["thresholds"].startswith("not checked: synthetic")
