"""Shared schedule for the token-pruning strategies: one reduction, in block `start_layer`.

Prefix tokens (class token, registers) are always kept and never count against the budget.
"""
from __future__ import annotations

import abc

import torch

from .base import Selection, TokenStrategy, check_int


class PruneOnceStrategy(TokenStrategy):
    """Keeps `budget()` patch tokens (plus the prefix) from block `start_layer` on."""

    @abc.abstractmethod
    def budget(self) -> int:
        """Patch tokens kept after `start_layer` (prefix tokens excluded)."""

    def check_model(self, n_layers: int, n_prefix: int) -> None:
        start = self.params["start_layer"]
        if start >= n_layers:
            raise ValueError(f"{self.name}: start_layer={start} is out of range [0, {n_layers - 1}] for a {n_layers}-block model")

    def _check_start_layer(self) -> None:
        self.params["start_layer"] = check_int("start_layer", self.params["start_layer"], 0, None, self.name)

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        if layer != self.params["start_layer"]:
            return n_tokens, None
        patches = n_tokens - n_prefix
        if self.budget() >= patches:
            return n_tokens, (
                f"budget of {self.budget()} tokens >= the {patches} patch tokens present at block {layer}; "
                f"clamped to {patches}, so nothing is pruned"
            )
        return n_prefix + self.budget(), None

    @staticmethod
    def selection(n_prefix: int, chosen: torch.Tensor) -> Selection:
        """Selection of the prefix plus `chosen` (B, M) positions, kept in their original order."""
        B = chosen.shape[0]
        prefix = torch.arange(n_prefix, device=chosen.device).expand(B, n_prefix)
        return Selection(torch.cat([prefix, chosen], dim=1).sort(dim=1).values)
