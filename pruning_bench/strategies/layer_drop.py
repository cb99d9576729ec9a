"""layer_drop: skip whole transformer blocks, chosen by importance or given by index, at evaluation time.

Give `keep_layers` (how many blocks run) or `drop` (block indices to skip), not both. With
`keep_layers`, blocks are scored on `calibration` batches (see `importance.py`; all four importances
are data-driven) and chosen by
- `selection="topk"`: the highest-scoring blocks;
- `selection="distributed"`: the blocks split into `keep_layers` equal consecutive spans, the best
  block of each span kept, so the kept blocks stay spread over the depth (seed 002).
`pin_first` / `pin_last` (default True) always keep the first / last block: the first turns patch
embeddings into features and the last feeds the pooling, and seed 002 found them the most important.
Pins count towards `keep_layers`. An explicit `drop` list is taken as given (pins do not apply).
Dropped blocks are skipped, not zeroed: the blocks container is swapped for one holding the kept
blocks (patches/structured.py).
"""
from __future__ import annotations

import numpy as np
import torch

from ..registry import register_strategy
from .base import StructuredPlan, StructuredStrategy, warn_noop
from .params import Blocks, Bool, Calibration, Choice, Int
from .importance import BLOCK_IMPORTANCES, CountingIterable, block_scores

SELECTIONS = ("topk", "distributed")


def pinned_blocks(n_blocks: int, pin_first: bool, pin_last: bool) -> list[int]:
    return sorted({i for i, on in ((0, pin_first), (n_blocks - 1, pin_last)) if on})


def select_topk(scores: torch.Tensor, keep: int, pinned: list[int]) -> list[int]:
    """The pinned blocks plus the highest-scoring others, `keep` in all, in block order (ties: earlier block)."""
    free = [i for i in torch.sort(scores, descending=True, stable=True).indices.tolist() if i not in pinned]
    return sorted(pinned + free[: keep - len(pinned)])


def select_distributed(scores: torch.Tensor, keep: int, pinned: list[int]) -> list[int]:
    """The best block of each of `keep` equal consecutive spans; a span holding a pinned block keeps it."""
    chosen = []
    for span in np.array_split(np.arange(len(scores)), keep):
        span = span.tolist()
        pins = [i for i in span if i in pinned]
        chosen.append(pins[0] if pins else span[int(torch.argmax(scores[span]))])
    return chosen


@register_strategy("layer_drop")
class LayerDrop(StructuredStrategy):
    compute_knob = "keep_layers"
    kind = "structured"
    example_params = {"drop": [1, 2]}
    keep_all_params = {"drop": []}
    param_spec = {
        "keep_layers": Int(None, "blocks kept, chosen by importance (give this or drop)", low=1, optional=True),
        "drop": Blocks(None, "blocks skipped (give this or keep_layers)", increasing=False, optional=True),
        "importance": Choice("cosine", "how blocks are scored with keep_layers (all need calibration)",
                             choices=BLOCK_IMPORTANCES),
        "selection": Choice("topk", "best blocks overall, or the best of equal spans", choices=SELECTIONS),
        "pin_first": Bool(True, "never drop block 0"),
        "pin_last": Bool(True, "never drop the last block"),
        "calibration": Calibration(None, "images the block importances are scored on", optional=True),
    }

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return (1, depth) if knob == "keep_layers" else super().knob_range(knob, params, patches, depth)

    def _check(self):
        p = self.params
        if (p["keep_layers"] is None) == (p["drop"] is None):
            raise ValueError(f"{self.name}: give exactly one of keep_layers (blocks kept) or drop (block indices), "
                             f"got keep_layers={p['keep_layers']!r}, drop={p['drop']!r}")
        if p["keep_layers"] is not None and p["calibration"] is None:
            raise ValueError(
                f"{self.name}: keep_layers chooses blocks by importance={p['importance']!r}, which needs "
                "calibration=<iterable of image batches> (no labels needed); or give drop=[block indices]"
            )
        self._calibration_summary = None

    def resolved_params(self):
        params = dict(self.params)
        params["calibration"] = self._calibration_summary
        return params

    def choose_blocks(self, n_blocks: int, scores: torch.Tensor | None) -> list[int]:
        """Indices of the kept blocks of an `n_blocks`-block model (scores needed with keep_layers)."""
        p = self.params
        if p["drop"] is not None:
            bad = [i for i in p["drop"] if i >= n_blocks]
            if bad:
                raise ValueError(f"{self.name}: drop={p['drop']} names block(s) {bad}, out of range [0, {n_blocks - 1}]")
            if len(p["drop"]) >= n_blocks:
                raise ValueError(f"{self.name}: drop={p['drop']} removes all {n_blocks} blocks; keep at least one")
            return [i for i in range(n_blocks) if i not in p["drop"]]
        keep = p["keep_layers"]
        if keep > n_blocks:
            raise ValueError(f"{self.name}: keep_layers={keep} is out of range [1, {n_blocks}] for a {n_blocks}-block model")
        pinned = pinned_blocks(n_blocks, p["pin_first"], p["pin_last"])
        if keep < len(pinned):
            raise ValueError(f"{self.name}: keep_layers={keep} is out of range [{len(pinned)}, {n_blocks}] with "
                             f"pin_first={p['pin_first']} and pin_last={p['pin_last']}")
        select = select_distributed if p["selection"] == "distributed" else select_topk
        return select(scores, keep, pinned)

    def plan(self, model, target):
        p = self.params
        n = len(target.blocks)
        scores = None
        if p["keep_layers"] is not None:
            if p["keep_layers"] > n:
                self.choose_blocks(n, None)  # raises the range error before any scoring
            if p["keep_layers"] == n:
                warn_noop(self.name, f"keep_layers={n} keeps every block; the model is left unchanged")
                return StructuredPlan()
            counted = CountingIterable(p["calibration"])
            scores = block_scores(model, target, p["importance"], counted, self.name)
            self._calibration_summary = counted.summary()
        kept = self.choose_blocks(n, scores)
        if len(kept) == n:
            warn_noop(self.name, "drop=[] removes no block; the model is left unchanged")
        stats = {"layer_importance": None if scores is None else scores.tolist(), "blocks_total": n}
        return StructuredPlan(kept_blocks=kept, extra_stats=stats)
