"""Detectors: their dense part (backbone, FPN, the heads over every anchor) prunes consistently, the heads and what
the RoI heads read stay whole, it exports with parity and counts like the ONNX graph, and the pruned weights go back
into the full torchvision detector."""
import math

import torch
from torch import nn

from singe_deploy.deploy.export import export_onnx, parity
from singe_deploy.measure.bench import OnnxRuntime, Torch
from singe_deploy.measure.flops import count, cross_check
from singe_deploy.models.detection import full_detector
from singe_deploy.models.specs import detector, task_of
from singe_deploy.pruning.entwined import Schedule, Target, prune
from singe_deploy.scoring.importance import make_criterion

SHAPE = (1, 3, 64, 64)
FACTORIES = '''
from collections import OrderedDict

from torch import nn
from torchvision.models.detection import FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import MultiScaleRoIAlign


def backbone():
    stage = lambda cin, cout: nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.BatchNorm2d(cout), nn.ReLU())
    body = nn.Sequential(OrderedDict(c1=stage(3, 16), c2=stage(16, 24), c3=stage(24, 32)))
    return BackboneWithFPN(body, {"c2": "0", "c3": "1"}, [24, 32], 16)  # levels 0, 1 and a max-pooled one


def anchors():
    return AnchorGenerator(((16,), (32,), (64,)), ((0.5, 1.0, 2.0),) * 3)


def rcnn(num_classes=4):
    return FasterRCNN(backbone(), num_classes, min_size=64, max_size=64, rpn_anchor_generator=anchors(),
                      box_roi_pool=MultiScaleRoIAlign(["0", "1"], 7, 2), representation_size=32)


def retinanet(num_classes=4):
    return RetinaNet(backbone(), num_classes, min_size=64, max_size=64, anchor_generator=anchors())
'''


def _factories(tmp_path):
    path = tmp_path / "detectors.py"
    path.write_text(FACTORIES)
    namespace = {}
    exec(compile(FACTORIES, str(path), "exec"), namespace)
    return path, namespace


def _lively(model):
    """Weights that give outputs of order one: torchvision starts some heads at std 0.01, which would make a parity
    check of tiny numbers say nothing."""
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(m.weight, std=math.sqrt(2 / m.weight[0].numel()))
            if m.bias is not None:
                nn.init.normal_(m.bias, std=0.1)
    return model.eval()


def _prune(model, reduction=1.4):
    dense = count(model, SHAPE)
    prune(model, SHAPE, make_criterion("l2"), Target("macs", reduction), Schedule(steps=1, finetune_iters=0, epochs=0,
          round_to=1), log=lambda *a: None)
    pruned = count(model, SHAPE)
    assert pruned.macs < dense.macs / reduction * 1.03
    return pruned


def _exports_with_parity(model, pruned, tmp_path, x):
    path = export_onnx(model, SHAPE, tmp_path / "p.onnx")
    q = parity(Torch(model), OnnxRuntime(path, threads=1), [x], "pytorch")
    assert q["max_abs_diff"] < 1e-4 and q["top1_agreement"] == 1.0
    check = cross_check(model, pruned)
    assert check["macs_agree"], check["layer_differences"]


def test_a_two_stage_detector_prunes_its_backbone_and_keeps_what_the_roi_heads_read(tmp_path):
    model = _lively(detector(_factories(tmp_path)[1]["rcnn"]()))
    x = torch.rand(2, 3, 64, 64)
    shape = model(x).shape  # (N, anchors, objectness + 4 box deltas)
    assert task_of(model) == "detection" and shape[0] == 2 and shape[2] == 5
    body = [s[0].out_channels for s in model.backbone.body.children()]
    pruned = _prune(model)
    assert model(x).shape == shape
    assert [s[0].out_channels for s in model.backbone.body.children()] != body
    assert all(b[0].out_channels == 16 for b in model.backbone.fpn.layer_blocks)  # the RoI pooling's input width
    assert model.rpn.head.conv[0][0].out_channels == 16 and model.rpn.head.cls_logits.out_channels == 3
    widths = {b[0].out_channels for b in model.backbone.fpn.inner_blocks} | {
        b[0].in_channels for b in model.backbone.fpn.layer_blocks}
    assert len(widths) == 1  # the top-down adds keep one inner width
    _exports_with_parity(model, pruned, tmp_path, x)
    detections = full_detector(model).eval()([torch.rand(3, 64, 64)])
    assert set(detections[0]) == {"boxes", "labels", "scores"}


def test_a_one_stage_detector_keeps_its_head_outputs_whole(tmp_path):
    model = _lively(detector(_factories(tmp_path)[1]["retinanet"]()))
    x = torch.rand(2, 3, 64, 64)
    shape = model(x).shape
    assert shape[2] == 4 + 4  # class scores, then box deltas
    pruned = _prune(model)
    assert model(x).shape == shape
    assert model.head.classification_head.cls_logits.out_channels == 3 * 4
    assert model.head.regression_head.bbox_reg.out_channels == 3 * 4
    _exports_with_parity(model, pruned, tmp_path, x)


def test_compress_takes_a_detector_from_a_file_and_exports_it(tmp_path):
    from singe_deploy.cli import main
    path, _ = _factories(tmp_path)
    out = tmp_path / "out"
    code = main(["compress", "--model", f"{path}:retinanet", "--data", "synthetic", "--input-shape", "1,3,64,64",
                 "--macs-reduction", "1.3", "--steps", "1", "--round-to", "1", "--batch-size", "4",
                 "--parity-batches", "1", "--batch-sizes", "1", "--latency-iters", "3", "--latency-seconds", "0",
                 "--out", str(out)])
    assert code == 0
    import json
    report = json.loads((out / "report.json").read_text())
    assert report["target"]["hit"] and {e["variant"] for e in report["exports"] if e["format"] == "onnx"} == {
        "dense", "pruned"}


def test_a_detector_with_labels_per_image_is_bad_input(tmp_path, capsys):
    from singe_deploy.cli import main
    path, _ = _factories(tmp_path)
    out = tmp_path / "det"
    code = main(["compress", "--model", f"{path}:rcnn", "--data", "synthetic", "--input-shape", "1,3,64,64",
                 "--criterion", "taylor", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "detection model" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_torchvision_detectors_are_known_and_start_at_their_own_size():
    from singe_deploy.models.specs import default_input_shape, torchvision_names
    assert "retinanet_resnet50_fpn" in torchvision_names()
    assert default_input_shape("torchvision:ssdlite320_mobilenet_v3_large") == (3, 320, 320)
    assert default_input_shape("torchvision:fasterrcnn_resnet50_fpn") == (3, 800, 800)


def test_a_torchvision_detector_builds_as_its_dense_part_without_downloads():
    from singe_deploy.models.specs import build_model
    model = build_model("torchvision:ssdlite320_mobilenet_v3_large").eval()
    out = model(torch.rand(1, 3, 96, 96))
    assert task_of(model) == "detection" and out.dim() == 3 and out.shape[2] == 91 + 4
