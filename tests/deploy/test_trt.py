"""TensorRT: the API surface against the real binding wheels, the CPU-side choices, and GPU runs that
skip cleanly without a GPU (marker gpu) or without TensorRT (marker tensorrt)."""
import ast
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from singe_deploy.cli import main
from singe_deploy.config import defaults, validate
from singe_deploy.deploy import trt
from singe_deploy.errors import CheckFailed, UserError
from singe_deploy.measure import bench

from ..conftest import ROOT, TinyNet, needs_fashion

BINDINGS = Path(os.environ.get("SINGE_TRT_BINDINGS", ROOT / ".cache" / "trt-bindings"))
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
needs_trt = pytest.mark.skipif(importlib.util.find_spec("tensorrt") is None or not torch.cuda.is_available(),
                               reason="TensorRT and a GPU are needed (pip install 'singe-deploy[trt]')")


def _names(so):
    """Identifiers compiled into a pybind11 module: every identifier-shaped suffix of its C strings
    (the linker merges a string into the tail of a longer one that ends the same way)."""
    found = set()
    for raw in re.findall(rb"[\x20-\x7e]{2,}(?=\x00)", so.read_bytes()):
        text = raw.decode()
        for m in re.finditer(r"(?=([A-Za-z_][A-Za-z0-9_]*)$)", text):
            found.add(m.group(1))
    return found


@pytest.mark.parametrize("version", [10, 11])
def test_every_tensorrt_name_used_exists_in_that_version(version):
    so = BINDINGS / str(version) / "tensorrt.so"
    if not so.is_file():
        pytest.skip(f"TensorRT {version} binding wheel not fetched: run tools/fetch_trt_bindings.sh")
    names = _names(so)
    used = [n for n, versions in trt.API.items() if version in versions]
    assert [n for n in used if n not in names] == []
    # and the check can fail: names removed from these versions are not there
    gone = {10: ["execute_async_v2", "build_engine", "get_binding_index"], 11: ["EXPLICIT_BATCH", "FP16"]}[version]
    assert [n for n in gone if n in names] == []


NOT_TENSORRT = {  # attributes this module reads on torch, pathlib, json and its own objects
    "cuda", "get_device_name", "Stream", "float16", "float32", "as_tensor", "to", "contiguous", "data_ptr",
    "empty", "shape", "float", "cpu", "numpy", "synchronize", "cuda_stream", "read_bytes", "write_bytes",
    "write_text", "dumps", "is_file", "split", "half", "deepcopy", "time", "check", "shapes", "min_batch",
    "max_batch", "opt_batch", "engine", "context", "inputs", "outputs", "dtypes", "stream", "buffers", "version",
    "prepare", "launch", "append", "join", "is_available", "cuda_graph", "graph", "CUDAGraph", "copy_", "logger", "runtime",
    "synchronize", "replay", "stream", "_enqueue", "precision", "tf32", "workspace_gb", "timing_cache", "with_suffix",
}


def test_the_module_uses_no_tensorrt_name_that_is_not_listed():
    tree = ast.parse(Path(trt.__file__).read_text())
    attributes = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert attributes - set(trt.API) - NOT_TENSORRT == set()


def test_precision_per_version(monkeypatch):
    assert trt.precision_plan(10, "fp16") == {"precision": "fp16", "fp16_flag": True, "fp16_graph": False,
                                              "int8_flag": False, "qdq_graph": False, "tf32": True}
    assert trt.precision_plan(11, "fp16")["fp16_graph"] and not trt.precision_plan(11, "fp16")["fp16_flag"]
    assert trt.precision_plan(11, "fp32", tf32=False) == {"precision": "fp32", "fp16_flag": False, "fp16_graph": False,
                                                          "int8_flag": False, "qdq_graph": False, "tf32": False}
    assert trt.precision_plan(10, "int8")["int8_flag"] and trt.precision_plan(10, "int8")["qdq_graph"]
    assert not trt.precision_plan(11, "int8")["int8_flag"] and trt.precision_plan(11, "int8")["qdq_graph"]
    with pytest.raises(UserError, match="precision"):
        trt.precision_plan(10, "int4")
    monkeypatch.setattr(trt, "import_trt", lambda: _Recorder("10.16.1"))
    with pytest.raises(UserError, match="QDQ graph"):  # an int8 engine is never built from an fp32 export
        trt.engine_from(TinyNet(), "m.onnx", "m.engine", [1, 1, 12, 12], trt.EngineOptions("int8"), trt.Profile())
    assert trt.tolerance("fp32", 1e-3) == 1e-3 and trt.tolerance("fp16", 1e-3) == 1e-2


