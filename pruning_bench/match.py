"""Matched compute: find the value of a strategy's compute knob whose MACs come closest to a target share.

Every strategy names its compute knob (`compute_knob`: `r` for tome, `keep` for cls_topk, `keep_rate`
for evit, ...). MACs are counted with `count_flops` on one image with the strategy patched, so what is
matched is what the model really runs, clamps and strategy overheads included. The MAC count moves
monotonically with every knob, so a bisection brackets the target; integer knobs then compare the two
neighbours, float knobs stop when the bracket is narrower than `tolerance` and return the closest
value evaluated.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from .api import make_strategy, prune_located
from .families import locate
from .measure.analytic import vit_dims
from .measure.flops import count_flops
from .registry import get_strategy
from .strategies.base import check_float


class MatchedParams(dict):
    """The parameters to pass to `prune` (fixed ones plus the knob), with what they achieve.

    Attributes: `knob` (its name), `ratio` (MACs with these parameters / MACs of the unpruned model),
    `gmacs` and `baseline_gmacs` (per image), `evaluated` ({knob value: ratio} for every value tried)."""

    knob: str
    ratio: float
    gmacs: float
    baseline_gmacs: float
    evaluated: dict


def knob_domain(knob: str, model, params: dict[str, Any], family=None) -> tuple[type, float, float]:
    """(int or float, lowest, highest) values the search tries for `knob` on `model` (located as `family`)."""
    dims = family.dims() if family is not None else vit_dims(model)
    patches = dims.num_patches()
    if knob == "keep":
        return int, 0, patches
    if knob == "top_m":
        return int, 0, max(0, patches - int(params.get("k_anchors", 0)))
    if knob == "r":
        return int, 0, patches // 2
    if knob == "keep_layers":
        return int, 1, dims.depth
    if knob == "keep_rate":
        return float, 0.5 / patches, 1.0
    if knob in ("head_ratio", "mlp_ratio"):
        return float, 0.0, 1.0 - 1e-6
    if knob == "dominant":  # visionzip: dominant tokens count the class token
        return int, 1, max(1, patches + 1 - int(params.get("contextual", 0)))
    if knob == "ratio":  # pitome: share kept per block; at most half can merge in one bipartite step
        return float, 0.5, 1.0
    raise ValueError(f"match_macs: no search range is known for the compute knob {knob!r}")


def compute_knob(strategy: str, fixed: dict[str, Any]) -> str:
    """The parameter `match_macs` searches for `strategy` given the `fixed` ones (ValueError when there is none)."""
    cls = get_strategy(strategy)
    knob = getattr(cls, "compute_knob", None)
    if "prune_layers" in fixed and "keep_rate" in cls.defaults:
        knob = "keep_rate"
    if knob is None:
        raise ValueError(f"match_macs: strategy {strategy!r} declares no compute_knob")
    return knob


def _default_image(model, family) -> torch.Tensor:
    dims = family.dims()
    parameter = next(model.parameters())
    return torch.zeros(1, dims.in_chans, *dims.image_size, dtype=parameter.dtype, device=parameter.device)


def match_macs(model, strategy: str, target_ratio: float, images: torch.Tensor | None = None,
               tolerance: float = 1e-4, **fixed) -> MatchedParams:
    """Parameters of `strategy` (`fixed` plus its compute knob) whose MACs / unpruned MACs is closest to `target_ratio`.

    `images` defaults to one zero image of the model's input size. With `prune_layers` among the fixed
    parameters, a strategy that also has a multi-stage form searches `keep_rate` instead of its budget."""
    target = check_float("target_ratio", target_ratio, 0.0, 1.0, low_open=True, owner="match_macs")
    cls = get_strategy(strategy)
    knob = compute_knob(strategy, fixed)
    if knob in fixed:
        raise ValueError(f"match_macs: {knob}={fixed[knob]!r} is the knob being searched; leave it out of the fixed parameters")
    cls(**{**fixed, knob: cls.defaults.get(knob) if cls.defaults.get(knob) is not None else 1})  # bad fixed values fail here
    family = locate(model)  # once: every trial below prunes and counts the same located model
    kind, low, high = knob_domain(knob, model, {**cls.defaults, **fixed}, family)
    images = _default_image(model, family) if images is None else images
    baseline = count_flops(model, images, family=family).macs
    evaluated: dict[Any, float] = {}

    def ratio(value):
        if value not in evaluated:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # clamped budgets are part of the search
                with prune_located(model, [make_strategy(strategy, {**fixed, knob: value})], family):
                    evaluated[value] = count_flops(model, images, family=family).macs / baseline
        return evaluated[value]

    _bisect(ratio, target, kind, low, high, tolerance)
    best = min(evaluated, key=lambda v: (abs(evaluated[v] - target), evaluated[v]))
    result = MatchedParams({**fixed, knob: best})
    result.knob, result.ratio, result.evaluated = knob, evaluated[best], dict(sorted(evaluated.items()))
    result.gmacs, result.baseline_gmacs = evaluated[best] * baseline / 1e9, baseline / 1e9
    return result


def _bisect(ratio, target: float, kind: type, low, high, tolerance: float) -> None:
    """Narrow [low, high] around the knob value where `ratio` crosses `target` (ratio is monotone)."""
    side_low, side_high = ratio(low) >= target, ratio(high) >= target
    if side_low == side_high:  # the target lies outside what the knob can reach: an end is closest
        return
    for _ in range(64):
        if (high - low <= 1) if kind is int else (high - low <= tolerance):
            return
        middle = (low + high) // 2 if kind is int else (low + high) / 2
        if (ratio(middle) >= target) == side_low:
            low = middle
        else:
            high = middle
    if not math.isfinite(high - low):  # pragma: no cover - defensive
        raise ValueError("match_macs: the search did not converge")
