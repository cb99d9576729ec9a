"""Attention that also exposes q and k, for the blocks where a token strategy needs them.

One function per attention layout, selected by duck typing so that sliced (head-pruned) modules
with the same attributes work too:
- timm `Attention`: fused `qkv` Linear, optional `q_norm`/`k_norm`, `norm`, `gate`, `proj`;
- in-projection attention: `nn.MultiheadAttention` and open_clip's `Attention` (`in_proj_weight`,
  `out_proj`, optional `ln_q`/`ln_k`, scaled-cosine `logit_scale`, `head_scale`, `ln_inner`).
Both run fused SDPA unless the module uses scaled-cosine logits. `bias` is an additive (B, 1, 1, N)
key bias (ToMe's log-size term) or None.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from ..strategies.base import AttentionProbe


def attention_with_probe(attn, h: torch.Tensor, bias: torch.Tensor | None):
    if hasattr(attn, "qkv"):
        return _timm_attention(attn, h, bias)
    if hasattr(attn, "in_proj_weight"):
        return _in_proj_attention(attn, h, bias)
    raise UnsupportedModelError(f"no token-reduction support for attention module {type(attn).__name__}")


def _dropout_p(attn) -> float:
    drop = getattr(attn, "attn_drop", None)
    p = drop.p if isinstance(drop, torch.nn.Dropout) else float(getattr(attn, "dropout", 0.0) or 0.0)
    return p if attn.training else 0.0


def _scaled_logits(scale: float, bias):
    def logit_fn(q, k):
        logits = (q * scale) @ k.transpose(-2, -1)
        return logits if bias is None else logits + bias

    return logit_fn


def _timm_attention(attn, h, bias):
    B, N, _ = h.shape
    heads = attn.num_heads
    head_dim = getattr(attn, "head_dim", None) or attn.qkv.out_features // (3 * heads)
    gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = attn.qkv(h).reshape(B, N, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    if bias is not None:
        bias = bias.to(q.dtype)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=_dropout_p(attn))
    out = out.transpose(1, 2).reshape(B, N, heads * head_dim)
    out = attn.norm(out) if hasattr(attn, "norm") else out
    if gate is not None:
        out = out * gate
    out = attn.proj_drop(attn.proj(out))
    return out, AttentionProbe(q, k, _scaled_logits(head_dim ** -0.5, bias))


def _in_proj_attention(attn, h, bias):
    if getattr(attn, "bias_k", None) is not None or getattr(attn, "add_zero_attn", False):
        raise UnsupportedModelError("nn.MultiheadAttention with bias_k/add_zero_attn is not supported")
    if getattr(attn, "batch_first", True) is False:
        raise UnsupportedModelError("sequence-first nn.MultiheadAttention is not supported; use batch_first=True")
    B, N, _ = h.shape
    heads = attn.num_heads
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(B, N, heads, -1).transpose(1, 2) for t in (q, k, v))
    head_dim = q.shape[-1]
    if bias is not None:
        bias = bias.to(q.dtype)
    logit_scale = getattr(attn, "logit_scale", None)
    if logit_scale is not None:  # scaled cosine attention (open_clip `scale_cosine_attn`)
        scale = torch.clamp(logit_scale, max=attn.logit_scale_max).exp()
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)

        def logit_fn(qq, kk):
            logits = (qq @ kk.transpose(-2, -1)) * scale
            return logits if bias is None else logits + bias

        weights = logit_fn(q, k).softmax(dim=-1)
        weights = F.dropout(weights, _dropout_p(attn))
        out = weights @ v
    else:
        if hasattr(attn, "ln_q"):
            q, k = attn.ln_q(q), attn.ln_k(k)
        logit_fn = _scaled_logits(head_dim ** -0.5, bias)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=_dropout_p(attn))
    if getattr(attn, "head_scale", None) is not None:
        out = out * attn.head_scale
    out = out.transpose(1, 2).reshape(B, N, heads * head_dim)
    if hasattr(attn, "ln_inner"):
        out = attn.ln_inner(out)
    out = attn.out_proj(out)
    if hasattr(attn, "out_drop"):
        out = attn.out_drop(out)
    return out, AttentionProbe(q, k, logit_fn)
