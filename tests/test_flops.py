import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from singe_deploy.flops import count


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
