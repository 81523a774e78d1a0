"""Which int8 form to default to: accuracy of the demo model's int8 files in each form, as onnxruntime runs them,
and (with --time MODEL.onnx) the latency of another model's int8 files in each form.

    python tools/int8_forms.py                       # shipped resnet20, Fashion-MNIST, first 2000 test images
    python tools/int8_forms.py --val-limit 10000 --calib-batches 8
    python tools/int8_forms.py --time OUT/pruned.onnx --batch 8 --threads 1   # run it alone

Each form is onnxruntime.quantization's static QDQ quantization (per-channel weights, minmax calibration on the
first calibration batches), run by onnxruntime twice: with its graph optimisations (fused int8 kernels, what a
deployment gets) and with them off (the QDQ graph evaluated in float: the quantization error alone). A gap between
the two is the runtime's int8 kernels, not the quantization.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

FORMS = {  # name -> (activation type, extra options, reduce_range)
    "S8S8": ("QInt8", {"WeightSymmetric": True, "ActivationSymmetric": False}, False),
    "S8S8 symmetric (--target trt)": ("QInt8", {"WeightSymmetric": True, "ActivationSymmetric": True}, False),
    "U8S8": ("QUInt8", {"WeightSymmetric": True}, False),
    "U8S8 reduce-range (--target cpu)": ("QUInt8", {"WeightSymmetric": True}, True),
}


def quantized(q, src, dst, reader, form):
    act, extra, reduce_range = FORMS[form]
    q.quantize_static(str(src), str(dst), reader, quant_format=q.QuantFormat.QDQ, per_channel=True,
                      activation_type=getattr(q.QuantType, act), weight_type=q.QuantType.QInt8,
                      reduce_range=reduce_range, extra_options=extra)
    return dst


def timed(path, x, threads, repeat=10):
    """Median seconds of onnxruntime runs on x (after one warm-up)."""
    import statistics
    import time

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x})
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        session.run(None, {"input": x})
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def time_forms(model, batch, threads):
    """Median latency of `model` (fp32) and of its int8 files in each form (random calibration: speed only)."""
    import numpy as np
    from onnxruntime import quantization as q

    from singe_deploy.measure.bench import OnnxRuntime
    from singe_deploy.deploy.quantize import _Reader

    shape = [batch] + list(OnnxRuntime(model, 1).input_shape[1:])
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    rows = [("fp32", timed(model, x, threads))]
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(model), str(pre), skip_symbolic_shape=True)
        for form in FORMS:
            path = quantized(q, pre, Path(tmp) / "int8.onnx", _Reader("input", calib), form)
            rows.append((form, timed(path, x, threads)))
    print(f"{model}, batch {batch}, {threads} thread(s), median of 10 runs\n")
    print("| form | ms | speedup over fp32 |\n|---|---:|---:|")
    for form, t in rows:
        print(f"| {form} | {1000 * t:.1f} | {rows[0][1] / t:.2f}x |")
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--calib-batches", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--time", metavar="MODEL.onnx", help="time this model's int8 forms instead (random inputs)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.time:
        time_forms(args.time, args.batch, args.threads)
        return 0

    import onnxruntime as ort
    import torch
    from onnxruntime import quantization as q

    from singe_deploy.measure.bench import OnnxRuntime
    from singe_deploy.source import asset_path
    from singe_deploy.data.specs import make_data
    from singe_deploy.deploy.export import export_onnx, runtime_accuracy
    from singe_deploy.models.specs import build_model
    from singe_deploy.deploy.quantize import _Reader

    model = build_model("builtin:resnet20", 10, 1)
    state = torch.load(asset_path("resnet20_fashion_mnist.pt"), weights_only=True)
    model.load_state_dict(state.get("state_dict", state))
    data = make_data("fashion-mnist", batch_size=args.batch_size, val_limit=args.val_limit)
    calib = [x for x, _ in data.calibration(args.calib_batches)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(model.eval(), (1, 1, 28, 28), Path(tmp) / "fp32.onnx")
        rows.append({"form": "fp32", "optimised": runtime_accuracy(OnnxRuntime(fp32, 1), data.val), "float": None})
        pre = Path(tmp) / "pre.onnx"
        q.quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        for name in FORMS:
            path = quantized(q, pre, Path(tmp) / "int8.onnx", _Reader("input", calib), name)
            row = {"form": name, "optimised": runtime_accuracy(OnnxRuntime(path, 1), data.val)}
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            row["float"] = runtime_accuracy(_Session(plain), data.val)
            rows.append(row)
    print(f"resnet20 (shipped), Fashion-MNIST, first {args.val_limit} test images, {args.calib_batches} x "
          f"{args.batch_size} calibration images, onnxruntime {ort.__version__}\n")
    print("| form | accuracy, onnxruntime optimised (int8 kernels) | accuracy, QDQ evaluated in float |")
    print("|---|---:|---:|")
    for r in rows:
        simulated = "" if r["float"] is None else f"{r['float']:.4f}"
        print(f"| {r['form']} | {r['optimised']:.4f} | {simulated} |")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


class _Session:
    """An `infer` backend around a plain onnxruntime session."""

    name = "onnxruntime"

    def __init__(self, session):
        self.session = session

    def infer(self, x):
        import numpy as np

        return self.session.run(None, {"input": np.ascontiguousarray(x, dtype=np.float32)})[0]


if __name__ == "__main__":
    sys.exit(main())
