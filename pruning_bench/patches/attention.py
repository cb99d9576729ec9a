"""Attention that also exposes q and k, for the blocks where a token strategy needs them.

How q, k and v are projected, scaled and combined is the family's attention view
(`pruning_bench.families.attention`); this module only hands the result to the strategy as an
`AttentionProbe`. `bias` is an additive (B, 1, 1, N) key bias (ToMe's log-size term) or None;
`rotate` applies a rotary embedding to the patch rows of q and k (the first `n_prefix` rows are
never rotated), or is None.
"""
from __future__ import annotations

import torch

from ..families import AttentionView
from ..strategies.base import AttentionProbe


def attention_with_probe(view: AttentionView, h: torch.Tensor, bias: torch.Tensor | None, rotate=None, n_prefix: int = 0):
    """(attention output, probe of its q, k and v) of the attention `view` on normed tokens `h`."""
    done = view.attend(h, bias, rotate, n_prefix)
    return done.out, AttentionProbe(done.q, done.k, done.logit_fn, done.v)


def attention_probe(view: AttentionView, h: torch.Tensor, bias: torch.Tensor | None, rotate=None,
                    n_prefix: int = 0) -> AttentionProbe:
    """q and k of the attention `view` on `h`, for a strategy deciding before the output is formed (MCTF);
    the output then comes from `view.from_weights`."""
    done = view.probe(h, bias, rotate, n_prefix)
    return AttentionProbe(done.q, done.k, done.logit_fn)


def reshaped_attention_with_probe(view: AttentionView, h: torch.Tensor, bias: torch.Tensor | None, reshape,
                                  rotate=None, n_prefix: int = 0):
    """(attention output, probe) where the softmax weights are first passed through `reshape` (B, heads, N, N);
    the probe's `attention_map()` is the reshaped weights, the ones the output was formed with."""
    probe = attention_probe(view, h, bias, rotate, n_prefix)
    probe.weights = reshape(probe.attention_map())
    return view.from_weights(h, probe.weights), probe
