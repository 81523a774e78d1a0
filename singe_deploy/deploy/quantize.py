"""fp16 and int8 deployables from an fp32 ONNX file, built with the libraries made for it.

int8: onnxruntime.quantization's static quantization in QDQ form (QuantizeLinear/DequantizeLinear around each
quantized op), weights per output channel, activations calibrated on real batches (minmax, entropy or
percentile), after the pre-processing onnxruntime recommends (quant_pre_process: shape inference and graph
optimisation). Weights are int8 and symmetric. For onnxruntime on a CPU (target "cpu") activations are uint8 with
a zero point and weights use 7 bits (U8S8 with reduce_range): on this project's x86 CPU that form ran a pruned
resnet50 1.8x faster than fp32, where int8 activations (S8S8) ran no faster, and full 8-bit weights lost 2 points
on the demo model in onnxruntime's kernels (docs/quantization.md, tools/int8_forms.py). For TensorRT (target
"trt") activations are int8 and symmetric: the explicit-quantization QDQ graph TensorRT builds int8 engines from.
fp16: onnxconverter-common's float16 converter, with the graph's inputs and outputs kept fp32 by default.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import CheckFailed, UserError, first_line

PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZED = PRECISIONS[1:]  # what --quantize writes beside the fp32 files
METHODS = ("minmax", "entropy", "percentile")
TARGETS = ("cpu", "trt")


def parse_precisions(text):
    """'none' -> []; 'fp16,int8' -> ['fp16', 'int8']; anything else exits 2 naming the choices."""
    values = [v.strip().lower() for v in str(text).split(",") if v.strip()]
    if values in ([], ["none"]):
        return []
    bad = [v for v in values if v not in QUANTIZED]
    if bad:
        raise UserError(f"unknown precision '{bad[0]}'; use none, fp16, int8 or a list such as fp16,int8")
    return list(dict.fromkeys(values))


def to_fp16(src, dst, keep_io_types=True):
    """dst: src with its float32 weights and ops in float16 (inputs and outputs stay float32 when keep_io_types)."""
    import onnx
    from onnxconverter_common import float16

    model = _load(src)
    try:
        half = float16.convert_float_to_float16(model, keep_io_types=keep_io_types, disable_shape_infer=False)
    except Exception as e:
        raise CheckFailed(f"fp16 conversion of {Path(src).name} failed ({e.__class__.__name__}: "
                          f"{first_line(e, 160)}); the fp32 file is still written") from None
    onnx.save(half, str(dst))
    return Path(dst)


class _Reader:
    """onnxruntime's calibration data reader over a list of batches (arrays or tensors, NCHW)."""

    def __init__(self, name, batches):
        self.name, self.batches, self.i = name, list(batches), 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        x = self.batches[self.i]
        self.i += 1
        x = x.numpy() if hasattr(x, "numpy") else x
        return {self.name: np.ascontiguousarray(x, dtype=np.float32)}

    def rewind(self):
        self.i = 0


def to_int8(src, dst, batches, method="minmax", per_channel=True, target="cpu"):
    """dst: src quantized to int8 (static, QDQ) with activation ranges from `batches` (see the module doc)."""
    from onnxruntime import quantization as q

    if method not in METHODS:
        raise UserError(f"unknown calibration method '{method}'; use {', '.join(METHODS)}")
    if target not in TARGETS:
        raise UserError(f"unknown quantization target '{target}'; use cpu (onnxruntime) or trt (TensorRT)")
    batches = list(batches or [])
    if not batches:
        raise UserError("int8 needs calibration batches; pass --data with real images (fashion-mnist, "
                        "imagefolder:DIR) and --calib-batches N")
    name = input_name(src)
    trt = target == "trt"
    calibrate = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                 "percentile": q.CalibrationMethod.Percentile}[method]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        try:
            q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantization works on the file as it is
            pre = Path(src)
        try:
            q.quantize_static(str(pre), str(dst), _Reader(name, batches), quant_format=q.QuantFormat.QDQ,
                              per_channel=per_channel, calibrate_method=calibrate,
                              activation_type=q.QuantType.QInt8 if trt else q.QuantType.QUInt8,
                              weight_type=q.QuantType.QInt8, reduce_range=not trt,
                              extra_options={"ActivationSymmetric": trt, "WeightSymmetric": True,
                                             "CalibMovingAverage": False})
        except UserError:
            raise
        except Exception as e:
            raise CheckFailed(f"int8 quantization of {Path(src).name} failed ({e.__class__.__name__}: "
                              f"{first_line(e, 160)}); the fp32 file is still written") from None
    return Path(dst)


def input_name(path):
    graph = _load(path, load_external_data=False).graph
    weights = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise UserError(f"{Path(path).name} has {len(inputs)} inputs; quantization takes models with one image input")
    return inputs[0]


def _load(path, **kw):
    import onnx

    try:
        return onnx.load(str(path), **kw)
    except Exception as e:
        raise UserError(f"cannot read {path} as ONNX ({e.__class__.__name__}: {first_line(e, 120)}); "
                        "pass an .onnx file that singe-deploy compress or torch.onnx.export wrote") from None


def quantize(src, precision, dst, batches=None, method="minmax", per_channel=True, target="cpu"):
    """One verb for both precisions: returns the path written, which keeps src's singe-deploy metadata (model,
    variant) and says its precision (bench reads it)."""
    from ..files import onnx_metadata
    from .export import tag_onnx

    if precision == "fp16":
        to_fp16(src, dst)
    elif precision == "int8":
        to_int8(src, dst, batches, method, per_channel, target)
    else:
        raise UserError(f"unknown precision '{precision}'; use fp16 or int8")
    extra = {"calibration": method, "quantized_for": target} if precision == "int8" else {}
    tag_onnx(dst, dict(onnx_metadata(src), precision=precision, **extra))
    return Path(dst)
