"""TensorRT engines from ONNX (TensorRT 10 and 11 Python APIs) and a runner behind the `infer` interface.

`tensorrt` is imported lazily: nothing here is needed unless the target is trt. Buffers are torch CUDA
tensors on a dedicated stream (pycuda is not needed). Every TensorRT name this module uses is listed in
API, with the major versions whose code path uses it; tests/deploy/test_trt.py checks each against the binding
wheels of TensorRT 10 and 11 and checks that this module uses no name that is not listed.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import CheckFailed, UserError

# name -> TensorRT major versions whose code path here uses it
API = {
    "__version__": (10, 11), "Logger": (10, 11), "WARNING": (10, 11), "Builder": (10, 11),
    "create_network": (10, 11), "OnnxParser": (10, 11), "parse_from_file": (10, 11), "num_errors": (10, 11),
    "get_error": (10, 11), "desc": (10, 11), "create_builder_config": (10, 11),
    "set_memory_pool_limit": (10, 11), "MemoryPoolType": (10, 11), "WORKSPACE": (10, 11),
    "set_flag": (10, 11), "clear_flag": (10, 11), "BuilderFlag": (10, 11), "TF32": (10, 11),
    "FP16": (10,),  # removed in 11 (strong typing): fp16 there comes from an fp16 ONNX graph
    "INT8": (10,),  # the builder flag, removed in 11: int8 comes from the QDQ graph's own types there
    "create_optimization_profile": (10, 11), "set_shape": (10, 11), "add_optimization_profile": (10, 11),
    "create_timing_cache": (10, 11), "set_timing_cache": (10, 11), "get_timing_cache": (10, 11),
    "serialize": (10, 11), "build_serialized_network": (10, 11), "num_inputs": (10, 11),
    "get_input": (10, 11), "name": (10, 11), "Runtime": (10, 11), "deserialize_cuda_engine": (10, 11),
    "num_io_tensors": (10, 11), "get_tensor_name": (10, 11), "get_tensor_mode": (10, 11),
    "TensorIOMode": (10, 11), "INPUT": (10, 11), "get_tensor_dtype": (10, 11), "DataType": (10, 11),
    "FLOAT": (10, 11), "HALF": (10, 11), "create_execution_context": (10, 11), "set_input_shape": (10, 11),
    "get_tensor_shape": (10, 11), "set_tensor_address": (10, 11), "execute_async_v3": (10, 11),
}
PRECISIONS = ("fp32", "fp16", "int8")  # int8: only from a QDQ graph (explicit quantization, quantize --target trt)


def import_trt():
    try:
        import tensorrt
    except ImportError:
        raise UserError("the tensorrt Python package is not installed; pip install 'singe-deploy[trt]' on a "
                        "machine with an NVIDIA GPU (JetPack ships it on Jetson), or use --target onnx") from None
    return tensorrt


def major(trt):
    return int(str(trt.__version__).split(".")[0])


@dataclass(frozen=True)
class Profile:
    """Batch range of the optimisation profile; the other dims are fixed to the model's input."""
    min_batch: int = 1
    opt_batch: int = 8
    max_batch: int = 32

    def shapes(self, input_shape):
        rest = list(input_shape[1:])
        return ([self.min_batch] + rest, [self.opt_batch] + rest, [self.max_batch] + rest)

    def check(self):
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise UserError(f"TensorRT batch range must satisfy 1 <= min <= opt <= max, got "
                            f"{self.min_batch}/{self.opt_batch}/{self.max_batch}")
        return self


@dataclass(frozen=True)
class EngineOptions:
    """How engines are built and run: the run's TensorRT settings as one value (compress's engines and the latency
    timer of --target trt share it)."""
    precision: str = "fp32"
    tf32: bool = True
    workspace_gb: float = 4.0
    timing_cache: str | None = None
    cuda_graph: bool = False

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg["trt_precision"], cfg["trt_tf32"], cfg["trt_workspace_gb"], cfg["trt_timing_cache"],
                   cfg["cuda_graph"])


