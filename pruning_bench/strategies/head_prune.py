"""head_prune: remove attention heads and MLP neurons, chosen by importance, at evaluation time.

`head_ratio` / `mlp_ratio` is the share of heads / hidden neurons removed (rounded to the nearest
count). `scope="layerwise"` cuts the same share from every block; `scope="global"` ranks the units
of all blocks together after dividing each block's scores by their L2 norm (so blocks whose scores
live on different scales compare), and always keeps each block's best unit, so a block can lose
many heads or none (seed 003's per-layer sparsity table). Importances are in `importance.py`.
The kept units are sliced out of the weights (patches/structured.py); nothing is masked.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import StructuredPlan, StructuredStrategy, warn_noop
from .params import Calibration, Choice, Float
from .importance import UNIT_IMPORTANCES, CountingIterable, unit_scores

SCOPES = ("layerwise", "global")


def count_to_remove(ratio: float, total: int) -> int:
    """Units removed for `ratio` of `total` (nearest count, halves rounded up)."""
    return int(ratio * total + 0.5)


def keep_layerwise(scores: list[torch.Tensor], ratio: float, min_keep: int = 1) -> tuple[list[torch.Tensor], bool]:
    """Per block, the indices of the units kept when the lowest `ratio` share is removed.

    Returns (kept indices per block, whether some block had to keep more than asked)."""
    kept, clamped = [], False
    for s in scores:
        n = len(s)
        remove = count_to_remove(ratio, n)
        if remove > n - min_keep:
            remove, clamped = n - min_keep, True
        order = torch.sort(s, descending=True, stable=True).indices
        kept.append(order[: n - remove].sort().values)
    return kept, clamped


def normalise_per_block(scores: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each block's scores divided by their L2 norm (all-zero blocks stay zero)."""
    return [s / n if (n := s.norm()) > 0 else s.clone() for s in scores]


def keep_global(scores: list[torch.Tensor], ratio: float, min_keep: int = 1) -> tuple[list[torch.Tensor], bool]:
    """One ranking over every block's normalised scores; each block keeps at least its `min_keep` best."""
    normed = normalise_per_block(scores)
    sizes = [len(s) for s in normed]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    flat = torch.cat(normed)
    protected = torch.zeros(len(flat), dtype=torch.bool)
    for b, s in enumerate(normed):
        protected[offsets[b] + torch.sort(s, descending=True, stable=True).indices[:min_keep]] = True
    candidates = (~protected).nonzero().flatten()
    remove = count_to_remove(ratio, len(flat))
    clamped = remove > len(candidates)
    # lowest first; ties go to the earlier block and unit, so the choice is reproducible
    dropped = candidates[torch.sort(flat[candidates], stable=True).indices[:remove]]
    keep = torch.ones(len(flat), dtype=torch.bool)
    keep[dropped] = False
    return [keep[offsets[b]:offsets[b + 1]].nonzero().flatten() for b in range(len(sizes))], clamped


def choose(scores: list[torch.Tensor], ratio: float, scope: str) -> tuple[list[torch.Tensor], bool]:
    return (keep_global if scope == "global" else keep_layerwise)(scores, ratio)


@register_strategy("head_prune")
class HeadPrune(StructuredStrategy):
    compute_knob = "head_ratio"
    kind = "structured"
    example_params = {"head_ratio": 0.5, "mlp_ratio": 0.5}
    keep_all_params = {"head_ratio": 0.0, "mlp_ratio": 0.0}
    param_spec = {
        "head_ratio": Float(0.3, "share of attention heads removed", low=0.0, high=1.0, high_open=True),
        "mlp_ratio": Float(0.0, "share of MLP neurons removed", low=0.0, high=1.0, high_open=True),
        "importance": Choice("magnitude", "how units are scored (all but magnitude need calibration)",
                             choices=UNIT_IMPORTANCES),
        "scope": Choice("layerwise", "rank within each block or across blocks", choices=SCOPES),
        "calibration": Calibration(None, "images the data-driven importances are scored on", optional=True),
    }

    def _check(self):
        p = self.params
        if p["importance"] != "magnitude" and p["calibration"] is None and self._prunes():
            raise ValueError(
                f"{self.name}: importance={p['importance']!r} is data-driven and needs calibration=<iterable of image "
                "batches> (no labels needed: the unpruned model's own outputs are the target)"
            )
        self._calibration_summary = None

    def _prunes(self) -> bool:
        return self.params["head_ratio"] > 0 or self.params["mlp_ratio"] > 0

    def resolved_params(self):
        params = dict(self.params)
        params["calibration"] = self._calibration_summary
        return params

    def plan(self, model, target):
        p = self.params
        if not self._prunes():
            warn_noop(self.name, "head_ratio=0 and mlp_ratio=0 remove nothing; the model is left unchanged")
            return StructuredPlan()
        counted = CountingIterable(p["calibration"]) if p["calibration"] is not None else None
        head_scores, neuron_scores = unit_scores(model, target, p["importance"], counted, self.name)
        if counted is not None:
            self._calibration_summary = counted.summary()
        heads, heads_clamped = choose(head_scores, p["head_ratio"], p["scope"])
        neurons, neurons_clamped = choose(neuron_scores, p["mlp_ratio"], p["scope"])
        for name, clamped in (("head_ratio", heads_clamped), ("mlp_ratio", neurons_clamped)):
            if clamped:
                warn_noop(self.name, f"{name}={p[name]} would empty a block; every block keeps at least one unit")
        unchanged = all(len(k) == len(s) for k, s in zip(heads + neurons, head_scores + neuron_scores))
        if unchanged:
            warn_noop(self.name, f"head_ratio={p['head_ratio']} and mlp_ratio={p['mlp_ratio']} round to no unit "
                                 "removed; the model is left unchanged")
        stats = {
            "head_importance": [s.tolist() for s in head_scores],
            "mlp_importance": [s.tolist() for s in neuron_scores],
            "heads_total_per_layer": [len(s) for s in head_scores],
            "mlp_hidden_total_per_layer": [len(s) for s in neuron_scores],
            "head_sparsity_per_layer": [1 - len(k) / len(s) for k, s in zip(heads, head_scores)],
            "mlp_sparsity_per_layer": [1 - len(k) / len(s) for k, s in zip(neurons, neuron_scores)],
        }
        return StructuredPlan(heads=heads, neurons=neurons, extra_stats=stats)
