"""evit: EViT (Liang et al., ICLR 2022), keep the tokens the class token attends to most, fuse the rest.

At each block of `prune_layers` (default 3, 6, 9), after attention, the ceil(keep_rate * P) patch-side
tokens with the highest head-averaged class-token attention are kept. With `fuse` (default True)
one token is appended: the sum of the dropped tokens weighted by their class attention. As in the
authors' code (and the paper's formula) these weights are the class token's softmax attention
taken as they are, not renormalised over the dropped tokens, so the fused token is smaller than an
average. A fused token is an ordinary patch-side token at the next stage (it may be kept, or fused
again). ViT-B/16 with the defaults: 197 / 140 / 100 / 72 tokens enter blocks 0-3 / 4-6 / 7-9 / 10-11.

Differences from the reference, none of which changes a result beyond float rounding: kept tokens stay
in their original order (the reference orders them by attention); the fused token's size is the sum of
the dropped sizes, so a size-weighted average pool counts every patch it absorbed. When fusing would
leave the token count unchanged (exactly one token dropped), the block prunes nothing.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import Selection
from .params import Bool
from .cls_topk import cls_attention
from .prune_once import KEEP_RATE, PRUNE_LAYERS, PruneOnceStrategy


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))


class FusedSelection:
    """Keep the `kept` (B, M) positions in order, then one token made from the `dropped` (B, D) positions.

    `reduce_features` weights the dropped features by `weight` (B, D); `apply(t, mode)` combines the
    dropped rows by `mode` ("sum" or "mean"), which is how sizes and source maps travel."""

    def __init__(self, kept: torch.Tensor, dropped: torch.Tensor, weight: torch.Tensor):
        self.kept, self.dropped, self.weight = kept, dropped, weight

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        rest = _gather(t, self.dropped)
        fused = rest.mean(dim=1, keepdim=True) if mode == "mean" else rest.sum(dim=1, keepdim=True)
        return torch.cat([_gather(t, self.kept), fused], dim=1)

    def reduce_features(self, x, size):
        rest = _gather(x, self.dropped)
        fused = (rest * self.weight[..., None].to(x.dtype)).sum(dim=1, keepdim=True)
        if size is None:
            size = torch.ones_like(x[..., :1])
        return torch.cat([_gather(x, self.kept), fused], dim=1), self.apply(size, "sum")


def evit_reduction(attention: torch.Tensor, n_prefix: int, keep: int, fuse: bool):
    """Plan one EViT step from the class attention (B, N) over every token: keep `keep` patch-side tokens."""
    B, N = attention.shape
    patch_attention = attention[:, n_prefix:]
    top = patch_attention.topk(keep, dim=1).indices
    prefix = torch.arange(n_prefix, device=attention.device).expand(B, n_prefix)
    kept = torch.cat([prefix, top.sort(dim=1).values + n_prefix], dim=1)
    if not fuse:
        return Selection(kept)
    is_kept = torch.zeros_like(top[:, :1]).expand_as(patch_attention).scatter(1, top, torch.ones_like(top))
    # positions of the dropped tokens, ascending: sort puts kept ones (key 1) after dropped ones (key 0)
    dropped = is_kept.argsort(dim=1, stable=True)[:, : N - n_prefix - keep]
    return FusedSelection(kept, dropped + n_prefix, patch_attention.gather(1, dropped))


@register_strategy("evit")
class EViT(PruneOnceStrategy):
    param_spec = {"keep_rate": KEEP_RATE.with_default(0.7), "prune_layers": PRUNE_LAYERS.with_default([3, 6, 9]),
                  "fuse": Bool(True, "add one token, the class-attention-weighted sum of the dropped ones")}
    needs_class_token = True
    budget_params = ()
    compute_knob = "keep_rate"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}
    keep_all_params = {"prune_layers": [1, 2], "keep_rate": 1.0}

    def _check(self):
        self.extra_tokens = 1 if self.params["fuse"] else 0
        self._check_start_layer()

    def reduce(self, layer, x, probe, n_prefix, n_out):
        keep = n_out - n_prefix - self.extra_tokens
        return evit_reduction(cls_attention(probe), n_prefix, keep, self.params["fuse"])
