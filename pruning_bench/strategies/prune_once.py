"""Shared schedule for the token-pruning strategies: where they prune and how many patch tokens stay.

Two forms, never both:
- absolute (the default for cls_topk, random_drop, anchor_diversity): one reduction, in block
  `start_layer`, to a fixed number of patch tokens (`budget()`);
- multi-stage (EViT's rule): every block in `prune_layers` keeps `ceil(keep_rate * P)` of the P
  patch-side tokens entering it. P counts every non-prefix token present (a token fused or merged at
  an earlier stage included), so with one prefix token this is EViT's `ceil(keep_rate * (N - 1))`.
  With register tokens, all prefix tokens (class token and registers) are set aside first, so the
  rate applies to the patch-side tokens only.

Prefix tokens (class token, registers) are always kept and never count against the budget.

A strategy that reduces between blocks (`placement = "exit"`, the clustering methods as their authors run
them) reads `prune_layers` as its authors' reduction locations: the listed blocks receive the reduced
tokens, so the block before each one reduces at its exit, from its own attention.
"""
from __future__ import annotations

import math
import warnings

import torch

from .base import Selection, TokenStrategy
from .params import Blocks, check_layers, check_layers_fit, Float, Int, keep_rate_range  # noqa: F401  (check_layers: its old home)

RATE_PARAMS = ("prune_layers", "keep_rate")


START_LAYER = Int(1, "the block that prunes (one-stage form)", low=0)
PRUNE_LAYERS = Blocks(None, "with keep_rate: the blocks that prune (multi-stage form)", optional=True)
KEEP_RATE = Float(None, "each block of prune_layers keeps ceil(keep_rate x (N - 1)) patch tokens", low=0.0,
                  high=1.0, low_open=True, optional=True)
KEEP = Int(98, "patch tokens kept after start_layer (class token excluded)", low=0)
MULTI_STAGE = {"prune_layers": PRUNE_LAYERS, "keep_rate": KEEP_RATE}


class PruneOnceStrategy(TokenStrategy):
    """Token pruning on the absolute or the multi-stage schedule (see the module docstring).

    Subclasses list the parameters of their absolute budget in `budget_params` (empty when the
    strategy only has the multi-stage form) and set `extra_tokens` when a reduction adds tokens of
    its own (EViT's fused token)."""

    budget_params: tuple[str, ...] = ("keep",)
    extra_tokens = 0
    keep_all_params: dict | None = {"prune_layers": [1, 2], "keep_rate": 1.0}

    def __init__(self, **params):
        self.given = frozenset(params)
        super().__init__(**params)

    # ------------------------------------------------------------ parameters

    @property
    def multi_stage(self) -> bool:
        return self.params.get("keep_rate") is not None or self.params.get("prune_layers") is not None

    def _check_start_layer(self) -> None:
        """Check the schedule: the absolute form's `start_layer`, or `prune_layers` + `keep_rate`."""
        p = self.params
        if not self.multi_stage:
            return
        absolute = [n for n in ("start_layer", *self.budget_params) if n in self.given]
        if absolute and self.budget_params:
            raise ValueError(
                f"{self.name}: give either prune_layers + keep_rate (multi-stage) or "
                f"{' + '.join(('start_layer', *self.budget_params))} (one stage), not both; got "
                + ", ".join(f"{n}={p[n]!r}" for n in (*RATE_PARAMS, *absolute))
            )
        missing = [n for n in RATE_PARAMS if p.get(n) is None]
        if missing:
            raise ValueError(f"{self.name}: prune_layers and keep_rate go together; {missing[0]} is missing")
        if self.budget_params:  # the absolute form does not apply: record that in the resolved parameters
            for n in ("start_layer", *self.budget_params):
                p[n] = None

    def check_model(self, n_layers: int, n_prefix: int) -> None:
        if not self.multi_stage:
            start = self.params["start_layer"]
            if start >= n_layers:
                raise ValueError(f"{self.name}: start_layer={start} is out of range [0, {n_layers - 1}] for a {n_layers}-block model")
            return
        layers = self.params["prune_layers"]
        if self.placement == "exit" and layers[0] == 0:
            raise ValueError(f"{self.name}: prune_layers={layers} has block 0, out of range [1, {n_layers - 1}]: "
                             "the reduction runs between blocks, so block 1 is the first that can receive reduced tokens")
        check_layers_fit("prune_layers", layers, n_layers, self.name)
        if self.params["keep_rate"] >= 1.0:
            warnings.warn(f"{self.name}: keep_rate=1.0 keeps every token; the model runs unchanged", UserWarning, stacklevel=4)

    def check_pooling(self, reads_patch_tokens: bool) -> None:
        if not self.multi_stage:  # keep_rate > 0 always keeps at least one patch-side token
            super().check_pooling(reads_patch_tokens)

    @classmethod
    def knob_for(cls, fixed):
        """With `prune_layers` given, a strategy that also has the one-stage form searches `keep_rate`."""
        return "keep_rate" if "prune_layers" in fixed and "keep_rate" in cls.param_spec else cls.compute_knob

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        if knob == "keep_rate":
            return keep_rate_range(patches)
        if knob in cls.budget_params:  # the one-stage budget, prefix tokens excluded
            return 0, patches
        return super().knob_range(knob, params, patches, depth)

    # ------------------------------------------------------------ schedule

    def budget(self) -> int:
        """Patch tokens kept after `start_layer` in the absolute form (prefix tokens excluded); strategies
        that only take the multi-stage form (evit, the clustering ones) never reach here."""
        raise TypeError(f"{self.name} has no absolute budget; give prune_layers and keep_rate")

    def kept_at(self, layer: int, patches: int) -> int | None:
        """Patch-side tokens block `layer` keeps out of `patches`, or None when it does not prune."""
        if self.multi_stage:
            if self.placement == "exit":  # block `layer` reduces what enters the next block
                layer += 1
            if layer not in self.params["prune_layers"]:
                return None
            return math.ceil(self.params["keep_rate"] * patches)  # EViT's rounding, float product included
        return self.budget() if layer == self.params["start_layer"] else None

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        patches = n_tokens - n_prefix
        kept = self.kept_at(layer, patches)
        if kept is None:
            return n_tokens, None
        if kept + self.extra_tokens >= patches:
            if not self.multi_stage:
                return n_tokens, (
                    f"budget of {kept} tokens >= the {patches} patch tokens present at block {layer}; "
                    f"clamped to {patches}, so nothing is pruned"
                )
            extra = f" plus {self.extra_tokens} added" if self.extra_tokens else ""
            return n_tokens, (
                f"keep_rate={self.params['keep_rate']} keeps {kept}{extra} of the {patches} patch tokens "
                f"present at block {layer}; clamped to {patches}, so nothing is pruned there"
            )
        return n_prefix + kept + self.extra_tokens, None

    @staticmethod
    def selection(n_prefix: int, chosen: torch.Tensor) -> Selection:
        """Selection of the prefix plus `chosen` (B, M) positions, kept in their original order."""
        B = chosen.shape[0]
        prefix = torch.arange(n_prefix, device=chosen.device).expand(B, n_prefix)
        return Selection(torch.cat([prefix, chosen], dim=1).sort(dim=1).values)