def test_profile_spans_the_batch_sizes():
    p = trt.Profile(1, 8, 32).check()
    assert p.shapes([1, 3, 224, 224]) == ([1, 3, 224, 224], [8, 3, 224, 224], [32, 3, 224, 224])
    with pytest.raises(UserError, match="min <= opt <= max"):
        trt.Profile(8, 1, 32).check()


def test_trt_target_defaults():
    from singe_deploy.compress import _alignment

    cfg = validate(dict(defaults(), target="trt"))
    assert cfg["batch_sizes"] == [1, 8, 32] and cfg["round_to"] == "auto"
    assert _alignment(cfg, None, None, None, None, log=lambda *a: None)["round_to"] == 8  # TensorRT's rule, no probe
    int8 = validate(dict(defaults(), target="trt", quantize=["int8"]))
    assert _alignment(int8, None, None, None, None, log=lambda *a: None)["round_to"] == 32
    assert validate(dict(defaults()))["batch_sizes"] == [1]


@pytest.mark.skipif(torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None,
                    reason="this machine has TensorRT and a GPU")
def test_trt_target_without_gpu_or_tensorrt_is_one_line_exit_2(tmp_path, capsys):
    assert main(["compress", "--target", "trt", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--target trt needs" in err[0] and "singe-deploy[trt]" in err[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.gpu
@needs_gpu
def test_torch_cuda_latency_with_events_and_cuda_graph():
    model = TinyNet().eval()
    eager, graph = bench.Torch(model, "cuda"), bench.Torch(TinyNet().eval(), "cuda", cuda_graph=True)
    graph.model.load_state_dict(model.state_dict())
    x = np.random.default_rng(0).standard_normal((4, 1, 12, 12)).astype(np.float32)
    assert np.allclose(eager.infer(x), graph.infer(x), atol=1e-5)
    for backend in (eager, graph):
        stats = bench.measure(backend, (1, 1, 12, 12), 4, min_iters=20, min_seconds=0.2)
        assert stats["timer"].startswith("CUDA events") and stats["median_ms"] > 0 and stats["gpu"]["name"]
        assert stats["with_copies_median_ms"] > 0


@pytest.mark.gpu
@needs_gpu
def test_parity_on_gpu_against_cpu():
    from singe_deploy.deploy.export import parity

    model, other = TinyNet().eval(), TinyNet().eval()
    batches = [torch.randn(8, 1, 12, 12) for _ in range(2)]
    gpu = bench.Torch(TinyNet().eval(), "cuda")
    gpu.model.load_state_dict(model.state_dict())
    same = parity(bench.Torch(model), gpu, batches, "cpu")
    assert same["max_abs_diff"] < 1e-4 and same["top1_agreement"] == 1.0 and same["samples"] == 16
    assert parity(bench.Torch(other), gpu, batches, "cpu")["max_abs_diff"] > 1e-3  # the check can fail


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_trt
def test_engine_build_and_parity(tmp_path):
    from singe_deploy.deploy.export import export_onnx, parity

    model = TinyNet().eval()
    export_onnx(model, (1, 1, 12, 12), tmp_path / "m.onnx")
    record = trt.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [1, 1, 12, 12], profile=trt.Profile(1, 4, 8),
                              timing_cache=tmp_path / "cache.bin", log=lambda *_: None)
    assert (tmp_path / "m.engine.json").is_file() and record["precision"] == "fp32"
    runner = trt.TensorRT(tmp_path / "m.engine")
    q = parity(bench.Torch(model), runner, [torch.randn(8, 1, 12, 12)], "pytorch")
    assert q["max_abs_diff"] < 1e-3 and q["top1_agreement"] == 1.0
    assert bench.measure(runner, (1, 1, 12, 12), 4, min_iters=10, min_seconds=0.1)["median_ms"] > 0
    graph = trt.TensorRT(tmp_path / "m.engine", cuda_graph=True)
    x = np.random.default_rng(1).standard_normal((4, 1, 12, 12)).astype(np.float32)
    assert np.allclose(graph.infer(x), runner.infer(x), atol=1e-5) and graph.graph is not None
    assert bench.measure(graph, (1, 1, 12, 12), 4, min_iters=10, min_seconds=0.1)["timer"].startswith("CUDA events")


class _Recorder:
    """Stands in for the tensorrt module to test the build logic's decisions on a CPU (which flags, which
    profile, what is written, how parser errors read); the names it offers are checked separately above."""

    def __init__(self, version, parse_ok=True):
        self.__version__, self.calls, self.parse_ok = version, [], parse_ok
        rec = self

        class Obj:
            def __init__(self, kind):
                self.kind = kind

            def __getattr__(self, attr):
                if attr.isupper():
                    return f"{self.kind}.{attr}"
                if attr == "name":  # a property in TensorRT
                    return self.kind

                def call(*args):
                    rec.calls.append((self.kind, attr, args))
                    return {"parse_from_file": rec.parse_ok, "build_serialized_network": b"engine", "get_input": Obj("input"),
                            "get_error": Obj("error"), "desc": "node 3: unsupported op Foo",
                            "serialize": b"cache", "get_timing_cache": Obj("cache")}.get(attr, Obj(attr))
                return call

        self.Obj = Obj
        self.Logger = type("Logger", (), {"WARNING": "warning", "__init__": lambda s, *a: None})
        self.MemoryPoolType, self.BuilderFlag = Obj("MemoryPoolType"), Obj("BuilderFlag")
        self.Builder = lambda logger: Obj("builder")
        self.OnnxParser = lambda network, logger: type("P", (Obj,), {"num_errors": 2})("parser")


@pytest.mark.parametrize("version,precision,tf32", [("10.16.1", "fp16", True), ("11.4.0", "fp32", False),
                                                   ("10.16.1", "int8", True), ("11.4.0", "int8", True)])
def test_build_logic_per_version(tmp_path, monkeypatch, version, precision, tf32):
    fake = _Recorder(version)
    monkeypatch.setattr(trt, "import_trt", lambda: fake)
    (tmp_path / "m.onnx").write_bytes(b"graph")
    record = trt.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [1, 3, 8, 8], precision, tf32,
                              trt.Profile(1, 8, 32), 2.0, tmp_path / "cache.bin", log=lambda *_: None)
    calls = [(kind, attr, args) for kind, attr, args in fake.calls]
    assert ("builder", "create_network", (0,)) in calls  # explicit batch, no EXPLICIT_BATCH flag
    flags = [(attr, args[0]) for kind, attr, args in calls if attr in ("set_flag", "clear_flag")]
    ten = version.startswith("10")
    expected = ([("set_flag", "BuilderFlag.FP16")] if ten and precision == "fp16" else []) + \
        ([("set_flag", "BuilderFlag.INT8")] if ten and precision == "int8" else []) + \
        [("set_flag" if tf32 else "clear_flag", "BuilderFlag.TF32")]
    assert flags == expected
    shapes = next(args for kind, attr, args in calls if attr == "set_shape")
    assert list(shapes[1:]) == [[1, 3, 8, 8], [8, 3, 8, 8], [32, 3, 8, 8]]
    assert ("create_builder_config", "set_memory_pool_limit", ("MemoryPoolType.WORKSPACE", 2 << 30)) in calls
    assert (tmp_path / "m.engine").read_bytes() == b"engine" and (tmp_path / "cache.bin").read_bytes() == b"cache"
    saved = json.loads((tmp_path / "m.engine.json").read_text())
    assert saved == record and saved["tensorrt"] == version and saved["tf32"] is tf32


