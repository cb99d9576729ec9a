"""The `pruning` block of a result file and the flat keys beside it, one writer for every driver.

`pruning` holds the strategy, every parameter as resolved, the notes (every clamp or cap, including
those found during the forward passes), the per-block stats and `effective` (false when no block
removed a token or a weight). Flat, scalar top-level keys (`pruning_slug`, `strategy`, `gmacs`,
`images_per_second`, ...) let `clip_benchmark build` put one distinguishable row per run in its CSV.
"""
from __future__ import annotations

import json
import os
import sys
from typing import Any

from . import naming

PER_UNIT_STATS = ("mlp_importance",)  # tens of thousands of floats per run; `handle.stats()` keeps them
NOTHING_PRUNED = "this run pruned nothing: no block removed a token or a weight (see pruning.notes)"
# Set by `pruning-bench sweep --match_macs` on each point's command: the MAC target its knob value was matched to.
MATCH_ENV = "PRUNING_BENCH_MATCH"


def json_safe(value):
    """The handle's stats as JSON values (tensors become lists, anything else its repr)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return repr(value)


def pruning_block(config, handle, notes: list[str], slug: str, *, feature_cache: str | None = None,
                  model_loaded: bool = True) -> dict[str, Any] | None:
    """The `pruning` block of a pruned run (None for a baseline)."""
    if not config.enabled:
        return None
    described = handle.describe() if handle is not None else [{"strategy": config.strategy, "params": config.resolved}]
    record = {
        "strategy": config.strategy,
        "params": described[0]["params"] if len(described) == 1 else config.resolved,
        "requested": config.params,
        "stages": described,
        "slug": slug,
        "notes": list(notes),
        "effective": None if handle is None else bool(handle.effective),
    }
    if handle is not None:
        stats = handle.stats()
        for key in PER_UNIT_STATS:
            stats.pop(key, None)
        record["stats"] = json_safe(stats)
    if feature_cache is not None:
        record["feature_cache"] = feature_cache
    if getattr(config, "reapplied_from", None):  # a saved model's own token strategy, put back on load
        record["reapplied_from"] = config.reapplied_from
        record["notes"].append(f"token strategy re-applied from the saved model {config.reapplied_from}")
    match = matched_target(config)
    if match is not None:
        record["match"] = match
    if not model_loaded:
        record["notes"].append("model not loaded (--skip_load): metrics come from the cached features of this configuration")
    return record


def matched_target(config) -> dict[str, Any] | None:
    """`{target_ratio, achieved_ratio, knob, value, ...}` from MATCH_ENV, when it describes this very run
    (same strategy, same knob value); a stale variable left in a shell is ignored."""
    text = os.environ.get(MATCH_ENV)
    if not text:
        return None
    try:
        match = json.loads(text)
    except ValueError:
        return None
    if not isinstance(match, dict) or match.get("strategy") != config.strategy:
        return None
    knob = match.get("knob")
    if knob not in config.resolved or config.resolved[knob] != match.get("value"):
        return None
    return match


def flat_keys(dump: dict[str, Any]) -> dict[str, Any]:
    """Scalar top-level keys that tell runs apart in `clip_benchmark build`'s CSV."""
    pruning = dump.get("pruning") or {}
    efficiency = dump.get("efficiency") or {}
    flat = {
        "pruning_slug": pruning.get("slug", naming.BASELINE_SLUG),
        "strategy": pruning.get("strategy") or "none",
        "pruning_effective": pruning.get("effective") if pruning else None,
    }
    if isinstance(pruning.get("match"), dict):  # a matched-MACs sweep point: its budget, to group by
        flat["match_target_ratio"] = pruning["match"].get("target_ratio")
    for key in ("gmacs", "gflops", "images_per_second", "batch_size", "dtype", "device"):
        value = efficiency.get(key) if isinstance(efficiency, dict) else None
        if isinstance(value, (bool, int, float, str)) or value is None:
            flat[key] = value
    return flat


def complete(dump: dict[str, Any]) -> dict[str, Any]:
    """`dump` with the flat keys added (never overwriting a key the driver wrote)."""
    out = dict(dump)
    for key, value in flat_keys(dump).items():
        out.setdefault(key, value)
    return out


def warn_if_ineffective(dump: dict[str, Any], prefix: str = "pruning-bench") -> None:
    """One clear line at the end of a run that pruned nothing."""
    pruning = dump.get("pruning") or {}
    if pruning.get("effective") is False:
        print(f"{prefix}: WARNING {NOTHING_PRUNED}", file=sys.stderr)
