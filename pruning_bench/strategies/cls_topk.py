"""cls_topk: keep the patch tokens the class token attends to most (the EViT criterion, without fusing).

A baseline every token-pruning comparison needs: the simplest attention-based choice.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import AttentionProbe
from .prune_once import KEEP, MULTI_STAGE, START_LAYER, PruneOnceStrategy


def cls_attention(probe: AttentionProbe) -> torch.Tensor:
    """Head-averaged attention of the class token (position 0) over all tokens: (B, N).

    Only the class token's query row is computed, never the full N x N map."""
    return probe.attention_rows(slice(0, 1))[:, 0]


def topk_by_cls_attention(probe: AttentionProbe, n_prefix: int, keep: int) -> torch.Tensor:
    """Positions (B, keep) of the patch tokens with the highest class-token attention."""
    return cls_attention(probe)[:, n_prefix:].topk(keep, dim=1).indices + n_prefix


@register_strategy("cls_topk")
class ClsTopK(PruneOnceStrategy):
    param_spec = {"keep": KEEP, "start_layer": START_LAYER, **MULTI_STAGE}
    needs_class_token = True
    compute_knob = "keep"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}

    def _check(self):
        self._check_start_layer()

    def budget(self):
        return self.params["keep"]

    def reduce(self, layer, x, probe, n_prefix, n_out):
        return self.selection(n_prefix, topk_by_cls_attention(probe, n_prefix, n_out - n_prefix))