def test_parser_errors_are_reported_one_per_line(tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "import_trt", lambda: _Recorder("10.16.1", parse_ok=False))
    (tmp_path / "m.onnx").write_bytes(b"graph")
    with pytest.raises(CheckFailed) as e:
        trt.build_engine(tmp_path / "m.onnx", tmp_path / "m.engine", [1, 3, 8, 8], log=lambda *_: None)
    assert str(e.value).splitlines()[1:] == ["  node 3: unsupported op Foo"] * 2
    assert not (tmp_path / "m.engine").exists()


def test_tensorrt_11_fp16_comes_from_an_fp16_graph(tmp_path):
    import onnx

    path = trt.export_for(TinyNet().eval(), [1, 1, 12, 12], tmp_path / "m16.onnx", trt.precision_plan(11, "fp16"))
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert {i.data_type for i in graph.initializer if len(i.dims) > 1} == {onnx.TensorProto.FLOAT16}
    path = trt.export_for(TinyNet().eval(), [1, 1, 12, 12], tmp_path / "m.onnx", trt.precision_plan(10, "fp16"))
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


@needs_fashion
def test_trt_target_builds_an_engine_from_each_quantized_file_and_runs_it_for_its_accuracy(tmp_path, monkeypatch):
    """With stand-ins for TensorRT (an engine is the ONNX file it was built from, run by onnxruntime):
    `compress --target trt --quantize int8,fp16` builds pruned.int8.engine from the symmetric QDQ graph and
    pruned.fp16.engine from the fp16 graph, times each, and its deployables row has the accuracy of running it."""
    from types import SimpleNamespace

    import onnx

    from singe_deploy import compress

    from ..test_cli import FAST, _validate

    builds = []

    def build(onnx_path, engine_path, input_shape, precision="fp32", tf32=True, profile=trt.Profile(),
              workspace_gb=4.0, timing_cache=None, log=print):
        builds.append((Path(onnx_path).name, precision))
        Path(engine_path).write_bytes(Path(onnx_path).read_bytes())
        return {"precision": precision}

    class Engine(bench.OnnxRuntime):
        name = "tensorrt"

        def __init__(self, path, cuda_graph=False):
            super().__init__(path, 1, spinning=False)

    monkeypatch.setattr(trt, "import_trt", lambda: SimpleNamespace(__version__="10.16.1"))
    monkeypatch.setattr(trt, "build_engine", build)
    monkeypatch.setattr(trt, "TensorRT", Engine)
    monkeypatch.setattr(compress, "check_target", lambda cfg: None)
    out = tmp_path / "run"
    argv = ["compress", "--target", "trt", "--criterion", "l2", "--quantize", "int8,fp16", "--batch-sizes", "1,2",
            "--quant-top1", "0", "--quant-accuracy-drop", "1"]  # this test is about the engines built, not int8's loss
    assert main(argv + FAST + ["--out", str(out)]) == 0
    assert sorted(builds) == [("dense.onnx", "fp32"), ("pruned.fp16.onnx", "fp16"), ("pruned.int8.onnx", "int8"),
                              ("pruned.onnx", "fp32")]
    int8 = onnx.load(str(out / "pruned.int8.engine")).graph  # the stand-in engine is its QDQ graph
    zero_points = {i.name for i in int8.initializer if i.name.endswith("zero_point")}
    assert any(n.op_type == "QuantizeLinear" for n in int8.node) and zero_points
    assert all(onnx.numpy_helper.to_array(i).max() == 0 for i in int8.initializer if i.name in zero_points)
    report = json.loads((out / "report.json").read_text())
    _validate(report)
    rows = {r["name"]: r for r in report["deployables"]}
    assert set(rows) == {"dense", "pruned", "pruned.int8", "pruned.fp16"}
    assert {r["format"] for r in rows.values()} == {"tensorrt"}
    assert rows["pruned.int8"]["path"] == "pruned.int8.engine" and rows["pruned.int8"]["precision"] == "int8"
    assert abs(rows["pruned.int8"]["accuracy"] - rows["pruned"]["accuracy"]) <= 0.1
    assert all(set(r["latency_ms"]) == {"1", "2"} for r in rows.values())
    assert main(["compress", "--target", "torch", "--quantize", "int8"] + FAST + ["--out", str(tmp_path / "t")]) == 2
