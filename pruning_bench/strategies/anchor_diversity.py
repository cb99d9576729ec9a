"""anchor_diversity: keep the class token, k anchors, and the m tokens that best mix importance and diversity.

1. Anchors: the k patch tokens the class token attends to most (head-averaged softmax(q_cls K^T / sqrt(d))).
2. Importance I_i: mean over anchors j of the attention between token i and anchor j. The notes'
   formula, mean_j Attn(x_i, x_j), reads two ways, so both are offered (`importance_direction`):
   - "anchor_to_token" (default): the attention anchor j pays to token i (anchors are the queries, so
     only k rows of attention are computed, never the N x N map);
   - "token_to_anchor": the attention token i pays to anchor j (every token is a query: one N x N map
     in the pruning block, about 0.2% more MACs on ViT-B/16).
3. Diversity D_i = 1 - max_j cos(x_i, x_j) over anchors j, on the block's tokens after attention.
4. Score S_i = alpha * I_i + (1 - alpha) * D_i, top-m among the remaining patch tokens.

Scale: attention rows sum to one, so I_i is of order 1/N while D_i spans [0, 2]. Both are min-max
normalised to [0, 1] over each image's candidate tokens before mixing, so alpha weighs ranks of
comparable spread rather than raw units. Kept tokens stay in their original order.

Multi-stage form (`prune_layers` + `keep_rate`): each listed block keeps ceil(keep_rate * P) patch
tokens, of which min(k_anchors, that budget) are anchors and the rest the top-m; `top_m` and
`start_layer` then do not apply (giving them is an error), `k_anchors` still does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import register_strategy
from .base import AttentionProbe
from .params import Choice, Float, Int
from .cls_topk import topk_by_cls_attention
from .prune_once import MULTI_STAGE, START_LAYER, PruneOnceStrategy


def _minmax(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rescale each row to [0, 1] over the positions where `mask` is True."""
    low = values.masked_fill(~mask, float("inf")).amin(dim=1, keepdim=True)
    high = values.masked_fill(~mask, float("-inf")).amax(dim=1, keepdim=True)
    return (values - low) / (high - low).clamp_min(1e-12)


DIRECTIONS = ("anchor_to_token", "token_to_anchor")


def anchor_importance(probe: AttentionProbe, anchors: torch.Tensor, direction: str = "anchor_to_token") -> torch.Tensor:
    """(B, N) mean attention between each token and the anchors (B, k), in the given direction."""
    if direction == "anchor_to_token":
        return probe.attention_rows(anchors).mean(dim=1)
    every_row = probe.attention_rows(slice(None))  # (B, N queries, N keys)
    return every_row.gather(2, anchors[:, None, :].expand(-1, every_row.shape[1], -1)).mean(dim=2)


def anchor_diversity_scores(x: torch.Tensor, probe: AttentionProbe, anchors: torch.Tensor,
                            direction: str = "anchor_to_token"):
    """Raw importance and diversity of every token, two (B, N) tensors; `anchors` (B, k) are positions."""
    importance = anchor_importance(probe, anchors, direction)
    features = F.normalize(x.float(), dim=-1)
    anchor_features = features.gather(1, anchors[..., None].expand(-1, -1, features.shape[-1]))
    diversity = 1.0 - (features @ anchor_features.transpose(1, 2)).amax(dim=-1)
    return importance, diversity


def select_anchor_diversity(x, probe, n_prefix: int, k_anchors: int, top_m: int, alpha: float,
                            direction: str = "anchor_to_token") -> torch.Tensor:
    """Positions (B, k_anchors + top_m) of the anchors and the best-scoring tokens, per image."""
    B, N, _ = x.shape
    anchors = topk_by_cls_attention(probe, n_prefix, k_anchors)
    if top_m == 0:
        return anchors
    importance, diversity = anchor_diversity_scores(x, probe, anchors, direction)
    candidate = torch.ones(B, N, dtype=torch.bool, device=x.device)
    candidate[:, :n_prefix] = False
    candidate = candidate.scatter(1, anchors, torch.zeros_like(anchors, dtype=torch.bool))
    score = alpha * _minmax(importance, candidate) + (1.0 - alpha) * _minmax(diversity, candidate)
    chosen = score.masked_fill(~candidate, float("-inf")).topk(top_m, dim=1).indices
    return torch.cat([anchors, chosen], dim=1)


@register_strategy("anchor_diversity")
class AnchorDiversity(PruneOnceStrategy):
    param_spec = {
        "k_anchors": Int(10, "anchors: the patch tokens the class token attends to most", low=1),
        "top_m": Int(50, "tokens kept beyond the anchors, by importance and diversity (one-stage form)", low=0),
        "alpha": Float(0.5, "weight of importance (1) against diversity (0)", low=0.0, high=1.0),
        "start_layer": START_LAYER,
        "importance_direction": Choice(DIRECTIONS[0], "which attention reads importance", choices=DIRECTIONS),
        **MULTI_STAGE,
    }
    needs_class_token = True
    budget_params = ("top_m",)
    compute_knob = "top_m"
    example_params = {"k_anchors": 4, "prune_layers": [1, 2], "keep_rate": 0.5}

    def _check(self):
        self._check_start_layer()

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        if knob == "top_m":  # the anchors take their share of the patch tokens first
            return 0, max(0, patches - int(params.get("k_anchors") or 0))
        return super().knob_range(knob, params, patches, depth)

    def budget(self):
        return self.params["k_anchors"] + self.params["top_m"]

    def reduce(self, layer, x, probe, n_prefix, n_out):
        budget = n_out - n_prefix  # k_anchors + top_m, or the multi-stage budget
        k_anchors = min(self.params["k_anchors"], budget)
        return self.selection(
            n_prefix,
            select_anchor_diversity(x, probe, n_prefix, k_anchors, budget - k_anchors, self.params["alpha"],
                                    self.params["importance_direction"]),
        )
