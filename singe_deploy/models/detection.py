"""torchvision detectors as prunable dense networks.

A detector's forward resizes images, runs backbone, neck and heads, then decodes boxes and runs NMS: the last part is
data-dependent and is what a deployment keeps outside the engine (TensorRT's NMS plugin, or the application). Here a
detector's forward is replaced by its dense part: normalise, backbone (+ FPN), and the heads that see every anchor
(RPN for the R-CNN family; the classification and box heads for RetinaNet, FCOS and SSD). It returns one tensor
(N, anchors, values per anchor): class or objectness scores, then box deltas (and FCOS's centerness). That tensor is
what pruning traces, MACs count, ONNX exports and parity compares. Input: images already at the network's
resolution, values in [0, 1] (normalisation is inside). The state dict keys are torchvision's, so pruned weights go
back into the full detector (`full_detector`) for a user's own evaluation.

Kept whole: every head layer's output (their widths are the anchors' scores and boxes) and, for the R-CNN family,
the FPN outputs, which the RoI heads read outside the traced part."""
from __future__ import annotations

import functools
import types

import torch

TASK = "detection"
KEEP = "_singe_keep_whole"  # names of modules whose output channels are never pruned
SIZES = {"ssd300_vgg16": 300, "ssdlite320_mobilenet_v3_large": 320, "fasterrcnn_mobilenet_v3_large_320_fpn": 320}


@functools.cache
def names():
    import torchvision.models as tvm

    return tuple(sorted(tvm.list_models(module=tvm.detection)))


def is_detector(model):
    from torchvision.models.detection.fcos import FCOS
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
    from torchvision.models.detection.retinanet import RetinaNet
    from torchvision.models.detection.ssd import SSD

    return isinstance(model, (GeneralizedRCNN, RetinaNet, FCOS, SSD))


def input_size(name):
    """The side torchvision's detector resizes images to (its transform's min_size)."""
    return SIZES.get(name, 800)


def dense(model):
    """Give a torchvision detector its dense forward (see the module doc) and mark what stays whole."""
    from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

    mean = torch.tensor(model.transform.image_mean).view(1, -1, 1, 1)
    std = torch.tensor(model.transform.image_std).view(1, -1, 1, 1)
    model.register_buffer("_singe_mean", mean, persistent=False)
    model.register_buffer("_singe_std", std, persistent=False)
    rcnn = isinstance(model, GeneralizedRCNN)
    model.forward = types.MethodType(_rcnn_forward if rcnn else _one_stage_forward, model)
    keep = ["rpn.head", "roi_heads"] if rcnn else ["head"]
    if rcnn and hasattr(model.backbone, "fpn"):
        keep.append("backbone.fpn.layer_blocks")
    setattr(model, KEEP, keep)
    return model


def full_detector(model):
    """The torchvision detector again (resize, heads, box decoding and NMS), with the pruned weights."""
    model.__dict__.pop("forward", None)
    return model


def kept_layers(model):
    return [m for name in getattr(model, KEEP, ()) for m in model.get_submodule(name).modules()]


def _features(model, x):
    f = model.backbone((x - model._singe_mean) / model._singe_std)
    return list(f.values()) if isinstance(f, dict) else [f]


def _rcnn_forward(self, x):
    objectness, deltas = self.rpn.head(_features(self, x))
    levels = []
    for o, d in zip(objectness, deltas):
        n, a, h, w = o.shape
        o = o.permute(0, 2, 3, 1).reshape(n, h * w * a, 1)
        d = d.view(n, a, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, h * w * a, 4)
        levels.append(torch.cat([o, d], 2))
    return torch.cat(levels, 1)


def _one_stage_forward(self, x):
    out = self.head(_features(self, x))  # cls_logits, bbox_regression (and FCOS's bbox_ctrness), each (N, A, k)
    return torch.cat([out["cls_logits"]] + [v for k, v in out.items() if k != "cls_logits"], 2)
