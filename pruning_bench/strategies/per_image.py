"""Per-image token budgets: a selection whose kept count differs from image to image.

A batch stays one rectangular tensor. A `PaddedSelection` holds, per image, the kept positions packed
to the left and a `valid` mask that is False on the padding after them; the token patch carries that
mask into every later block as a key mask of attention (padding is never attended to, never pooled),
so each image's output equals the output of the image run alone. `tokens_per_image` in `h.stats()`
counts the valid tokens, and `count_flops` counts each image alone (no padding); how much the padding
costs in the batch as it runs is recorded beside that ideal.

A strategy opts in with `PerImageStrategy`: `plan_block` then gives the most tokens a block may keep
(the padded width), and `reduce` receives the mask of the tokens entering the block (None before the
first per-image reduction).
"""
from __future__ import annotations

import abc

import torch

from .base import Selection, TokenStrategy


class PaddedSelection(Selection):
    """Keep `index` (B, M) where `valid` (B, M) is True; valid entries come first in every row, in order.

    Padded entries may point anywhere (they are gathered, then masked out)."""

    def __init__(self, index: torch.Tensor, valid: torch.Tensor):
        super().__init__(index)
        self.valid = valid

    def trimmed(self) -> "PaddedSelection":
        """The same selection cut to the batch's longest row (a host read of the counts: eager runs only)."""
        width = int(self.valid.sum(dim=1).max())
        return PaddedSelection(self.index[:, :width], self.valid[:, :width])


def packed(index: torch.Tensor, keep: torch.Tensor) -> PaddedSelection:
    """A `PaddedSelection` of the entries of `index` (B, M) where `keep` (B, M) is True, order kept.

    Static shapes only (a stable sort moves the dropped entries behind the kept ones), so it traces into
    one compiled graph."""
    order = (~keep).to(torch.uint8).argsort(dim=1, stable=True)
    return PaddedSelection(index.gather(1, order), keep.gather(1, order))


def key_mask_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, N) additive attention bias: 0 for real tokens, -inf for padding."""
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    return bias[:, None, None, :]


class PerImageStrategy(TokenStrategy):
    """A token strategy whose reductions may keep a different number of tokens per image."""

    per_image = True

    @abc.abstractmethod
    def reduces_at(self, layer: int) -> bool:
        """Whether block `layer` decides, whatever the padded width of the batch entering it."""

    @abc.abstractmethod
    def reduce(self, layer, x, probe, n_prefix, n_out, mask=None):
        """A `PaddedSelection` (or `Selection`) for the images' own counts; `mask` marks the real tokens."""
