"""Self-attention whose heads can go whole, in place of torchvision's nn.MultiheadAttention.

nn.MultiheadAttention ties its inner width to the embedding (embed_dim = heads x head size), so a channel of the
embedding can only go in step with one position of every head. `HeadAttention` computes the same function with one
q/k/v Linear and an inner width of its own (`attn_dim`), the layout timm's Attention has, so the planner removes
whole heads (groups.head_layout) and the embedding width prunes freely. Its state dict keeps torchvision's keys
(`in_proj_weight`, `in_proj_bias`, `out_proj.*`), so torchvision checkpoints load into it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

RENAMES = (("qkv.weight", "in_proj_weight"), ("qkv.bias", "in_proj_bias"))


class HeadAttention(nn.Module):
    """Batch-first self-attention: num_heads heads of head_dim, attn_dim = num_heads x head_dim."""

    def __init__(self, embed_dim, num_heads, bias=True, dropout=0.0):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, embed_dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.dropout = dropout
        self.qkv = nn.Linear(embed_dim, 3 * self.attn_dim, bias=bias)
        self.out_proj = nn.Linear(self.attn_dim, embed_dim, bias=bias)
        self._register_state_dict_hook(_torchvision_keys)
        self.register_load_state_dict_pre_hook(_own_keys)

    def forward(self, query, key=None, value=None, need_weights=False, **unused):
        """nn.MultiheadAttention's call for self-attention (key and value are the query); returns (output, None)."""
        b, n, _ = query.shape
        q, k, v = self.qkv(query).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(x.transpose(1, 2).reshape(b, n, self.attn_dim)), None


def _torchvision_keys(module, state, prefix, local_metadata):
    for ours, theirs in RENAMES:
        if prefix + ours in state:
            state[prefix + theirs] = state.pop(prefix + ours)


def _own_keys(module, state, prefix, *args):
    for ours, theirs in RENAMES:
        if prefix + theirs in state:
            state[prefix + ours] = state.pop(prefix + theirs)


def from_multihead(mha):
    """A HeadAttention computing what a batch-first, self-attention nn.MultiheadAttention computes."""
    bias = mha.in_proj_bias is not None
    new = HeadAttention(mha.embed_dim, mha.num_heads, bias=bias, dropout=mha.dropout)
    with torch.no_grad():
        new.qkv.weight.copy_(mha.in_proj_weight)
        new.out_proj.weight.copy_(mha.out_proj.weight)
        if bias:
            new.qkv.bias.copy_(mha.in_proj_bias)
            new.out_proj.bias.copy_(mha.out_proj.bias)
    return new.train(mha.training)


def split_heads(model):
    """Replace the attention of every torchvision ViT encoder block with a HeadAttention (same outputs)."""
    from torchvision.models.vision_transformer import EncoderBlock

    for block in model.modules():
        mha = getattr(block, "self_attention", None)
        if (isinstance(block, EncoderBlock) and isinstance(mha, nn.MultiheadAttention) and mha.batch_first
                and mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn):
            block.self_attention = from_multihead(mha)
    return model
