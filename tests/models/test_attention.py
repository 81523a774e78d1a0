"""torchvision ViTs get HeadAttention in place of nn.MultiheadAttention: the same function and state dict keys,
and whole heads as the pruning unit."""
import copy

import pytest
import torch

from singe_deploy.models.attention import HeadAttention, split_heads
from singe_deploy.models.specs import load_pruned
from singe_deploy.pruning.entwined import Schedule
from singe_deploy.pruning.groups import all_groups, default_ignored
from singe_deploy.pruning.plan import Planner, apply_plan

from .test_architectures import _prune_and_check, _tiny_vit

SHAPE = (1, 3, 32, 32)


def test_split_heads_computes_the_same_and_keeps_torchvision_keys():
    torch.manual_seed(0)
    dense = _tiny_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    model = split_heads(copy.deepcopy(dense))
    assert all(isinstance(b.self_attention, HeadAttention) for b in model.encoder.layers)
    assert torch.allclose(model(x), dense(x), atol=1e-6)
    assert sorted(model.state_dict()) == sorted(dense.state_dict())
    fresh = split_heads(_tiny_vit()).eval()
    fresh.load_state_dict(dense.state_dict())  # a torchvision checkpoint loads as it is
    assert torch.allclose(fresh(x), dense(x), atol=1e-6)


def _remove_head_0(model, attention):
    """Plan and apply the removal of head 0 of one attention module (scores rise with the channel index)."""
    graph, groups = all_groups(model, torch.zeros(SHAPE), default_ignored(model))
    names = {id(m): n for n, m in model.named_modules()}
    scores = [torch.arange(len(g[0].idxs), dtype=torch.float64) for g in groups]
    planner = Planner(model, groups, scores, {}, Schedule(round_to=1), names)
    qkv = names[id(dict(model.named_modules())[attention].qkv)]
    counts = [int(name == qkv) for name, *_rest in planner.entries]
    assert sum(counts) == 1
    apply_plan(model, planner.removals(counts), torch.zeros(SHAPE), graph)


def test_the_planner_removes_whole_heads_exactly_as_masking_them():
    torch.manual_seed(0)
    dense = split_heads(_tiny_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    model, masked = [copy.deepcopy(dense) for _ in range(2)]
    _remove_head_0(model, "encoder.layers.encoder_layer_0.self_attention")
    first, second = (b.self_attention for b in model.encoder.layers)
    assert (first.num_heads, first.head_dim, first.attn_dim, second.num_heads) == (3, 16, 48, 4)
    with torch.no_grad():
        masked.encoder.layers[0].self_attention.out_proj.weight[:, :16] = 0  # head 0 (16 dims)
    assert torch.allclose(model.eval()(x), masked(x), atol=1e-5)


def test_a_torchvision_vit_prunes_heads_and_embedding_and_reloads(tmp_path, monkeypatch):
    import singe_deploy.models.specs as models
    torch.manual_seed(0)
    monkeypatch.setattr(models, "build_model", lambda spec, *a, **k: split_heads(_tiny_vit()))
    model = _prune_and_check(split_heads(_tiny_vit()), SHAPE, tmp_path, reduction=1.6)
    attn = [b.self_attention for b in model.encoder.layers]
    assert all(a.head_dim == 16 and a.qkv.out_features == 3 * a.attn_dim == 3 * 16 * a.num_heads for a in attn)
    assert model.hidden_dim == model.conv_proj.out_channels
    back = load_pruned(tmp_path / "p.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    assert [a.num_heads for a in (b.self_attention for b in back.encoder.layers)] == [a.num_heads for a in attn]
    assert torch.allclose(back(x), model(x), atol=1e-6)


def _tiny_swin(v2=False):
    from torchvision.models.swin_transformer import (
        PatchMergingV2,
        SwinTransformer,
        SwinTransformerBlockV2,
    )
    kw = dict(block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2) if v2 else {}
    return SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=5, **kw)


def _tiny_maxvit():
    from torchvision.models.maxvit import MaxVit
    return MaxVit(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32],
                  block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0, num_classes=5)


