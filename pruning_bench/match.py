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
import sys
import time
import warnings
from typing import Any

import torch

from .api import make_strategy, prune_located
from .families import locate
from .measure.analytic import vit_dims
from .measure.flops import count_flops
from .registry import get_strategy
from .strategies.params import Float, check_float


class MatchedParams(dict):
    """The parameters to pass to `prune` (fixed ones plus the knob), with what they achieve.

    Attributes: `knob` (its name), `ratio` (MACs with these parameters / MACs of the unpruned model),
    `target` and `gap` (ratio - target), `gmacs` and `baseline_gmacs` (per image), `evaluated` ({knob
    value: ratio} for every single value tried) and `schedules` ({per-block tuple: ratio})."""

    knob: str
    ratio: float
    target: float
    gap: float
    schedules: dict
    gmacs: float
    baseline_gmacs: float
    evaluated: dict


def knob_domain(knob: str, model, params: dict[str, Any], strategy: str | None = None,
                family=None) -> tuple[type, float, float]:
    """(int or float, lowest, highest) values the search tries for `knob` of `strategy` on `model`, as the
    strategy declares them (`Strategy.knob_range`)."""
    cls = get_strategy(strategy)
    dims = family.dims() if family is not None else vit_dims(model)
    low, high = cls.knob_range(knob, params, dims.num_patches(), dims.depth)
    kind = float if isinstance(cls.param_spec.get(knob), Float) else int
    return kind, low, high


def compute_knob(strategy: str, fixed: dict[str, Any]) -> str:
    """The parameter `match_macs` searches for `strategy` given the `fixed` ones (ValueError when there is none)."""
    knob = get_strategy(strategy).knob_for(fixed)
    if knob is None:
        raise ValueError(f"match_macs: strategy {strategy!r} declares no compute_knob")
    return knob


def _default_image(model, family) -> torch.Tensor:
    dims = family.dims()
    parameter = next(model.parameters())
    return torch.zeros(1, dims.in_chans, *dims.image_size, dtype=parameter.dtype, device=parameter.device)


MATCH_WITHIN = 0.01  # of the baseline MACs: a result farther from its target comes with a MatchGapWarning


class MatchGapWarning(UserWarning):
    """The finest form of a strategy's knob cannot reach the target: the nearest value is returned."""


def _significant(value: float, digits: int = 4, direction: int = 0) -> float:
    """`value` with `digits` significant digits: rounded (direction 0), up (1) or down (-1)."""
    if value == 0 or not math.isfinite(value):
        return value
    step = 10.0 ** (math.floor(math.log10(abs(value))) - digits + 1)
    scaled = value / step
    scaled = round(scaled) if direction == 0 else (math.ceil(scaled - 1e-9) if direction > 0 else math.floor(scaled + 1e-9))
    return float(f"{scaled * step:.{digits}g}")


def _say(progress: bool, text: str) -> None:
    if progress:
        print(f"match_macs: {text}", file=sys.stderr, flush=True)


