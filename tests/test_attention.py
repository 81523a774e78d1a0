"""torchvision ViTs get HeadAttention in place of nn.MultiheadAttention: the same function and state dict keys,
and whole heads as the pruning unit."""
import copy

import torch

from singe_deploy.attention import HeadAttention, split_heads
from singe_deploy.groups import all_groups, default_ignored
from singe_deploy.models import load_pruned
from singe_deploy.plan import Planner, apply_plan
from singe_deploy.prune import Schedule

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


def test_the_planner_removes_whole_heads_exactly_as_masking_them():
    torch.manual_seed(0)
    dense = split_heads(_tiny_vit()).eval()
    x = torch.randn(2, 3, 32, 32)
    model, masked = [copy.deepcopy(dense) for _ in range(2)]
    graph, groups = all_groups(model, torch.zeros(SHAPE), default_ignored(model))
    names = {id(m): n for n, m in model.named_modules()}
    scores = [torch.arange(len(g[0].idxs), dtype=torch.float64) for g in groups]  # head 0 scores lowest
    planner = Planner(model, groups, scores, {}, Schedule(round_to=1), names)
    qkv = "encoder.layers.encoder_layer_0.self_attention.qkv"
    i = next(k for k, (name, *_rest) in enumerate(planner.entries) if name == qkv)
    counts = [0] * len(planner.entries)
    counts[i] = 1
    apply_plan(model, planner.removals(counts), torch.zeros(SHAPE), graph)
    first, second = (b.self_attention for b in model.encoder.layers)
    assert (first.num_heads, first.head_dim, first.attn_dim, second.num_heads) == (3, 16, 48, 4)
    with torch.no_grad():
        masked.encoder.layers[0].self_attention.out_proj.weight[:, :16] = 0  # head 0 (16 dims)
    assert torch.allclose(model.eval()(x), masked(x), atol=1e-5)


def test_a_torchvision_vit_prunes_heads_and_embedding_and_reloads(tmp_path, monkeypatch):
    import singe_deploy.models as models
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
