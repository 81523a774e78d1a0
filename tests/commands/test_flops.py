import json
import subprocess
import sys

import pytest
import torch

from singe_deploy.cli import main
from singe_deploy.deploy.export import export_onnx
from singe_deploy.measure import onnx_flops
from singe_deploy.measure.flops import count
from singe_deploy.models.specs import build_model, save_pruned


def _json(capsys, argv, code=0):
    assert main(["flops", *argv, "--json"]) == code
    return json.loads(capsys.readouterr().out)


def test_counts_a_spec_and_checks_it_on_the_onnx_graph(capsys):
    r = _json(capsys, ["builtin:resnet20", "--input-shape", "1,1,28,28", "--onnx-check"])
    expected = count(build_model("builtin:resnet20", 10, 1), (1, 1, 28, 28))
    assert (r["macs"], r["params"], r["other_ops"]) == (expected.macs, expected.params, expected.other_ops)
    assert r["flops"] == 2 * r["macs"] and r["input_shape"] == [1, 1, 28, 28]
    assert r["onnx"]["macs"] == r["macs"] and r["onnx"]["agree"] and r["onnx"]["params_agree"]
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in build_model("builtin:resnet20").modules())
    assert r["onnx"]["folded_norms"] == norms  # every BatchNorm of resnet20 follows a conv


def test_per_layer_text_and_json(capsys):
    assert main(["flops", "builtin:resnet20", "--per-layer"]) == 0
    out = capsys.readouterr().out
    assert "layers.8.conv2" in out and "Conv2d" in out and "convention:" in out
    r = _json(capsys, ["builtin:resnet20", "--per-layer"])
    convs = [l for l in r["layers"] if l["type"] == "Conv2d"]
    assert sum(l["macs"] for l in r["layers"]) == r["macs"] and abs(sum(l["share"] for l in convs) + sum(
        l["share"] for l in r["layers"] if l["type"] == "Linear") - 1) < 1e-9


def test_counts_an_onnx_file_and_a_pruned_model(tmp_path, capsys):
    model = build_model("builtin:resnet20", 10, 1).eval()
    with torch.no_grad():  # a pruned-looking model: fewer channels in one block
        model.layers[0].conv1 = torch.nn.Conv2d(16, 8, 3, padding=1, bias=False)
        model.layers[0].bn1 = torch.nn.BatchNorm2d(8)
        model.layers[0].conv2 = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)
    save_pruned(model, tmp_path / "pruned.pt", "builtin:resnet20", 10, 1, [1, 1, 28, 28])
    expected = count(model, (1, 1, 28, 28))
    r = _json(capsys, [str(tmp_path / "pruned.pt")])
    assert r["macs"] == expected.macs and r["params"] == expected.params
    export_onnx(model, (1, 1, 28, 28), tmp_path / "m.onnx")
    g = _json(capsys, [str(tmp_path / "m.onnx")])
    assert g["macs"] == expected.macs and g["source"] == "onnx graph" and g["other_ops"] is None


def test_a_disagreement_exits_1_and_names_the_layer(monkeypatch, capsys):
    real = onnx_flops.node_macs
    monkeypatch.setattr(onnx_flops, "node_macs", lambda n, s: real(n, s) * (2 if "layers.8.conv2.weight" in n.input else 1))
    assert main(["flops", "builtin:resnet20", "--onnx-check"]) == 1
    captured = capsys.readouterr()
    differ = captured.out.split("where they differ:")[1].split("convention:")[0].split()
    assert differ == ["layers.8.conv2", "model", "2,359,296", "onnx", "4,718,592"]
    assert "check failed" in captured.err and "differ" in captured.err


@pytest.mark.parametrize("argv,match", [
    (["builtin:resnet21"], "unknown builtin"),
    (["resnet20"], "no kind"),
    (["torchvision:resnet51"], "unknown torchvision model"),
    (["builtin:resnet20", "--input-shape", "1,x,28"], "--input-shape must be"),
    (["builtin:resnet20", "--input-shape", "0,1,28,28"], "--input-shape must be"),
    (["builtin:resnet20", "--input-shape", "1,1,28"], "fails on input shape"),
    (["{tmp}/missing.onnx"], "does not exist"),
    (["{tmp}/junk.onnx"], "not a readable ONNX model"),
    (["{tmp}/state.pt"], "not a pruned model"),
    (["{tmp}/junk.pt"], "is corrupt"),
    (["builtin:resnet20", "--num-classes", "0"], "--num-classes must be"),
    (["{tmp}/junk.onnx", "--onnx-check"], "already an ONNX graph"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, match):
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07not onnx" * 5)
    (tmp_path / "junk.pt").write_bytes(b"\x00garbage")
    torch.save(build_model("builtin:resnet20").state_dict(), tmp_path / "state.pt")
    assert main(["flops", *[a.replace("{tmp}", str(tmp_path)) for a in argv]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("singe-deploy: error:") and match in err[0], err


def test_console_script_has_no_traceback(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    p = subprocess.run([sys.executable, "-m", "singe_deploy", "flops", str(tmp_path / "junk.onnx")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1
