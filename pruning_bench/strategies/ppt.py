"""ppt: token Pruning and Pooling (Wu et al., 2023, "PPT: Token Pruning and Pooling for Efficient Vision
Transformers"; reference xjwu1024/PPT `ppt_deit.py`), training-free, prune or pool chosen per image.

In each block of `pp_loc_list` (default 3, 6, 9), after the attention residual and before the MLP (the
reference's `pp_block_adaptive`: the `attention` placement), every patch-side token gets the
significance score (class-token attention summed over heads) x (norm of its value vector over all heads),
normalised to sum to 1 over the patch-side tokens. An image whose scores vary little (unbiased variance
below `threshold`: attention spread evenly, tokens redundant) is *pooled*: ToMe's bipartite soft
matching on the keys (mean over heads) merges r tokens by a size-weighted average. Any other image is
*pruned*: its r lowest-scoring tokens are dropped, and the rest ordered by score (highest first, prefix
tokens at the front), as the reference orders them. Either way r tokens leave, so every image keeps the
same count. With `prop_attn` (default True, as the reference's evaluation) attention adds log(size)
once tokens have merged. Defaults are the authors' evaluation of DeiT-S (`--r_tokens 50 --pp_loc_list
3 6 9 --threshold 7e-5`); r is capped at (N - prefix) // 2 like the reference's (N - 1) // 2.

Departures: every prefix token (class token, registers, distillation token) is kept where the reference
protects only the class token from pruning; both the merge and the pruning plans are computed for every
image and the choice applied with `torch.where` (no sub-batches), which costs the merge's similarity
matrix for pruned images too (counted in `decision_macs`).
"""
from __future__ import annotations

import warnings

import torch

from ..registry import register_strategy
from .base import AttentionProbe, Merge, TokenStrategy, bipartite_macs
from .params import Blocks, Bool, check_layers_fit, Float, Int, r_range
from .tome import bipartite_soft_matching

PREFIX_SCORE = 2.0  # above any normalised score: the reference's way of keeping the class token


def significance(probe: AttentionProbe, n_prefix: int) -> torch.Tensor:
    """(B, P) normalised class-attention x value-norm scores of the patch-side tokens (PPT's, from ATS)."""
    logits = probe.logit_fn(probe.q[:, :, :1], probe.k)
    attention = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)[:, :, 0].sum(dim=1)
    B, H, N, D = probe.v.shape
    value_norms = probe.v.transpose(1, 2).reshape(B, N, H * D).norm(dim=-1).to(attention.dtype)
    score = (attention * value_norms)[:, n_prefix:]
    return score / score.sum(dim=1, keepdim=True)


def _gather(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))


class PoolOrPrune:
    """Per image, a ToMe merge (`pool` True) or keeping `kept` (B, N - r) positions: both give N - r tokens."""

    def __init__(self, pool: torch.Tensor, merge: Merge, kept: torch.Tensor):
        self.pool, self.merge, self.kept = pool[:, None, None], merge, kept

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        return torch.where(self.pool, self.merge.apply(t, mode), _gather(t, self.kept))

    def reduce_features(self, x, size):
        if size is None:
            size = torch.ones_like(x[..., :1])
        pooled, pooled_size = self.merge.reduce_features(x, size)
        return (torch.where(self.pool, pooled, _gather(x, self.kept)),
                torch.where(self.pool, pooled_size, _gather(size, self.kept)))


def ppt_reduction(score: torch.Tensor, metric: torch.Tensor, n_prefix: int, r: int, threshold: float) -> PoolOrPrune:
    """Plan one PPT step from the patch-side scores (B, P) and the matching metric (B, N, C)."""
    pool = score.var(dim=1) < threshold
    prefix = torch.full_like(score[:, :n_prefix], PREFIX_SCORE)
    order = torch.cat([prefix, score], dim=1).sort(dim=1, descending=True, stable=True).indices
    kept = order[:, : metric.shape[1] - r]
    return PoolOrPrune(pool, bipartite_soft_matching(metric, r, n_prefix), kept)


@register_strategy("ppt")
class PPT(TokenStrategy):
    param_spec = {
        "r": Int(50, "tokens removed in each block of pp_loc_list", low=0),
        "pp_loc_list": Blocks([3, 6, 9], "the blocks that prune or pool"),
        "threshold": Float(7e-5, "an image whose score variance is below it is pooled, else pruned", low=0.0,
                           high=float("inf")),
        "prop_attn": Bool(True, "proportional attention (log of token sizes added to the logits)"),
    }
    needs_class_token = True
    compute_knob = "r"
    example_params = {"r": 8, "pp_loc_list": [1, 2], "threshold": 2e-4}
    keep_all_params = {"r": 0, "pp_loc_list": [1, 2]}

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return r_range(knob, patches) or super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        layers = self.params["pp_loc_list"]
        check_layers_fit("pp_loc_list", layers, n_layers, self.name)
        if self.params["r"] == 0:
            warnings.warn(f"{self.name}: r=0 removes nothing; the model runs unchanged", UserWarning, stacklevel=4)

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        r = self.params["r"]
        if r == 0 or layer not in self.params["pp_loc_list"]:
            return n_tokens, None
        limit = (n_tokens - n_prefix) // 2
        if r > limit:
            return n_tokens - limit, f"r={r} at block {layer} exceeds the {limit} tokens one step can remove; clamped to {limit}"
        return n_tokens - r, None

    def reduce(self, layer, x, probe, n_prefix, n_out):
        return ppt_reduction(significance(probe, n_prefix), probe.k.mean(dim=1), n_prefix,
                             int(x.shape[1]) - n_out, self.params["threshold"])

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        # the class token's attention logits per head, and the merge's A-B similarity (made for every image)
        return n_tokens * dims.attn_dim + bipartite_macs(n_tokens, n_prefix, dims.head_dim)

    def uses_size_bias(self):
        return self.params["prop_attn"]
