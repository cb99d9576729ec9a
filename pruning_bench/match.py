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

from .measure.analytic import vit_dims
from .measure.flops import count_flops
from .registry import get_strategy
from .strategies.params import Float, check_float


class MatchedParams(dict):
    """The parameters to pass to `prune` (fixed ones plus the knob), with what they achieve.

    Attributes: `knob` (its name), `ratio` (MACs with these parameters / MACs of the unpruned model),
    `gmacs` and `baseline_gmacs` (per image), `evaluated` ({knob value: ratio} for every value tried)."""

    knob: str
    ratio: float
    gmacs: float
    baseline_gmacs: float
    evaluated: dict


def knob_domain(knob: str, model, params: dict[str, Any], strategy: str | None = None) -> tuple[type, float, float]:
    """(int or float, lowest, highest) values the search tries for `knob` of `strategy` on `model`, as the
    strategy declares them (`Strategy.knob_range`)."""
    cls = get_strategy(strategy)
    dims = vit_dims(model)
    low, high = cls.knob_range(knob, params, dims.num_patches(), dims.depth)
    kind = float if isinstance(cls.param_spec.get(knob), Float) else int
    return kind, low, high


def compute_knob(strategy: str, fixed: dict[str, Any]) -> str:
    """The parameter `match_macs` searches for `strategy` given the `fixed` ones (ValueError when there is none)."""
    knob = get_strategy(strategy).knob_for(fixed)
    if knob is None:
        raise ValueError(f"match_macs: strategy {strategy!r} declares no compute_knob")
    return knob


def _default_image(model) -> torch.Tensor:
    dims = vit_dims(model)
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
    kind, low, high = knob_domain(knob, model, {**cls.defaults, **fixed}, strategy)
    images = _default_image(model) if images is None else images
    baseline = count_flops(model, images).macs
    evaluated: dict[Any, float] = {}

    def ratio(value):
        if value not in evaluated:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # clamped budgets are part of the search
                from .api import prune

                with prune(model, strategy, **fixed, **{knob: value}):
                    evaluated[value] = count_flops(model, images).macs / baseline
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
