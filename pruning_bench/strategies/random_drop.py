"""random_drop: keep `keep` patch tokens chosen at random, the floor any scoring rule must beat.

The draw comes from a generator seeded by (seed, block) and is shared by every image, so results are
reproducible and never depend on batch composition or batch size.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .params import seed_param
from .constants import schedule_constant
from .prune_once import KEEP, MULTI_STAGE, START_LAYER, PruneOnceStrategy


def random_positions(n_patches: int, keep: int, seed: int, layer: int, n_prefix: int, batch: int, device) -> torch.Tensor:
    """(batch, keep) positions of `keep` random patch tokens, identical for every image (drawn once)."""
    chosen = schedule_constant(_draw, (n_patches, keep, seed, layer, n_prefix), device)
    return chosen.expand(batch, keep)


def _draw(n_patches: int, keep: int, seed: int, layer: int, n_prefix: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    return torch.randperm(n_patches, generator=generator)[:keep] + n_prefix


@register_strategy("random_drop")
class RandomDrop(PruneOnceStrategy):
    param_spec = {"keep": KEEP, "start_layer": START_LAYER, "seed": seed_param("the draw, shared by every image"),
                  **MULTI_STAGE}
    compute_knob = "keep"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}

    def _check(self):
        self._check_start_layer()

    def budget(self):
        return self.params["keep"]

    def reduce(self, layer, x, probe, n_prefix, n_out):
        B, N = x.shape[0], int(x.shape[1])
        chosen = random_positions(N - n_prefix, n_out - n_prefix, self.params["seed"], layer, n_prefix, B, x.device)
        return self.selection(n_prefix, chosen)
