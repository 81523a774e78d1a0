import json
import os
import shutil
import subprocess
import sys

import pytest

from singe_deploy import schemas
from singe_deploy.cli import main
from singe_deploy.measure import device

FAST = ["--iters", "5", "--seconds", "0"]
BLOCK = ("import sys\n"
         "for m in ('torch', 'torchvision', 'torch_pruning'):\n"
         "    sys.modules[m] = None  # import m now raises ImportError\n"
         "from singe_deploy.cli import main\n"
         "code = main(sys.argv[1:])\n"
         "assert not [m for m in ('torch', 'torchvision', 'torch_pruning') if sys.modules.get(m)]\n"
         "sys.exit(code)\n")


def _without_torch(*argv, cwd=None):
    return subprocess.run([sys.executable, "-c", BLOCK, *argv], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_onnxruntime_bench_runs_without_torch_torchvision_or_torch_pruning(compressed, tmp_path):
    out = tmp_path / "latency.json"
    r = _without_torch("bench", str(compressed / "pruned.onnx"), "--batch-sizes", "1,3", "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert schemas.errors(data, "latency") == []
    assert [(e["batch_size"], e["variant"], e["model"]) for e in data["latency"]] == \
        [(1, "pruned", "tests/conftest.py:tiny_factory"), (3, "pruned", "tests/conftest.py:tiny_factory")]
    dev = data["device"]
    assert dev["cores_logical"] >= 1 and dev["os"] and dev["cpu"] and "onnxruntime" in dev["runtimes"]
    assert data["models"][0]["input_shape"] == [1, 1, 12, 12]


def test_a_compress_folder_benches_dense_and_pruned(compressed, tmp_path, capsys):
    out = tmp_path / "l.json"
    assert main(["bench", str(compressed), "--device-name", "edge-1", "--out", str(out)] + FAST) == 0
    data = json.loads(out.read_text())
    assert sorted(e["variant"] for e in data["latency"]) == ["dense", "pruned"]
    assert all(e["measured_at"].endswith("Z") for e in data["latency"])  # report merge prefers the newest
    assert data["device"]["name"] == "edge-1" and device.label(data["device"]).startswith("edge-1 (")
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not the 0600 of a temporary file
    printed = capsys.readouterr().out
    assert "| tests/conftest.py:tiny_factory | dense | fp32 | onnxruntime | cpu | 1 |" in printed
    pruned = next(e for e in data["latency"] if e["variant"] == "pruned")
    assert pruned["speedup"]["over"] == str(compressed / "dense.onnx") and not pruned["speedup"]["paired"]
    assert "calls_ms" not in pruned  # the calls' times are not written out
    assert "note: files timed one after the other" in printed  # their interval does not count drift: said


def test_quantized_files_are_benched_with_their_precision(compressed, tmp_path):
    import numpy as np

    from singe_deploy.deploy.quantize import quantize

    folder = tmp_path / "run"
    shutil.copytree(compressed, folder)
    x = np.random.default_rng(0).standard_normal((4, 1, 12, 12)).astype(np.float32)
    quantize(folder / "pruned.onnx", "int8", folder / "pruned.int8.onnx", batches=[x])
    out = tmp_path / "l.json"
    r = _without_torch("bench", str(folder), "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    data = json.loads(out.read_text())
    assert schemas.errors(data, "latency") == []
    assert sorted((e["variant"], e["precision"]) for e in data["latency"]) == [
        ("dense", "fp32"), ("pruned", "fp32"), ("pruned", "int8")]
    assert {e["model"] for e in data["latency"]} == {"tests/conftest.py:tiny_factory"}  # metadata kept


def test_variant_and_name_come_from_flags_metadata_or_file_name(compressed, tmp_path):
    plain = tmp_path / "model.onnx"
    shutil.copy(compressed / "pruned.onnx", plain)
    from singe_deploy.deploy.export import tag_onnx

    tag_onnx(plain, {"variant": "", "model": ""})  # emptied: the file no longer says
    out = tmp_path / "l.json"
    assert main(["bench", str(plain), "--out", str(out)] + FAST) == 0
    data = json.loads(out.read_text())
    assert data["latency"][0]["variant"] == "dense" and data["latency"][0]["model"] == "model"
    assert "counted as dense" in data["notes"][0]
    assert main(["bench", str(plain), "--variant", "pruned", "--model-name", "m", "--out", str(out)] + FAST) == 0
    entry = json.loads(out.read_text())["latency"][0]
    assert (entry["variant"], entry["model"]) == ("pruned", "m") and not json.loads(out.read_text())["notes"]


def test_torch_backend_reads_a_pruned_checkpoint(compressed, tmp_path):
    out = tmp_path / "t.json"
    assert main(["bench", str(compressed / "pruned.pt"), "--out", str(out)] + FAST) == 0
    entry = json.loads(out.read_text())["latency"][0]
    assert (entry["backend"], entry["variant"], entry["model"]) == ("torch", "pruned", "tests/conftest.py:tiny_factory")


@pytest.mark.parametrize("argv,match", [
    (["{d}/missing.onnx"], "does not exist"),
    (["{d}/corrupt.onnx"], "cannot load"),
    (["{d}/notes.txt"], "cannot tell the backend"),
    (["{c}/pruned.onnx", "--backend", "torch"], "not a model for --backend torch"),
    (["{c}/pruned.onnx", "--batch-sizes", "0"], "--batch-sizes must be positive"),
    (["{c}/pruned.onnx", "--input-shape", "1,3,12,12"], "does not fit"),
    (["{c}/pruned.onnx", "--provider", "tensorrt"], "no TensorrtExecutionProvider"),
    (["{c}/pruned.onnx", "--iters", "0"], "--iters must be >= 1"),
    (["{c}/pruned.engine", "--backend", "tensorrt"], "does not exist"),
    (["{c}/pruned.onnx", "--out", "{d}/no/such/dir/l.json"], "does not exist"),
    (["{d}"], "holds no dense.onnx or pruned.onnx"),
])
def test_bad_input_exits_2_with_one_line(compressed, tmp_path, capsys, argv, match):
    (tmp_path / "corrupt.onnx").write_bytes(b"\x08\x07not a model")
    (tmp_path / "notes.txt").write_text("x")
    argv = [a.format(d=tmp_path, c=compressed) for a in argv]
    assert main(["bench"] + FAST + argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob(".*"))


def test_gpu_backends_without_a_gpu_say_what_is_missing(compressed, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["bench", str(compressed / "pruned.pt"), "--device", "cuda"] + FAST) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err


def fixed_batch_onnx(path, batch=1):
    """A one-conv ONNX graph whose batch dimension is fixed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((2, 1, 3, 3), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2, 6, 6])], [w])
    # IR 8: the oldest supported onnxruntime (1.20) loads it, where onnx's newest IR would not
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8), str(path))
    return path


def test_fixed_batch_models_refuse_other_batch_sizes(tmp_path, capsys):
    path = fixed_batch_onnx(tmp_path / "pruned.onnx")
    assert main(["bench", str(path), "--batch-sizes", "1,4"] + FAST) == 2
    assert "fixed batch size of 1" in capsys.readouterr().err
    assert main(["bench", str(path)] + FAST) == 0


def test_device_block_without_nvidia_smi(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    block = device.describe("x", threads=2)
    assert block["gpus"] == [] and block["threads"] == 2 and block["cores_physical"] >= 1
    assert device.label({"name": "n", "gpus": [{"name": "Orin"}], "cpu": "ARM"}) == "n (Orin)"


def test_interleaved_timing_takes_turns_and_keeps_the_ratio(compressed, tmp_path):
    import time

    from singe_deploy.measure.bench import measure_interleaved

    class Fake:
        name, device = "fake", "cpu"

        def __init__(self, seconds):
            self.seconds, self.calls = seconds, []

        def infer(self, x):
            self.calls.append(time.perf_counter())
            time.sleep(self.seconds)

    slow, fast = Fake(0.004), Fake(0.002)
    a, b = measure_interleaved([slow, fast], (1, 1, 4, 4), warmup_iters=2, min_iters=10, min_seconds=0)
    assert a["iterations"] == b["iterations"] == 10 and "interleaved" in a["timer"]
    assert 1.5 < a["median_ms"] / b["median_ms"] < 2.5
    timed = sorted([(t, "slow") for t in slow.calls[2:]] + [(t, "fast") for t in fast.calls[2:]])
    assert sum(1 for x, y in zip(timed, timed[1:]) if x[1] == y[1]) <= 10  # one after the other would give 18
    out = tmp_path / "l.json"
    assert main(["bench", str(compressed), "--interleave", "--batch-sizes", "1,2", "--out", str(out)] + FAST) == 0
    data = json.loads(out.read_text())
    assert schemas.errors(data, "latency") == []
    assert [(e["variant"], e["batch_size"]) for e in data["latency"]] == [
        ("dense", 1), ("pruned", 1), ("dense", 2), ("pruned", 2)]
    speedups = [e["speedup"] for e in data["latency"] if e["variant"] == "pruned"]
    assert all(s["paired"] and s["ci95"][0] <= s["speedup"] <= s["ci95"][1] for s in speedups)


def test_an_engine_with_a_dynamic_batch_profile_takes_every_batch_size_in_it(tmp_path):
    from argparse import Namespace

    from singe_deploy.commands.bench import engine_shape, input_shape
    from singe_deploy.errors import UserError

    info = {"input_shape": [1, 3, 32, 32], "profile": {"min_batch": 1, "opt_batch": 8, "max_batch": 32}}
    path = tmp_path / "pruned.engine"
    declared = engine_shape(info, Namespace(batch_sizes="1,8,32"), path)
    assert declared == [None, 3, 32, 32] and input_shape(declared, None, [1, 8, 32], path) == [1, 3, 32, 32]
    with pytest.raises(UserError, match="built for batch sizes 1 to 32; --batch-sizes 64 is outside"):
        engine_shape(info, Namespace(batch_sizes="8,64"), path)
    fixed = dict(info, profile={"min_batch": 4, "opt_batch": 4, "max_batch": 4})
    assert engine_shape(fixed, Namespace(batch_sizes="4"), path) == [4, 3, 32, 32]


def test_the_study_tools_read_what_bench_and_onnxruntime_write(compressed, tmp_path, capsys):
    from ..conftest import load_tool

    runs = []
    for k in range(2):
        runs.append(tmp_path / f"b{k}.json")
        assert main(["bench", str(compressed), "--interleave", "--out", str(runs[-1])] + FAST) == 0
    text = load_tool("speedup_table").table(runs)
    row = next(line for line in text.splitlines() if "pruned.onnx" in line)
    assert row.startswith(f"| {compressed / 'pruned.onnx'} | ") and "2 runs" in text
    ops = load_tool("profile_onnx").profile(str(compressed / "pruned.onnx"), 1, 3, 1)
    convs = [v for k, v in ops.items() if k.startswith("Conv ")]  # split by kind (3x3, 1x1, depthwise, ...)
    assert sum(ms for ms, _ in convs) > 0 and sum(n for _, n in convs) >= 2  # ms per call, and the nodes of each
