"""tofu: Token Fusion (Kim et al., WACV 2024), pruning in early blocks, MLERP merging later.

Averaging two tokens is only harmless where a block responds almost linearly to its input; early
blocks do not, so there ToFu drops the matched token instead of averaging it in (pruning). In later
blocks it merges, but with MLERP instead of a plain average: an average of dissimilar vectors is
shorter than any of them, which shifts the feature-norm distribution the next blocks expect, so the
average is rescaled to the largest norm among the merged tokens.

Matching is ToMe's bipartite soft matching on the block's keys averaged over heads, r tokens per
block (an int or a per-block list). Blocks before `merge_start_layer` prune, the others merge; the
default switch, n_layers // 2 + 1 (blocks 0-6 prune and 7-11 merge on a 12-block ViT), is the one of
the authors' timm configuration as reproduced in Westlake-AI/OpenToMe and hchautran/PiToMe.
Merged tokens are unweighted means, as there; token sizes are still counted (for `avg` pooling and
for `prop_attn`, which is off by default because those implementations never apply it).
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import TokenStrategy, bipartite_macs
from .params import Bool, check_r_entries, Int, r_range
from .bipartite import BipartitePlan, cosine_scores, plan_moves


class Fusion:
    """One ToFu step: drop (`prune`) or MLERP-merge the moving A tokens into their B tokens."""

    def __init__(self, plan: BipartitePlan, prune: bool):
        self.plan, self.prune = plan, prune

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        kept, moving, b = self.plan.split(t)
        if not self.prune:
            b = b.scatter_reduce(1, self.plan.index(t.shape[-1]), moving, reduce=mode)
        return self.plan.join(kept, b)

    def reduce_features(self, x, size):
        if size is None:
            size = torch.ones_like(x[..., :1])
        new_size = self.apply(size, "sum")
        if self.prune:
            return self.apply(x), new_size
        kept, moving, b = self.plan.split(x)
        return self.plan.join(kept, mlerp(b, moving, self.plan.into_b)), new_size


def mlerp(b: torch.Tensor, moving: torch.Tensor, into_b: torch.Tensor) -> torch.Tensor:
    """Each B token and the tokens moving into it: their mean, rescaled to the largest of their norms."""
    C = b.shape[-1]
    mean = b.scatter_reduce(1, into_b.expand(-1, -1, C), moving, reduce="mean")
    largest = b.norm(dim=-1).scatter_reduce(1, into_b[..., 0], moving.norm(dim=-1), reduce="amax")
    merged = mean / mean.norm(dim=-1, keepdim=True) * largest[..., None]
    into = into_b[..., 0]
    received = torch.zeros_like(b[..., 0]).scatter_add(1, into, torch.ones_like(into, dtype=b.dtype)) > 0
    return torch.where(received[..., None], merged, b)


@register_strategy("tofu")
class ToFu(TokenStrategy):
    param_spec = {
        "r": Int(8, "tokens pruned or merged in each block", low=0, per_block=True),
        "merge_start_layer": Int(None, "first block that merges (earlier ones prune); None: n_layers // 2 + 1",
                                 low=0, optional=True),
        "prop_attn": Bool(False, "proportional attention (log of token sizes added to the logits)"),
    }
    example_params = {"r": 6, "merge_start_layer": 2}
    keep_all_params = {"r": 0}
    compute_knob = "r"

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return r_range(knob, patches) or super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        r, start = self.params["r"], self.params["merge_start_layer"]
        check_r_entries(r, n_layers, self.name)
        if start is not None and start > n_layers:
            raise ValueError(f"{self.name}: merge_start_layer={start} is out of range [0, {n_layers}] for a {n_layers}-block model")

    def r_at(self, layer: int) -> int:
        r = self.params["r"]
        return (r[layer] if layer < len(r) else 0) if isinstance(r, list) else r

    def merges_at(self, layer: int, n_layers: int) -> bool:
        start = self.params["merge_start_layer"]
        return layer >= (n_layers // 2 + 1 if start is None else start)

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        self._n_layers = n_layers
        return plan_moves(self.params["r"], self.r_at(layer), layer, n_tokens, n_prefix)

    def reduce(self, layer, x, probe, n_prefix, n_out):
        with torch.no_grad():
            plan = BipartitePlan(cosine_scores(probe.k.mean(dim=1), n_prefix), int(x.shape[1]) - n_out, n_prefix)
        return Fusion(plan, prune=not self.merges_at(layer, self._n_layers))

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        return bipartite_macs(n_tokens, n_prefix, dims.head_dim)

    def uses_size_bias(self):
        return self.params["prop_attn"]

