"""int8 (static QDQ, per-channel weights) and fp16 deployables built from an fp32 ONNX file."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from singe_deploy.deploy.export import export_onnx
from singe_deploy.deploy.quantize import parse_precisions, quantize, to_fp16, to_int8
from singe_deploy.errors import UserError

from ..conftest import TinyNet, needs_fashion

SHAPE = (1, 1, 12, 12)


@pytest.fixture
def fp32(tmp_path):
    torch.manual_seed(0)
    return export_onnx(TinyNet().eval(), SHAPE, tmp_path / "m.onnx")


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def _input_scale(path):
    """The scale of the QuantizeLinear that reads the graph's input."""
    graph = onnx.load(str(path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    node = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    return float(weights[node.input[1]])


def test_int8_is_a_qdq_graph_with_per_channel_weights_close_to_fp32(fp32, tmp_path):
    x = np.random.default_rng(0).standard_normal((16, 1, 12, 12)).astype(np.float32)
    path = to_int8(fp32, tmp_path / "m.int8.onnx", [x[:8], x[8:]])
    graph = onnx.load(str(path)).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 4
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    conv = next(n for n in graph.node if n.op_type == "Conv")
    dq = next(n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] == conv.input[1])
    assert weights[dq.input[0]].dtype == np.int8 and weights[dq.input[1]].shape == (16,)  # one scale per channel
    assert np.abs(weights[dq.input[0]].astype(int)).max() <= 64  # 7-bit weights on the CPU (reduce_range)
    quantize_input = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "input")
    assert weights[quantize_input.input[2]].dtype == np.uint8  # uint8 activations (U8S8)
    a, b = _run(fp32, x), _run(path, x)
    assert np.abs(a - b).max() < 0.1 * np.abs(a).max() and (a.argmax(1) == b.argmax(1)).mean() >= 0.8


def test_int8_ranges_come_from_the_given_batches(fp32, tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 1, 12, 12)).astype(np.float32)
    small = _input_scale(to_int8(fp32, tmp_path / "a.onnx", [x]))
    large = _input_scale(to_int8(fp32, tmp_path / "b.onnx", [10 * x]))
    assert large == pytest.approx(10 * small, rel=1e-3)


