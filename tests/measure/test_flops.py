import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from singe_deploy.measure.flops import count, layer_differences, rolled


def _macs(model, shape):
    return count(model, shape).macs


def test_conv_counts_groups_stride_dilation():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=2, dilation=2, groups=4, bias=True)
    out_hw = ((20 + 4 - 2 * 2 - 1) // 2 + 1) ** 2
    assert _macs(conv, (1, 8, 20, 20)) == 16 * out_hw * (8 // 4) * 9


def test_transposed_conv_is_counted_per_input_element():
    deconv = nn.ConvTranspose2d(4, 6, 3, stride=2)
    assert _macs(deconv, (1, 4, 5, 5)) == 4 * 25 * 6 * 9


def test_linear_and_functional_matmul():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 5)
            self.w = nn.Parameter(torch.randn(12, 7))

        def forward(self, x):
            x = x.flatten(1)
            return self.fc(x) + (x @ self.w).sum(1, keepdim=True)

    assert _macs(M(), (1, 3, 2, 2)) == 12 * 5 + 12 * 7


def test_attention_is_counted():
    class Attn(nn.Module):
        def forward(self, x):
            q = x.view(1, 2, 10, 8)
            return F.scaled_dot_product_attention(q, q, q).flatten(1)

    assert _macs(Attn(), (1, 160)) == 2 * 10 * 10 * (8 + 8)


def test_torchvision_resnet18_matches_the_closed_form():
    m = torchvision.models.resnet18()
    c = count(m, (1, 3, 224, 224))
    # the published figure for resnet18 at 224 (conv + linear) is 1.814 GMACs
    assert abs(c.macs / 1.8141e9 - 1) < 1e-3
    assert c.params == sum(p.numel() for p in m.parameters()) == 11_689_512


def test_shared_weights_count_once():
    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.ReLU(), lin)
    assert count(m, (1, 4)).params == 20


def test_per_layer_and_other_ops():
    m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    c = count(m, (1, 1, 6, 6))
    layers = {l.name: l for l in c.layers}
    assert layers["0"].macs == 4 * 36 * 9 and layers["0"].in_channels == 1 and layers["0"].out_channels == 4
    assert layers["1"].other_ops == 4 * 36 and layers["2"].other_ops == 4 * 36
    assert c.macs == sum(l.macs for l in c.layers)
    assert c.other_ops == sum(l.other_ops for l in c.layers)


def test_count_is_per_sample_and_restores_mode():
    m = nn.Sequential(nn.Linear(3, 2))
    m.train()
    assert count(m, (1, 3)).macs == count(m, (5, 3)).macs == 6
    assert m.training


# one model per family that a counter can get wrong: plain, depthwise, squeeze-excite, concat, grouped,
# attention (fused MultiheadAttention) and windowed attention (functional matmul)
ZOO = ["resnet50", "mobilenet_v2", "efficientnet_b0", "densenet121", "resnext50_32x4d", "vit_b_16", "swin_t"]


@pytest.mark.parametrize("name", ZOO)
def test_torchvision_zoo_matches_the_published_figures(name):
    weights = torchvision.models.get_model_weights(name).DEFAULT
    size = weights.transforms().crop_size[0]
    with torch.device("meta"):  # shapes only: no compute, no memory for activations
        model = torchvision.models.get_model(name)
    c = count(model, (1, 3, size, size))
    published = weights.meta["_ops"]  # torchvision's "GFLOPS" are MACs, 3 decimals
    assert abs(c.macs / (published * 1e9) - 1) < 0.005
    assert c.params == weights.meta["num_params"]


def test_grouped_transposed_conv_and_interpolate():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1, groups=2)

        def forward(self, x):
            return F.interpolate(self.up(x), scale_factor=2, mode="bilinear")

    c = count(Up(), (1, 8, 5, 5))
    assert c.macs == 8 * 25 * (4 // 2) * 16  # each input element meets out/groups x kernel weights
    assert c.other_ops >= 4 * 20 * 20  # interpolation is not free: one op per output element at least


def test_layer_differences_list_real_differences_only():
    ours = {"blocks.0.attn": 30, "blocks.0.fc": 10, "head": 5}
    moved = {"blocks.0.attn": 20, "blocks.0.attn.out_proj": 10, "blocks.0.fc": 10, "head": 5}
    assert layer_differences(ours, moved) == []
    wrong = dict(moved, head=7)
    assert layer_differences(ours, wrong) == [{"layer": "head", "model": 5, "onnx": 7}]
    assert rolled(ours)[""] == 45 and rolled(ours)["blocks"] == 40


def test_params_the_forward_never_reads_are_reported():
    class Aux(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Linear(4, 3), nn.Linear(4, 7)

        def forward(self, x):
            return self.body(x) + (self.aux(x).sum() if self.training else 0)

    c = count(Aux(), (1, 4))
    assert c.params == 15 + 35 and c.unused_params == 35
