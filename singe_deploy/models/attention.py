"""Self-attention whose heads can go whole, in place of torchvision's nn.MultiheadAttention.

nn.MultiheadAttention ties its inner width to the embedding (embed_dim = heads x head size), so a channel of the
embedding can only go in step with one position of every head. `HeadAttention` computes the same function with one
q/k/v Linear and an inner width of its own (`attn_dim`), the layout timm's Attention has, so the planner removes
whole heads (groups.head_layout) and the embedding width prunes freely. Its state dict keeps torchvision's keys
(`in_proj_weight`, `in_proj_bias`, `out_proj.*`), so torchvision checkpoints load into it."""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

_TRACING = [False]  # set while torch-pruning traces (tracing()): per-head biases are kept out of the graph
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
    """Replace the attention of every torchvision ViT encoder block with a HeadAttention, every Swin window
    attention with a WindowAttention and every MaxViT attention with a PartitionAttention (same outputs, same
    state dict keys)."""
    from torchvision.models.maxvit import RelativePositionalMultiHeadAttention
    from torchvision.models.swin_transformer import ShiftedWindowAttention
    from torchvision.models.vision_transformer import EncoderBlock

    replace = ((ShiftedWindowAttention, from_swin), (RelativePositionalMultiHeadAttention, from_maxvit))

    for block in list(model.modules()):
        mha = getattr(block, "self_attention", None)
        if (isinstance(block, EncoderBlock) and isinstance(mha, nn.MultiheadAttention) and mha.batch_first
                and mha._qkv_same_embed_dim and mha.bias_k is None and not mha.add_zero_attn):
            block.self_attention = from_multihead(mha)
        for name, child in block.named_children():
            for kind, convert in replace:
                if isinstance(child, kind):
                    setattr(block, name, convert(child))
    return model


