"""singe-deploy quantize: an int8 or fp16 ONNX file from any fp32 ONNX file, with its accuracy measured.

    singe-deploy quantize OUT/pruned.onnx --precision int8 --data fashion-mnist --calib-batches 4
    singe-deploy quantize model.onnx --precision fp16 --out model.fp16.onnx
    singe-deploy quantize model.onnx --precision int8 --target trt --data imagefolder:DIR   # for TensorRT

int8 calibrates on the first --calib-batches training batches of --data (unaugmented); with real data the fp32
and the quantized file are then both run by onnxruntime on the validation set and their accuracies printed.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..deploy.quantize import METHODS, PRECISIONS, TARGETS, input_name, quantize
from ..errors import UserError
from ..files import write_atomic


def add_arguments(ap):
    ap.add_argument("model", metavar="MODEL.onnx", help="an fp32 ONNX file (one image input, NCHW)")
    ap.add_argument("--precision", choices=PRECISIONS[1:], default="int8", help="default: int8")
    ap.add_argument("--data", default=None, metavar="SPEC",
                    help="calibration and validation data: fashion-mnist, imagefolder:DIR or synthetic (int8 needs it)")
    ap.add_argument("--data-dir", metavar="DIR", help="where Fashion-MNIST lives (default: search the usual places)")
    ap.add_argument("--calib-batches", type=int, default=4, metavar="N", help="int8 calibration batches (default: 4)")
    ap.add_argument("--batch-size", type=int, default=64, metavar="N", help="calibration batch size (default: 64)")
    ap.add_argument("--method", choices=METHODS, default="minmax", help="int8 calibration (default: minmax)")
    ap.add_argument("--target", choices=TARGETS, default="cpu",
                    help="cpu: onnxruntime's int8 kernels; trt: symmetric activations for TensorRT (default: cpu)")
    ap.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    ap.add_argument("--input-shape", metavar="1,C,H,W", help="needed only when the model's H/W are not fixed")
    ap.add_argument("--val-limit", type=int, metavar="N", help="measure accuracy on the first N validation images")
    ap.add_argument("--threads", type=int, metavar="N", help="onnxruntime threads for the accuracy runs")
    ap.add_argument("--out", metavar="FILE", help="default: MODEL.PRECISION.onnx beside the model")


def run(args, log=print):
    src = Path(args.model)
    if not src.is_file():
        raise UserError(f"{src} does not exist; pass an .onnx file")
    if src.suffix != ".onnx":
        raise UserError(f"{src.name} is not an .onnx file; export one with singe-deploy compress first")
    input_name(src)  # a readable ONNX file with one input, or one line saying what is wrong
    out = Path(args.out) if args.out else src.with_name(f"{src.name[:-len('.onnx')]}.{args.precision}.onnx")
    if args.calib_batches < 1 or args.batch_size < 1:
        raise UserError("--calib-batches and --batch-size must be at least 1")
    data = _data(args, src) if args.data or args.precision == "int8" else None
    batches = [x for x, _ in data.calibration(args.calib_batches)] if data is not None else None
    if data is not None and not data.real and args.precision == "int8":
        log("note: synthetic calibration data: the int8 ranges, and so its accuracy, mean nothing; "
            "pass real data (--data fashion-mnist or imagefolder:DIR)")
    options = dict(batches=batches, method=args.method, per_channel=not args.per_tensor, target=args.target)
    write_atomic(out, lambda tmp: quantize(src, args.precision, tmp, **options))
    size = lambda p: os.path.getsize(p) / 1e6  # noqa: E731
    log(f"wrote {out} ({size(out):.2f} MB; fp32 {size(src):.2f} MB)")
    if data is not None and data.real:
        from ..deploy.export import runtime_accuracy
        from ..measure.bench import OnnxRuntime

        for name, path in (("fp32", src), (args.precision, out)):
            acc = runtime_accuracy(OnnxRuntime(path, args.threads), data.val, args.val_limit)
            log(f"accuracy {name}: {acc:.4f} (onnxruntime, {'first ' + str(args.val_limit) if args.val_limit else 'all'}"
                " validation images)")
    return 0


def _data(args, src):
    from ..data.specs import make_data
    from ..measure.bench import OnnxRuntime
    from .bench import input_shape

    if args.data is None:
        raise UserError("int8 needs calibration data; pass --data fashion-mnist, imagefolder:DIR or synthetic")
    declared = OnnxRuntime(src, 1).input_shape
    shape = input_shape(declared, args.input_shape, [], src)
    return make_data(args.data, batch_size=args.batch_size, sample_shape=tuple(shape[1:]), data_dir=args.data_dir,
                     val_limit=args.val_limit)