def _randomise_head_tensors(model):
    with torch.no_grad():  # torchvision starts some at zero or at one value for every head
        for m in model.modules():
            for name, _ in getattr(m, "head_tensors", ()):
                if "." not in name:
                    getattr(m, name).normal_()
            if getattr(m, "qkv", None) is not None and m.qkv.bias is not None:
                m.qkv.bias.normal_(std=0.1)
    return model


WINDOWED = {"swin": (_tiny_swin, "features.1.0.attn", "proj"),
            "swin_v2": (lambda: _tiny_swin(True), "features.1.1.attn", "proj"),  # a shifted block
            "maxvit": (_tiny_maxvit, "blocks.0.layers.0.layers.window_attention.attn_layer.1", "merge")}


@pytest.mark.parametrize("kind", sorted(WINDOWED))
def test_window_attention_computes_the_same_with_torchvision_keys(kind):
    from singe_deploy.models.attention import PartitionAttention, WindowAttention
    torch.manual_seed(0)
    dense = WINDOWED[kind][0]().eval()
    with torch.no_grad():
        for m in dense.modules():
            if hasattr(m, "relative_position_bias_table"):
                m.relative_position_bias_table.normal_()
    model = split_heads(copy.deepcopy(dense))
    assert any(isinstance(m, (WindowAttention, PartitionAttention)) for m in model.modules())
    assert sorted(model.state_dict()) == sorted(dense.state_dict())
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(model(x), dense(x), atol=1e-5)
    fresh = split_heads(WINDOWED[kind][0]()).eval()
    fresh.load_state_dict(dense.state_dict())  # a torchvision checkpoint loads as it is
    assert torch.allclose(fresh(x), dense(x), atol=1e-5)


@pytest.mark.parametrize("kind", sorted(WINDOWED))
def test_a_window_attention_head_goes_whole_with_its_bias(kind):
    """Removing head 0 (q/k/v rows, projection columns, its relative position bias and V2's logit scale and
    bias MLP row) computes what zeroing its projection columns computes."""
    build, where, out = WINDOWED[kind]
    torch.manual_seed(0)
    dense = _randomise_head_tensors(split_heads(build())).eval()
    x = torch.randn(2, 3, 32, 32)
    model, masked = [copy.deepcopy(dense) for _ in range(2)]
    attn = dict(model.named_modules())[where]
    heads, head_dim = attn.num_heads, attn.head_dim
    tensors = {n: p.detach().clone() for n, p in attn.named_parameters()
               if n.split(".")[0] not in ("qkv", "to_qkv", out)}
    _remove_head_0(model, where)
    assert (attn.num_heads, attn.attn_dim, attn.qkv.out_features) == (heads - 1, (heads - 1) * head_dim,
                                                                      3 * (heads - 1) * head_dim)
    for name, dim in attn.head_tensors:  # head 0's entry went, the others stay in order
        after = dict(attn.named_parameters())[name]
        assert torch.equal(after, tensors[name].narrow(dim, 1, heads - 1))
    with torch.no_grad():
        getattr(dict(masked.named_modules())[where], out).weight[:, :head_dim] = 0
    assert torch.allclose(model.eval()(x), masked(x), atol=1e-5)


@pytest.mark.parametrize("kind", ["swin_v2", "maxvit"])
def test_window_attention_models_prune_export_and_reload(kind, tmp_path, monkeypatch):
    import singe_deploy.models.specs as models
    build = WINDOWED[kind][0]
    torch.manual_seed(0)
    monkeypatch.setattr(models, "build_model", lambda spec, *a, **k: split_heads(build()))
    model = _prune_and_check(_randomise_head_tensors(split_heads(build())), SHAPE, tmp_path, reduction=1.3)
    back = load_pruned(tmp_path / "p.pt").eval()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(back(x), model(x), atol=1e-5)