class WindowAttention(nn.Module):
    """torchvision's Swin window attention (V1 and V2) with an inner width of its own, so heads go whole.

    ShiftedWindowAttention(V2) splits q/k/v into num_heads heads of C // num_heads, C the embedding: a head's
    size is tied to the embedding. Here head_dim and attn_dim = num_heads x head_dim are attributes, and the
    per-head tensors (HEAD_TENSORS: the relative position bias, V2's logit scale and bias MLP output) lose a
    head together with its q/k/v rows and output-projection columns. The state dict keys are torchvision's."""

    def __init__(self, dim, window_size, shift_size, num_heads, v2=False, qkv_bias=True, proj_bias=True,
                 attention_dropout=0.0, dropout=0.0):
        super().__init__()
        self.window_size, self.shift_size = list(window_size), list(shift_size)
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.attention_dropout, self.dropout, self.v2 = attention_dropout, dropout, v2
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)
        wh, ww = self.window_size
        self.register_buffer("relative_position_index", _relative_index(wh, ww).flatten())
        if v2:
            self.logit_scale = nn.Parameter(torch.full((num_heads, 1, 1), math.log(10.0)))
            self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(inplace=True),
                                         nn.Linear(512, num_heads, bias=False))
            self.register_buffer("relative_coords_table", _log_coords(wh, ww))
            self.head_tensors = (("logit_scale", 0), ("cpb_mlp.2.weight", 0))
        else:
            self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1), num_heads))
            self.head_tensors = (("relative_position_bias_table", 1),)

    def position_bias(self):
        """(num_heads, N, N): the bias each head adds to its attention logits (N tokens per window)."""
        n = self.window_size[0] * self.window_size[1]
        if self.v2:
            table = self.cpb_mlp(self.relative_coords_table).flatten(0, -2)
        else:
            table = self.relative_position_bias_table
        bias = table[self.relative_position_index].view(n, n, -1).permute(2, 0, 1)
        bias = 16 * torch.sigmoid(bias) if self.v2 else bias
        return _untraced(bias)

    def forward(self, x):
        b, h, w, c = x.shape
        (wh, ww), shift = self.window_size, list(self.shift_size)
        x = F.pad(x, (0, 0, 0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh))
        ph, pw = x.shape[1], x.shape[2]
        shift = [0 if win >= size else s for win, size, s in zip((wh, ww), (ph, pw), shift)]
        if any(shift):
            x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        nw, n = (ph // wh) * (pw // ww), wh * ww
        x = x.view(b, ph // wh, wh, pw // ww, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b * nw, n, c)
        qkv = self.qkv(x)
        if self.v2 and self.qkv.bias is not None:  # V2 has no key bias: take it off again
            qkv = qkv - _untraced(self.qkv.bias) * (torch.arange(qkv.shape[-1], device=x.device) // self.attn_dim == 1)
        q, k, v = qkv.reshape(b * nw, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        bias = self.position_bias().unsqueeze(0)
        if any(shift):  # windows in batch-major order, as the view above lays them out
            bias = bias + _shift_mask((ph, pw), (wh, ww), shift, x).unsqueeze(1).repeat(b, 1, 1, 1)
        scale = None
        if self.v2:
            q = _unit(q) * torch.clamp(_untraced(self.logit_scale), max=math.log(100.0)).exp()
            k, scale = _unit(k), 1.0
        drop = self.attention_dropout if self.training else 0.0
        x = _attend(q, k, v, bias, drop, scale, self.proj)
        x = F.dropout(x, p=self.dropout, training=self.training)
        x = x.view(b, ph // wh, pw // ww, wh, ww, c).permute(0, 1, 3, 2, 4, 5).reshape(b, ph, pw, c)
        if any(shift):
            x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
        return x[:, :h, :w, :].contiguous()


@contextlib.contextmanager
def tracing():
    """While torch-pruning traces a model: it would couple a head's bias (added to the attention logits) to
    channels through the softmax and matmuls, at indices past the bias's width."""
    _TRACING[0] = True
    try:
        yield
    finally:
        _TRACING[0] = False


class PartitionAttention(nn.Module):
    """torchvision's MaxViT attention (RelativePositionalMultiHeadAttention) with an inner width of its own, so
    heads go whole (see WindowAttention). Input (B, G, P, D): G windows or grid cells of P tokens. The state dict
    keys are torchvision's; `qkv` is its `to_qkv`."""

    def __init__(self, feat_dim, head_dim, max_seq_len):
        super().__init__()
        self.num_heads, self.head_dim = feat_dim // head_dim, head_dim
        self.attn_dim = self.num_heads * head_dim
        self.size, self.max_seq_len = math.isqrt(max_seq_len), max_seq_len
        self.scale_factor = feat_dim ** -0.5  # torchvision scales by the embedding width, fixed at build
        self.to_qkv = nn.Linear(feat_dim, 3 * self.attn_dim)
        self.merge = nn.Linear(self.attn_dim, feat_dim)
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * self.size - 1) ** 2, self.num_heads))
        self.register_buffer("relative_position_index", _relative_index(self.size, self.size))
        self.head_tensors = (("relative_position_bias_table", 1),)

    @property
    def qkv(self):
        return self.to_qkv

    def forward(self, x):
        b, g, p, d = x.shape
        x = x.reshape(b * g, p, d)
        q, k, v = self.to_qkv(x).reshape(b * g, p, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        table = self.relative_position_bias_table[self.relative_position_index.flatten()]
        bias = _untraced(table.view(p, p, -1).permute(2, 0, 1).unsqueeze(0))
        return _attend(q, k, v, bias, 0.0, self.scale_factor, self.merge).reshape(b, g, p, -1)


def from_maxvit(attn):
    """A PartitionAttention computing what torchvision's RelativePositionalMultiHeadAttention computes."""
    new = PartitionAttention(attn.to_qkv.in_features, attn.head_dim, attn.max_seq_len)
    new.load_state_dict(attn.state_dict())
    return new.train(attn.training)


def _attend(q, k, v, bias, dropout, scale, out):
    """Attention of (batch, heads, tokens, head_dim) q, k, v with an additive bias, heads merged, then `out`.
    Written out rather than F.scaled_dot_product_attention with a mask, which the ONNX exporter fails on."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    attn = torch.softmax((q * scale) @ k.transpose(-2, -1) + bias, dim=-1)
    x = F.dropout(attn, p=dropout, training=dropout > 0) @ v
    return out(x.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1))


def _untraced(t):
    """t, or t detached while torch-pruning traces: a per-head tensor follows q/k/v's heads (groups.Names.heads)."""
    return t.detach() if _TRACING[0] else t


def _unit(t):
    """F.normalize(t, dim=-1), with the norm out of torch-pruning's trace (it would map channels through it)."""
    return t / _untraced(t.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def _relative_index(wh, ww):
    """(N, N) index into a (2wh-1)(2ww-1)-row table of relative offsets, N = wh x ww tokens."""
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0)
    return (rel[..., 0] + wh - 1) * (2 * ww - 1) + rel[..., 1] + ww - 1


def _log_coords(wh, ww):
    """Swin V2's log-spaced relative coordinates, (1, 2wh-1, 2ww-1, 2), the input of its bias MLP."""
    axes = [torch.arange(-(s - 1), s, dtype=torch.float32) / max(s - 1, 1) * 8 for s in (wh, ww)]
    table = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).unsqueeze(0)
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0


def _shift_mask(padded, window, shift, like):
    """(windows, N, N): -100 between tokens that a cyclic shift brought from different regions, else 0."""
    region = like.new_zeros(padded)
    bounds = [((0, -w), (-w, -s), (-s, None)) for w, s in zip(window, shift)]
    for i, (h0, h1) in enumerate(bounds[0]):
        for j, (w0, w1) in enumerate(bounds[1]):
            region[h0:h1, w0:w1] = 3 * i + j
    (ph, pw), (wh, ww) = padded, window
    region = region.view(ph // wh, wh, pw // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    differs = region.unsqueeze(1) != region.unsqueeze(2)
    return differs.to(like.dtype) * -100.0


def from_swin(attn):
    """A WindowAttention computing what torchvision's ShiftedWindowAttention (or V2) computes."""
    from torchvision.models.swin_transformer import ShiftedWindowAttentionV2

    v2 = isinstance(attn, ShiftedWindowAttentionV2)
    new = WindowAttention(attn.qkv.in_features, attn.window_size, attn.shift_size, attn.num_heads, v2=v2,
                          qkv_bias=attn.qkv.bias is not None, proj_bias=attn.proj.bias is not None,
                          attention_dropout=attn.attention_dropout, dropout=attn.dropout)
    new.load_state_dict(attn.state_dict())
    return new.train(attn.training)
