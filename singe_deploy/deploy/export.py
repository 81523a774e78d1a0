"""ONNX export (torch.onnx dynamo path, dynamic batch), the ONNX checker, and parity checks."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings

import numpy as np
import torch

from ..errors import CheckFailed, UserError, first_line
from ..measure.agreement import top1_agreement


def export_onnx(model, input_shape, path, opset=18, external_data=None, dtype="float32", metadata=None):
    """Export with a dynamic batch dimension; input 'input', output 'logits'. Weights go to a file beside
    the graph when asked, or by default when they pass 1.5 GB (one ONNX file holds at most 2 GB).
    `metadata` (e.g. model spec, variant) is stored in the graph as 'singe_deploy.KEY' properties, which
    `singe-deploy bench` and `check` read."""
    if opset < 18:
        raise UserError(f"--opset {opset} is too old for the dynamo exporter; use 18 or newer")
    model = model.eval()
    if external_data is None:
        tensors = list(model.parameters()) + list(model.buffers())
        external_data = sum(t.numel() * t.element_size() for t in tensors) > 1.5e9
    example = torch.randn([2] + list(input_shape[1:]), dtype=getattr(torch, dtype))  # batch >= 2: stays dynamic
    batch = torch.export.Dim("batch", min=1, max=4096)
    sink = io.StringIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), report=False, verify=False,
                              external_data=external_data)
        except Exception as e:
            raise CheckFailed(f"ONNX export failed: {e.__class__.__name__}: {first_line(e, 200)}") from None
    if metadata:
        tag_onnx(path, metadata)
    return path


def tag_onnx(path, metadata):
    """Set 'singe_deploy.KEY' metadata properties of an ONNX file (weights stored beside it are untouched)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    keep = [p for p in m.metadata_props if p.key.removeprefix("singe_deploy.") not in metadata]
    del m.metadata_props[:]
    m.metadata_props.extend(keep)
    for key, value in metadata.items():
        m.metadata_props.add(key=f"singe_deploy.{key}", value=str(value))
    onnx.save(m, str(path))


def check_onnx(path):
    """onnx.checker with full_check (shape inference too); returns the opset."""
    import onnx

    try:  # by path: a model with its weights in a side file may pass protobuf's 2 GB limit in memory
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as e:
        raise CheckFailed(f"{path} fails the ONNX checker: {first_line(e, 200)}") from None
    model = onnx.load(str(path), load_external_data=False)
    return max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def runtime_accuracy(backend, loader, limit=None, predictions=None):
    """Top-1 accuracy of an `infer` backend (the deployable as its runtime runs it) over (x, y) batches, on the
    first `limit` images when given; `predictions`, a list, gets every image's top class."""
    right = seen = 0
    for x, y in loader:
        if limit is not None and seen >= limit:
            break
        x, y = np.asarray(x), np.asarray(y)
        if limit is not None:
            x, y = x[:limit - seen], y[:limit - seen]
        top = np.asarray(backend.infer(x)).argmax(1)
        if predictions is not None:
            predictions.extend(top.reshape(len(y), -1)[:, 0].tolist())
        right += int((top == y).sum())
        seen += len(y)
    return right / max(seen, 1)


def parity(reference, candidate, batches, reference_name, tie=0.0, rtol=0.0):
    """Run two `infer` backends on the same batches: max abs diff of outputs and top-1 agreement: the share of
    samples whose reference top class is the candidate's too, or scores within `tie` of the candidate's best (two
    classes closer than the accepted numeric error have no defined order). Maps (N, classes, H, W): the share of
    pixels, averaged over samples; detection outputs (N, anchors, k): the share of anchors. `beyond_rtol`: the
    largest |diff| - rtol x (the sample's largest |reference| output), which an absolute tolerance then bounds:
    float32 errors grow with the scale of the values a sample's outputs are computed from, not with each output."""
    max_diff, beyond, agree, total, nonfinite = 0.0, 0.0, 0, 0, 0
    for x in batches:
        x = x.numpy() if isinstance(x, torch.Tensor) else x
        a, b = np.asarray(reference.infer(x)), np.asarray(candidate.infer(x))
        if a.shape != b.shape:
            raise CheckFailed(f"output shapes differ: {reference_name} {a.shape} vs {b.shape}")
        bad = ~(np.isfinite(a) & np.isfinite(b))
        nonfinite += int(bad.sum())  # NaN or inf in either: a failed check, never a difference of 0
        a, b = np.where(bad, 0, a), np.where(bad, 0, b)
        diff = np.abs(a.astype(np.float64) - b)
        max_diff = max(max_diff, float(diff.max()))
        scale = np.abs(a.astype(np.float64)).reshape(len(a), -1).max(1).reshape((-1,) + (1,) * (a.ndim - 1))
        beyond = max(beyond, float((diff - rtol * scale).max()))
        agree += float(top1_agreement(a, b, tie).sum())
        total += a.shape[0]
    return {"max_abs_diff": max_diff, "top1_agreement": agree / max(total, 1), "reference": reference_name,
            "samples": total, "rtol": rtol, "beyond_rtol": max(beyond, 0.0), "nonfinite": nonfinite}