def test_int8_for_tensorrt_has_symmetric_activations(fp32, tmp_path):
    x = np.random.default_rng(0).standard_normal((8, 1, 12, 12)).astype(np.float32)
    graph = onnx.load(str(to_int8(fp32, tmp_path / "t.onnx", [x], target="trt"))).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [weights[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)


def test_fp16_keeps_float32_inputs_and_outputs(fp32, tmp_path):
    path = to_fp16(fp32, tmp_path / "m.fp16.onnx")
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    floats = [i.data_type for i in graph.initializer if i.data_type in (onnx.TensorProto.FLOAT,
                                                                           onnx.TensorProto.FLOAT16)]
    assert floats and all(t == onnx.TensorProto.FLOAT16 for t in floats)
    x = np.random.default_rng(0).standard_normal((4, 1, 12, 12)).astype(np.float32)
    assert np.abs(_run(fp32, x) - _run(path, x)).max() < 1e-2


def test_bad_input_names_the_fix(fp32, tmp_path):
    assert parse_precisions("none") == [] and parse_precisions("int8,fp16,int8") == ["int8", "fp16"]
    with pytest.raises(UserError, match="unknown precision 'int4'"):
        parse_precisions("fp16,int4")
    with pytest.raises(UserError, match="calibration batches"):
        quantize(fp32, "int8", tmp_path / "q.onnx", batches=[])
    with pytest.raises(UserError, match="calibration method"):
        to_int8(fp32, tmp_path / "q.onnx", [np.zeros((1, 1, 12, 12), np.float32)], method="mse")
    assert not (tmp_path / "q.onnx").exists()


def test_the_quantize_command(fp32, tmp_path, capsys):
    from singe_deploy.cli import main

    from ..data.test_specs import _fake_fashion

    _fake_fashion(tmp_path)
    model = export_onnx(TinyNet(num_classes=10).eval(), (1, 1, 28, 28), tmp_path / "f.onnx")
    assert main(["quantize", str(model), "--data", "fashion-mnist", "--data-dir", str(tmp_path),
                 "--calib-batches", "2", "--batch-size", "8"]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "f.int8.onnx").is_file() and "accuracy fp32:" in out and "accuracy int8:" in out
    assert main(["quantize", str(model), "--precision", "fp16", "--out", str(tmp_path / "h.onnx")]) == 0
    assert (tmp_path / "h.onnx").is_file()
    assert main(["quantize", str(model), "--data", "synthetic", "--out", str(tmp_path / "s.onnx")]) == 0
    assert "mean nothing" in capsys.readouterr().out
    (tmp_path / "bad.onnx").write_text("not onnx")
    for argv, message in ((["quantize", str(model)], "needs calibration data"),
                          (["quantize", str(tmp_path / "none.onnx")], "does not exist"),
                          (["quantize", str(tmp_path / "bad.onnx"), "--data", "synthetic"], "cannot read")):
        assert main(argv + ["--out", str(tmp_path / "x.onnx")]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


@needs_fashion
def test_compress_writes_quantized_deployables_with_their_runtime_accuracy(tmp_path, capsys, monkeypatch):
    """Each deployable's accuracy is computed by running its file: an int8 file swapped for a random-weight model
    shows chance accuracy while the others keep theirs."""
    import json

    import singe_deploy.deploy.quantize as Q
    from singe_deploy.cli import main
    from singe_deploy.models.specs import build_model

    from ..test_cli import FAST, _validate

    real = Q.quantize

    def broken(src, precision, dst, **kw):
        if precision != "int8":
            return real(src, precision, dst, **kw)
        return export_onnx(build_model("builtin:resnet20", 10, 1).eval(), (1, 1, 28, 28), dst)  # random weights

    out = tmp_path / "run"
    argv = ["compress", "--criterion", "l2", "--quantize", "int8,fp16", "--batch-sizes", "1,2"] + FAST
    lenient = ["--quant-top1", "0", "--quant-accuracy-drop", "1"]  # the files and their figures, whatever int8 loses
    assert main(argv + lenient + ["--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    rows = {r["name"]: r for r in report["deployables"]}
    assert set(rows) == {"dense", "pruned", "pruned.int8", "pruned.fp16"}
    assert abs(rows["pruned"]["accuracy"] - report["pruned"]["accuracy"]) <= 0.01
    assert abs(rows["pruned.int8"]["accuracy"] - rows["pruned"]["accuracy"]) <= 0.05
    assert rows["pruned.int8"]["size_bytes"] < rows["pruned"]["size_bytes"] / 2
    assert all(set(r["latency_ms"]) == {"1", "2"} for r in rows.values())
    assert {(x["precision"], x["batch_size"]) for x in report["latency"] if x["variant"] == "pruned"} == {
        (p, b) for p in ("fp32", "int8", "fp16") for b in (1, 2)}
    assert "## Deployables" in (out / "report.md").read_text()
    assert (out / "tradeoff.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    int8 = onnx.load(str(out / "pruned.int8.onnx")).graph
    assert any(n.op_type == "QuantizeLinear" for n in int8.node)
    rec = report["recommended"]  # the fastest file within 0.5 points of pruned fp32, named on the console's last line
    fast = min((r for r in rows.values() if r["accuracy"] >= rows["pruned"]["accuracy"] - 0.005),
               key=lambda r: r["latency_ms"]["1"])
    assert rec["path"] == fast["path"] or rec["precision"] == "fp32"  # a quantized file must also be 2% faster
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"ship {out}/{rec['path']} ")
    monkeypatch.setattr(Q, "quantize", broken)
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "broken")]) == 1  # a broken int8 file fails its own thresholds
    broken_report = json.loads((tmp_path / "broken" / "report.json").read_text())
    rows = {r["name"]: r for r in broken_report["deployables"]}
    assert rows["pruned.int8"]["accuracy"] < 0.3 < rows["pruned"]["accuracy"]
    assert broken_report["recommended"]["path"] != "pruned.int8.onnx"
    failures = broken_report["checks"]["failures"]
    assert any(f.startswith("pruned.int8.onnx: top-1 agreement") and "--quant-top1" in f for f in failures)
    assert any(f.startswith("pruned.int8.onnx: accuracy") and "--quant-accuracy-drop" in f for f in failures)
    assert rows["pruned.int8"]["agreement_with_fp32"] < 0.5 and rows["pruned.fp16"]["agreement_with_fp32"] > 0.99
    assert not any("fp16" in f for f in failures) and "check failed" in capsys.readouterr().err
    assert main(["compress", "--quantize", "int4"] + FAST + ["--out", str(tmp_path / "bad")]) == 2
    assert "unknown precision 'int4'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_a_precision_that_fails_to_convert_is_a_failure_that_keeps_the_rest(tmp_path, capsys, monkeypatch):
    import json

    import singe_deploy.deploy.quantize as Q
    from singe_deploy.cli import main
    from singe_deploy.errors import CheckFailed

    from ..test_cli import FAST

    real = Q.quantize

    def fails_int8(src, precision, dst, **kw):
        if precision == "int8":
            raise CheckFailed("int8 quantization of pruned.onnx failed (node Conv_3: unsupported); the fp32 file "
                              "is still written")
        return real(src, precision, dst, **kw)

    monkeypatch.setattr(Q, "quantize", fails_int8)
    out = tmp_path / "run"
    argv = ["compress", "--data", "synthetic", "--model", "tests/conftest.py:tiny_factory", "--input-shape",
            "1,1,12,12", "--round-to", "1", "--quantize", "int8,fp16", "--out", str(out)] + FAST
    assert main(argv) == 1
    assert "node Conv_3" in capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert {r["name"] for r in report["deployables"]} == {"dense", "pruned", "pruned.fp16"}
    assert all(r["accuracy"] is None for r in report["deployables"])  # synthetic data: no accuracy
    assert (out / "pruned.onnx").is_file() and (out / "pruned.fp16.onnx").is_file()
    assert not (out / "pruned.int8.onnx").exists()
