"""Attention that also exposes q and k, for the blocks where a token strategy needs them.

One function per attention layout, selected by duck typing so that sliced (head-pruned) modules
with the same attributes work too:
- fused `qkv` Linear (timm `Attention`, timm `EvaAttention` with its separate `q_bias`/`v_bias`),
  optional `q_norm`/`k_norm`, `norm`, `gate`, `proj`;
- separate `q_proj`/`k_proj`/`v_proj` (timm `EvaAttention` unfused, transformers CLIP / SigLIP
  attention), output through `proj` or `out_proj`;
- in-projection attention: `nn.MultiheadAttention` and open_clip's `Attention` (`in_proj_weight`,
  `out_proj`, optional `ln_q`/`ln_k`, scaled-cosine `logit_scale`, `head_scale`, `ln_inner`).
All run fused SDPA unless the module uses scaled-cosine logits. `bias` is an additive (B, 1, 1, N)
key bias (ToMe's log-size term) or None; `rotate` applies a rotary embedding to the patch rows of q
and k (the first `n_prefix` rows are never rotated), or is None.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from ..strategies.base import AttentionProbe


def attention_with_probe(attn, h: torch.Tensor, bias: torch.Tensor | None, rotate=None, n_prefix: int = 0):
    if getattr(attn, "qkv", None) is not None or getattr(attn, "q_proj", None) is not None:
        return _qkv_attention(attn, h, bias, rotate, n_prefix)
    if rotate is not None:
        raise UnsupportedModelError(f"rotary embeddings with attention module {type(attn).__name__} are not supported")
    if hasattr(attn, "in_proj_weight"):
        return _in_proj_attention(attn, h, bias)
    raise UnsupportedModelError(f"no token-reduction support for attention module {type(attn).__name__}")


def _rotated(t: torch.Tensor, rotate, n_prefix: int) -> torch.Tensor:
    if rotate is None:
        return t
    return torch.cat([t[:, :, :n_prefix], rotate(t[:, :, n_prefix:])], dim=2).type_as(t)


def _project_qkv(attn, h, heads):
    """q, k, v as (B, heads, N, head_dim) from a fused or a separate in-projection."""
    B, N, _ = h.shape
    if getattr(attn, "qkv", None) is not None:
        q_bias = getattr(attn, "q_bias", None)
        if q_bias is not None:  # timm Eva: bias kept apart from the fused weight, k's bias is zero
            qkv = F.linear(h, attn.qkv.weight, torch.cat((q_bias, attn.k_bias, attn.v_bias)))
        else:
            qkv = attn.qkv(h)
        return qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    return tuple(p(h).reshape(B, N, heads, -1).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))


def _dropout_p(attn) -> float:
    drop = getattr(attn, "attn_drop", None)
    p = drop.p if isinstance(drop, torch.nn.Dropout) else float(getattr(attn, "dropout", 0.0) or 0.0)
    return p if attn.training else 0.0


def _scaled_logits(scale: float, bias):
    def logit_fn(q, k):
        logits = (q * scale) @ k.transpose(-2, -1)
        return logits if bias is None else logits + bias

    return logit_fn


def _qkv_attention(attn, h, bias, rotate, n_prefix):
    B, N, _ = h.shape
    heads = attn.num_heads
    gate = attn.gate(h).sigmoid() if getattr(attn, "gate", None) is not None else None
    q, k, v = _project_qkv(attn, h, heads)
    head_dim = q.shape[-1]
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = _rotated(q, rotate, n_prefix), _rotated(k, rotate, n_prefix)
    if bias is not None:
        bias = bias.to(q.dtype)
    scale = float(getattr(attn, "scale", head_dim ** -0.5))
    # SDPA's own default scale unless the module uses another: the same rounding as the module's forward
    custom = None if scale == head_dim ** -0.5 else scale
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=_dropout_p(attn), scale=custom)
    out = out.transpose(1, 2).reshape(B, N, heads * head_dim)
    out = attn.norm(out) if getattr(attn, "norm", None) is not None else out
    if gate is not None:
        out = out * gate
    proj = attn.proj if getattr(attn, "proj", None) is not None else attn.out_proj
    out = proj(out)
    if getattr(attn, "proj_drop", None) is not None:
        out = attn.proj_drop(out)
    return out, AttentionProbe(q, k, _scaled_logits(scale, bias), v)


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
    return out, AttentionProbe(q, k, logit_fn, v)