def match_macs(model, strategy: str, target_ratio: float, images: torch.Tensor | None = None,
               tolerance: float = 1e-4, *, per_block: bool = True, progress: bool = True, **fixed) -> MatchedParams:
    """Parameters of `strategy` (`fixed` plus its compute knob) whose MACs / unpruned MACs is closest to `target_ratio`.

    `images` defaults to one zero image of the model's input size. With `prune_layers` among the fixed
    parameters, a strategy that also has a multi-stage form searches `keep_rate` instead of its budget.

    Coarse to fine: the knob is bisected as one value (a float knob to `tolerance`, its values kept to 4
    significant digits); an integer knob that also takes one value per block (ToMe's `r` list) is then
    refined with `per_block`: the first k blocks take one more, then one later block takes one more,
    each bisected. A result more than 1% of the baseline MACs from the target comes with a
    `MatchGapWarning` naming the gap. `progress` prints one line per stage on stderr."""
    target = check_float("target_ratio", target_ratio, 0.0, 1.0, low_open=True, owner="match_macs")
    cls = get_strategy(strategy)
    knob = compute_knob(strategy, fixed)
    if knob in fixed:
        raise ValueError(f"match_macs: {knob}={fixed[knob]!r} is the knob being searched; leave it out of the fixed parameters")
    cls(**{**fixed, knob: cls.defaults.get(knob) if cls.defaults.get(knob) is not None else 1})  # bad fixed values fail here
    family = locate(model)  # once: every trial below prunes and counts the same located model
    kind, low, high = knob_domain(knob, model, {**cls.defaults, **fixed}, strategy, family)
    if kind is float:
        low, high = _significant(low, direction=1), _significant(high, direction=-1)
    images = _default_image(model, family) if images is None else images
    started = time.monotonic()
    _say(progress, f"{strategy}, target {target:g}: searching {knob} in [{low:g}, {high:g}]")
    baseline = count_flops(model, images, family=family).macs
    tried: dict[Any, float] = {}  # knob value (a tuple for a per-block schedule) -> MAC ratio

    def ratio(value):
        key = tuple(value) if isinstance(value, list) else value
        if key not in tried:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # clamped budgets are part of the search
                with prune_located(model, [make_strategy(strategy, {**fixed, knob: value})], family):
                    tried[key] = count_flops(model, images, family=family).macs / baseline
        return tried[key]

    def closest():
        key = min(tried, key=lambda v: (abs(tried[v] - target), tried[v]))
        return key, tried[key]

    _bisect(ratio, target, kind, low, high, tolerance)
    best, best_ratio = closest()
    _say(progress, f"{strategy}: one {knob} for every block: {knob}={best} gives {best_ratio:.4f} ({len(tried)} tried)")
    if per_block and kind is int and cls.per_block_knob(knob) and abs(best_ratio - target) > tolerance:
        depth = family.dims().depth
        for stage in _refine_per_block(ratio, target, {v: r for v, r in tried.items()}, depth):
            best, best_ratio = closest()
            _say(progress, f"{strategy}: per block, {stage}: {knob}={_plain(best)} gives {best_ratio:.4f} "
                           f"({len(tried)} tried)")
            if abs(best_ratio - target) <= tolerance:
                break
    value = _plain(best)
    gap = best_ratio - target
    _say(progress, f"{strategy}: {knob}={value} gives {best_ratio:.4f} for target {target:g} (gap {gap:+.4f}, "
                   f"{len(tried)} evaluated, {time.monotonic() - started:.1f} s)")
    if abs(gap) > MATCH_WITHIN:
        warnings.warn(f"match_macs: {strategy} cannot reach MAC ratio {target:g} within {MATCH_WITHIN:g} of the "
                      f"baseline by {knob}: the nearest, {knob}={value}, gives {best_ratio:.4f} (gap {gap:+.4f})",
                      MatchGapWarning, stacklevel=2)
    result = MatchedParams({**fixed, knob: value})
    result.knob, result.ratio, result.target, result.gap = knob, best_ratio, target, gap
    result.evaluated = {v: r for v, r in sorted((v, r) for v, r in tried.items() if not isinstance(v, tuple))}
    result.schedules = {v: r for v, r in tried.items() if isinstance(v, tuple)}
    result.gmacs, result.baseline_gmacs = best_ratio * baseline / 1e9, baseline / 1e9
    return result


def _plain(value):
    """A per-block schedule as a list (the form strategies take), a constant one as its value."""
    if isinstance(value, tuple):
        return value[0] if len(set(value)) == 1 else list(value)
    return value


def _refine_per_block(ratio, target: float, constant: dict, depth: int):
    """Between the two neighbouring constant values r and r + 1 that bracket the target: give r + 1 to the
    first k blocks (bisected over k), then to one more, later block (bisected over which); yields a stage
    name after each. MACs fall with every merge added, and fall less the later the block."""
    above = [v for v, r in constant.items() if r >= target]
    below = [v for v, r in constant.items() if r < target]
    if not above or not below or min(below) != max(above) + 1:
        return  # the target lies beyond what the knob reaches: an end is closest
    r = max(above)

    def prefix(k):
        return [r + 1] * k + [r] * (depth - k)

    low, high = 0, depth  # prefix(0) is above the target, prefix(depth) below
    while high - low > 1:
        middle = (low + high) // 2
        if ratio(prefix(middle)) >= target:
            low = middle
        else:
            high = middle
    yield f"{r + 1} in the first {low} block(s)"

    def one_more(j):  # block j (after the first `low`) also takes r + 1; j == depth: none
        schedule = prefix(low)
        if j < depth:
            schedule[j] = r + 1
        return schedule

    # one_more(low) is prefix(low + 1), below the target; one_more(depth) is prefix(low), above it
    first, last = low, depth
    while last - first > 1:
        middle = (first + last) // 2
        if ratio(one_more(middle)) >= target:
            last = middle
        else:
            first = middle
    ratio(one_more(first))
    ratio(one_more(last))
    yield "one block more"


def _bisect(ratio, target: float, kind: type, low, high, tolerance: float) -> None:
    """Narrow [low, high] around the knob value where `ratio` crosses `target` (ratio is monotone)."""
    side_low, side_high = ratio(low) >= target, ratio(high) >= target
    if side_low == side_high:  # the target lies outside what the knob can reach: an end is closest
        return
    for _ in range(64):
        if (high - low <= 1) if kind is int else (high - low <= tolerance):
            return
        middle = (low + high) // 2 if kind is int else _significant((low + high) / 2)
        if middle in (low, high):  # no 4-significant-digit value left between them
            return
        if (ratio(middle) >= target) == side_low:
            low = middle
        else:
            high = middle
    if not math.isfinite(high - low):  # pragma: no cover - defensive
        raise ValueError("match_macs: the search did not converge")
