"""New, smaller modules built from kept rows and columns: the pieces the attention and MLP views
(`attention.py`, `mlp.py`) cut a family's modules with.

Nothing is masked. A pruned block gets new modules holding copies of the kept rows and columns
(fused qkv: q/k/v rows of `qkv` and columns of `proj`; separate q/k/v projections: rows of each;
open_clip `Attention` and `nn.MultiheadAttention`: rows of `in_proj_weight`, columns of `out_proj`,
replaced by an equivalent in-projection attention with fewer heads; MLPs: rows of fc1 / `c_fc`,
columns of fc2 / `c_proj`). The originals are only referenced, never modified.

A norm that spans the whole attention or MLP width (timm `scale_norm`, open_clip `ln_inner` and
`scale_fc`) is sliced too; its statistics then cover the kept channels only, which is part of what
pruning changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError

# ---------------------------------------------------------------- new modules from kept rows / columns


def shell(module: nn.Module) -> nn.Module:
    """A new module of the same class sharing the original's submodules and attributes.

    Its own registries (parameters, modules, hooks) are fresh dicts, so replacing a submodule on
    the shell never reaches the original."""
    new = type(module).__new__(type(module))
    new.__dict__ = {k: (v.copy() if isinstance(v, (dict, set, list)) else v) for k, v in module.__dict__.items()}
    return new


def parameter(like: torch.Tensor, data: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data.detach().contiguous(), requires_grad=like.requires_grad)


def sliced_linear(linear: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new `nn.Linear` with the given output rows / input columns of `linear`."""
    if not isinstance(linear, nn.Linear):
        raise UnsupportedModelError(f"cannot slice {type(linear).__name__}; only nn.Linear projections are supported")
    weight, bias = linear.weight, linear.bias
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
        bias = None if bias is None else bias.index_select(0, rows.to(bias.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = parameter(linear.weight, weight)
    if bias is not None:
        new.bias = parameter(linear.bias, bias)
    new.train(linear.training)
    return new


def sliced_norm(norm: nn.Module, channels: torch.Tensor) -> nn.Module:
    """A LayerNorm over the kept channels only (Identity passes through)."""
    if isinstance(norm, nn.Identity):
        return norm
    if not isinstance(norm, nn.LayerNorm):
        raise UnsupportedModelError(f"cannot slice a {type(norm).__name__} over pruned channels")
    new = shell(norm)
    new.normalized_shape = (len(channels),)
    if norm.weight is not None:
        new.weight = parameter(norm.weight, norm.weight.index_select(0, channels.to(norm.weight.device)))
    if norm.bias is not None:
        new.bias = parameter(norm.bias, norm.bias.index_select(0, channels.to(norm.bias.device)))
    return new


def head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices of the given heads inside one of q, k, v (or the concatenated head outputs)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


# ---------------------------------------------------------------- attention stand-ins


class InProjAttention(nn.Module):
    """Self-attention with a fused in-projection and any number of heads (open_clip layout).

    Built from the view (`attention.InProjAttentionView`) of an open_clip `Attention` or an
    `nn.MultiheadAttention`, keeping the heads given (all of them shares the source's parameters; a
    subset copies the kept rows and columns). It exposes
    the attributes the token patches read (`in_proj_weight`, `in_proj_bias`, `out_proj`,
    `num_heads`, `batch_first`, ...), so token strategies run on a pruned block unchanged."""

    batch_first = True

    def __init__(self, view, heads: torch.Tensor | None = None):
        super().__init__()
        source = view.module
        w = view.weights()
        self.source_heads, self.head_dim = w.num_heads, w.head_dim
        share = heads is None
        heads = torch.arange(w.num_heads) if share else heads.cpu()
        self.num_heads = len(heads)
        self.register_buffer("head_index", heads.clone(), persistent=False)
        ch = head_channels(heads, w.head_dim)
        width = w.num_heads * w.head_dim
        rows = torch.cat([ch, ch + width, ch + 2 * width])
        if share:
            self.in_proj_weight, self.in_proj_bias, self.out_proj = source.in_proj_weight, source.in_proj_bias, source.out_proj
        else:
            weight = source.in_proj_weight
            self.in_proj_weight = parameter(weight, weight.index_select(0, rows.to(weight.device)))
            bias = source.in_proj_bias
            self.in_proj_bias = None if bias is None else parameter(bias, bias.index_select(0, rows.to(bias.device)))
            self.out_proj = sliced_linear(source.out_proj, cols=ch)
        self.ln_q = getattr(source, "ln_q", nn.Identity())
        self.ln_k = getattr(source, "ln_k", nn.Identity())
        self.logit_scale = self._per_head(getattr(source, "logit_scale", None), heads, share)
        self.logit_scale_max = getattr(source, "logit_scale_max", None)
        self.head_scale = self._per_head(getattr(source, "head_scale", None), heads, share)
        inner = getattr(source, "ln_inner", nn.Identity())
        self.ln_inner = inner if share else sliced_norm(inner, ch)
        drop = getattr(source, "attn_drop", None)
        self.attn_drop = drop if isinstance(drop, nn.Dropout) else nn.Dropout(float(getattr(source, "dropout", 0.0)))
        self.out_drop = getattr(source, "out_drop", nn.Identity())
        self.train(source.training)

    @staticmethod
    def _per_head(value, heads, share):
        if value is None or share:
            return value
        return parameter(value, value.index_select(0, heads.to(value.device)))

    def _mask(self, attn_mask, key_padding_mask, B, L, S, dtype):
        bias = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(attn_mask, float("-inf"))
            attn_mask = attn_mask.to(dtype)
            if attn_mask.ndim == 3:  # (B * source heads, L, S): keep the rows of the kept heads
                attn_mask = attn_mask.reshape(B, self.source_heads, L, S).index_select(1, self.head_index)
            bias = attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask
            if pad.dtype == torch.bool:
                pad = torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill(pad, float("-inf"))
            pad = pad.to(dtype)[:, None, None, :]
            bias = pad if bias is None else bias + pad
        return bias

    def attend(self, q_x, k_x=None, v_x=None, attn_mask=None, key_padding_mask=None):
        B, L, _ = q_x.shape
        if (k_x is None or k_x is q_x) and (v_x is None or v_x is q_x):
            q, k, v = F.linear(q_x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w, b = self.in_proj_weight.chunk(3), (self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3)
            k_x = q_x if k_x is None else k_x
            v_x = k_x if v_x is None else v_x
            q, k, v = F.linear(q_x, w[0], b[0]), F.linear(k_x, w[1], b[1]), F.linear(v_x, w[2], b[2])
        S = k.shape[1]
        q, k, v = (t.reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        bias = self._mask(attn_mask, key_padding_mask, B, L, S, q.dtype)
        dropout = self.attn_drop.p if self.training else 0.0
        if self.logit_scale is not None:  # scaled cosine attention
            scale = torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
            logits = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * scale
            if bias is not None:
                logits = logits + bias
            out = F.dropout(logits.softmax(dim=-1), dropout, self.training) @ v
        else:
            q, k = self.ln_q(q), self.ln_k(k)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        if self.head_scale is not None:
            out = out * self.head_scale
        out = out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)
        return self.out_drop(self.out_proj(self.ln_inner(out)))


class PrunedAttention(InProjAttention):
    """Stands in for open_clip's `Attention`: `forward(x, attn_mask=None)` returns a tensor."""

    def forward(self, x, attn_mask=None):
        return self.attend(x, attn_mask=attn_mask)


class PrunedMultiheadAttention(InProjAttention):
    """Stands in for `nn.MultiheadAttention` (batch first): returns `(output, None)`."""

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            raise ValueError("a head-pruned attention does not return attention weights; call it with need_weights=False")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal needs an explicit attn_mask on a head-pruned attention")
        return self.attend(query, key, value, attn_mask, key_padding_mask), None