def precision_plan(version, precision, tf32=True):
    """How a precision is obtained on a TensorRT major version: a builder flag (10) or an fp16 ONNX
    graph (11, strongly typed); TF32 is a builder flag in both. int8 always comes from a QDQ graph (its
    Quantize/DequantizeLinear pairs say where); TensorRT 10 also needs the INT8 flag to run int8 kernels."""
    if precision not in PRECISIONS:
        raise UserError(f"TensorRT precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    fp16, int8 = precision == "fp16", precision == "int8"
    return {"precision": precision, "fp16_flag": fp16 and version < 11, "fp16_graph": fp16 and version >= 11,
            "int8_flag": int8 and version < 11, "qdq_graph": int8, "tf32": bool(tf32)}


def tolerance(precision, atol_fp32):
    """Largest max-abs-diff accepted against PyTorch for an engine of this precision."""
    return atol_fp32 if precision == "fp32" else max(atol_fp32, 1e-2)


def export_for(model, input_shape, path, plan, opset=18):
    """The ONNX graph an engine is built from: fp32, or the model in half precision for TensorRT 11 fp16."""
    import copy

    from .export import export_onnx

    if plan["fp16_graph"]:
        model = copy.deepcopy(model).half()
    return export_onnx(model, input_shape, path, opset, dtype="float16" if plan["fp16_graph"] else "float32")


def engine_from(model, onnx_path, engine_path, input_shape, options, profile, opset=18, log=print, export=None):
    """Build engine_path for `model` with `options`: from onnx_path (exported there first when it is missing, with
    export(model, shape, path) if given), or on TensorRT 11 fp16 from an fp16 graph written beside it. Returns
    build_engine's record."""
    plan = precision_plan(major(import_trt()), options.precision, options.tf32)
    onnx_path = Path(onnx_path)
    if plan["qdq_graph"]:
        raise UserError("int8 engines are built from a QDQ graph: compress --target trt --quantize int8, or "
                        "singe-deploy quantize MODEL.onnx --target trt, then build from that file")
    if plan["fp16_graph"]:
        onnx_path = export_for(model, input_shape, onnx_path.with_suffix(".fp16.onnx"), plan, opset)
    elif not onnx_path.is_file():
        (export or (lambda m, shape, path: export_for(m, shape, path, plan, opset)))(model, input_shape, onnx_path)
    return build_engine(onnx_path, engine_path, input_shape, options.precision, options.tf32, profile,
                        options.workspace_gb, options.timing_cache, log)


def build_engine(onnx_path, engine_path, input_shape, precision="fp32", tf32=True, profile=Profile(),
                 workspace_gb=4.0, timing_cache=None, log=print):
    """Build and save a serialized engine, with ENGINE.json beside it (TensorRT version, GPU, precision,
    shapes); returns that record. Parser errors are reported one per line (CheckFailed)."""
    import torch

    trt = import_trt()
    version = major(trt)
    plan = precision_plan(version, precision, tf32)
    profile.check()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode since 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: weights stored beside it are found too
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise CheckFailed("TensorRT cannot parse " + str(onnx_path) + ":\n  " + "\n  ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if plan["fp16_flag"]:
        config.set_flag(trt.BuilderFlag.FP16)
    if plan["int8_flag"]:
        config.set_flag(trt.BuilderFlag.INT8)
    if plan["tf32"]:
        config.set_flag(trt.BuilderFlag.TF32)
    else:
        config.clear_flag(trt.BuilderFlag.TF32)
    opt = builder.create_optimization_profile()
    name = network.get_input(0).name
    opt.set_shape(name, *profile.shapes(input_shape))
    config.add_optimization_profile(opt)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, False)
    t = time.time()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise CheckFailed(f"TensorRT could not build an engine from {onnx_path} (see the TensorRT log above)")
    Path(engine_path).write_bytes(bytes(blob))
    if cache_path:
        cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    record = {"tensorrt": str(trt.__version__), "gpu": gpu, "input": name,
              "input_shape": list(input_shape), "profile": asdict(profile), "workspace_gb": workspace_gb,
              "build_seconds": round(time.time() - t, 2), "onnx": Path(onnx_path).name, **plan}
    Path(str(engine_path) + ".json").write_text(json.dumps(record, indent=2))
    log(f"{Path(engine_path).name}: TensorRT {trt.__version__}, {precision}, batch {profile.min_batch}-"
        f"{profile.max_batch}, built in {record['build_seconds']} s")
    return record


class TensorRT:
    """Runner for a serialized engine: torch CUDA buffers, `execute_async_v3` on a dedicated stream.
    `infer` copies in and out; `prepare`/`launch` let `bench.measure` time compute alone with CUDA events.
    With cuda_graph, each input shape's enqueue is captured once and replayed."""
    name = "tensorrt"
    device = "cuda"

    def __init__(self, engine_path, cuda_graph=False):
        import torch

        trt = import_trt()
        self.version = str(trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)  # logger and runtime must outlive the engine
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise UserError(f"{engine_path} is not a TensorRT engine for this TensorRT/GPU; build it again here")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.dtypes = {n: torch.float16 if self.engine.get_tensor_dtype(n) == trt.DataType.HALF else torch.float32
                       for n in names}
        self.stream = torch.cuda.Stream()
        self.buffers = {}
        self.cuda_graph, self.graph = cuda_graph, None

    def prepare(self, x):
        """Copy x into the input buffer (reused while its shape holds, so a captured graph stays valid)."""
        import torch

        name, x = self.inputs[0], torch.as_tensor(x)
        with torch.cuda.stream(self.stream):  # copies and buffers belong to the stream compute runs on
            if name in self.buffers and tuple(self.buffers[name].shape) == tuple(x.shape):
                self.buffers[name].copy_(x)
                return
            self.buffers[name] = x.to("cuda", self.dtypes[name]).contiguous()
            self.context.set_input_shape(name, tuple(x.shape))
            self.context.set_tensor_address(name, self.buffers[name].data_ptr())
            for out in self.outputs:
                self.buffers[out] = torch.empty(tuple(self.context.get_tensor_shape(out)), dtype=self.dtypes[out],
                                                device="cuda")
                self.context.set_tensor_address(out, self.buffers[out].data_ptr())
        if self.cuda_graph:  # capture one enqueue per input shape, as trtexec does
            self._enqueue()  # the first enqueue after a shape change does setup work that must not be captured
            self.stream.synchronize()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=self.stream):
                self._enqueue()

    def _enqueue(self):
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise CheckFailed("TensorRT execute_async_v3 failed")

    def launch(self):
        if self.graph is not None:
            import torch

            with torch.cuda.stream(self.stream):
                self.graph.replay()
        else:
            self._enqueue()

    def infer(self, x):
        self.prepare(x)
        self.launch()
        self.stream.synchronize()
        return self.buffers[self.outputs[0]].float().cpu().numpy()

    def info(self):
        return {"backend": self.name, "version": self.version, "cuda_graph": self.cuda_graph}
