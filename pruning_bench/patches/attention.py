"""Attention that also exposes q and k, for the blocks where a token strategy needs them.

How q, k and v are projected, scaled and combined is the family's attention view
(`pruning_bench.families.attention`); this module only hands the result to the strategy as an
`AttentionProbe`. `bias` is an additive (B, 1, 1, N) key bias (ToMe's log-size term) or None;
`rotate` applies a rotary embedding to the patch rows of q and k (the first `n_prefix` rows are
never rotated), or is None.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedModelError
from ..families import AttentionView
from ..families.attention import QkvAttentionView, _dropout_p, _rotated, _scaled_logits
from ..strategies.base import AttentionProbe


def attention_with_probe(view: AttentionView, h: torch.Tensor, bias: torch.Tensor | None, rotate=None, n_prefix: int = 0):
    """(attention output, probe of its q, k and v) of the attention `view` on normed tokens `h`."""
    done = view.attend(h, bias, rotate, n_prefix)
    return done.out, AttentionProbe(done.q, done.k, done.logit_fn, done.v)


def reshaped_attention_with_probe(view: AttentionView, h: torch.Tensor, bias: torch.Tensor | None, reshape,
                                  rotate=None, n_prefix: int = 0):
    """(attention output, probe) where the softmax weights are first passed through `reshape` (B, heads, N, N);
    the probe's `attention_map()` is the reshaped weights, the ones the output was formed with."""
    probe = attention_probe(view, h, bias, rotate, n_prefix)
    probe.weights = reshape(probe.attention_map())
    return attention_from_weights(view, h, probe.weights), probe


# ---------------------------------------------------------------- attention split at its softmax weights
# The projections and output follow the family's attention view (the names it declares).
# For a strategy that decides from a block's attention map before the block's output is formed (MCTF's
# one-step-ahead attention): the probe computes q and k only; the output is then formed from given
# softmax weights and the values of (possibly merged) tokens.


def _in_proj(view) -> bool:
    return not isinstance(view, QkvAttentionView)


def _projection_rows(view, h, which: int) -> torch.Tensor:
    """Projection `which` (0 q, 1 k, 2 v) of `h` (B, N, d) as (B, heads, N, head_dim), through the view's layout."""
    B, N, _ = h.shape
    attn = view.module
    if not _in_proj(view) and not view.qkv:
        out = getattr(attn, view.qkv_names[which])(h)
    else:
        fused = getattr(attn, view.qkv) if not _in_proj(view) else None
        weight = fused.weight if fused is not None else attn.in_proj_weight
        if fused is not None and getattr(attn, "q_bias", None) is not None:  # timm Eva
            bias = torch.cat((attn.q_bias, attn.k_bias, attn.v_bias))
        else:
            bias = fused.bias if fused is not None else attn.in_proj_bias
        rows = weight.shape[0] // 3
        part = slice(which * rows, (which + 1) * rows)
        out = F.linear(h, weight[part], None if bias is None else bias[part])
    return out.reshape(B, N, view.num_heads, -1).transpose(1, 2)


def attention_probe(view: AttentionView, h: torch.Tensor, bias: torch.Tensor | None, rotate=None,
                    n_prefix: int = 0) -> AttentionProbe:
    """q and k of the attention `view` on `h` (the values and the output are left to `attention_from_weights`)."""
    attn, in_proj = view.module, _in_proj(view)
    if in_proj and rotate is not None:
        raise UnsupportedModelError(f"rotary embeddings with attention module {type(attn).__name__} are not supported")
    q, k = _projection_rows(view, h, 0), _projection_rows(view, h, 1)
    if bias is not None:
        bias = bias.to(q.dtype)
    head_dim = q.shape[-1]
    if in_proj and getattr(attn, "logit_scale", None) is not None:
        scale = torch.clamp(attn.logit_scale, max=attn.logit_scale_max).exp()
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)

        def logit_fn(qq, kk):
            logits = (qq @ kk.transpose(-2, -1)) * scale
            return logits if bias is None else logits + bias

        return AttentionProbe(q, k, logit_fn)
    if in_proj:
        if hasattr(attn, "ln_q"):
            q, k = attn.ln_q(q), attn.ln_k(k)
        return AttentionProbe(q, k, _scaled_logits(head_dim ** -0.5, bias))
    if getattr(attn, "q_norm", None) is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = _rotated(q, rotate, n_prefix), _rotated(k, rotate, n_prefix)
    return AttentionProbe(q, k, _scaled_logits(float(getattr(attn, view.scale_attr, head_dim ** -0.5)), bias))


def attention_from_weights(view: AttentionView, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The output of the attention `view` for tokens `h` (B, N, d) given its softmax weights (B, heads, N, N)."""
    B, N, _ = h.shape
    attn = view.module
    v = _projection_rows(view, h, 2)
    if _in_proj(view):
        drop = getattr(attn, "attn_drop", None)
        drop = drop if isinstance(drop, torch.nn.Dropout) else getattr(attn, "dropout", 0.0)
    else:
        drop = getattr(attn, view.dropout_attr, None)
    out = F.dropout(weights.to(v.dtype), _dropout_p(attn, drop)) @ v
    if _in_proj(view):
        if getattr(attn, "head_scale", None) is not None:
            out = out * attn.head_scale
        out = out.transpose(1, 2).reshape(B, N, -1)
        if hasattr(attn, "ln_inner"):
            out = attn.ln_inner(out)
        out = view.out_linear()(out)
        return attn.out_drop(out) if hasattr(attn, "out_drop") else out
    out = out.transpose(1, 2).reshape(B, N, -1)
    out = attn.norm(out) if getattr(attn, "norm", None) is not None else out
    if getattr(attn, "gate", None) is not None:
        out = out * attn.gate(h).sigmoid()
    out = view.out_linear()(out)
    return attn.proj_drop(out) if getattr(attn, "proj_drop", None) is not None else out
