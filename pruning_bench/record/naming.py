"""Result file names that carry the pruning configuration, so runs never overwrite each other."""
from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

PLACEHOLDER = "{pruning}"
BASELINE_SLUG = "baseline"
_MAX_SLUG = 100
SIGNIFICANT = 4  # digits a float keeps in a slug or a label
# a strategy parameter whose name the file name already uses for something else, and how it is written
RENAMED = {"seed": "strategy_seed"}  # `_seedS` is the run's (training / evaluation) seed


def float_text(value: float) -> str:
    """A float with at most 4 significant digits (`0.5747`, `1.0`, `1e-05`)."""
    if value.is_integer() and abs(value) < 1e15:
        return f"{value:.1f}"
    return f"{value:.{SIGNIFICANT}g}"


def label_value(value: Any) -> str:
    """A parameter value as a label shows it: floats to 4 significant digits, lists joined by commas."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(label_value(v) for v in value) + "]"
    return str(value)


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return float_text(value)
    if isinstance(value, (list, tuple)):
        return "x".join(_value_text(v) for v in value)
    return str(value)


def _rounded(value: Any) -> bool:
    """Whether writing `value` with 4 significant digits loses something (then the slug adds a digest)."""
    if isinstance(value, float) and not isinstance(value, bool):
        return float(float_text(value)) != value
    if isinstance(value, (list, tuple)):
        return any(_rounded(v) for v in value)
    return False


def pruning_slug(strategy: str | None, resolved: dict[str, Any]) -> str:
    """`anchor_diversity-alpha0.5-k_anchors10-start_layer1-top_m50`: the strategy and every scalar parameter.

    Parameters that are None (unset options) or not plain values (a calibration iterable) are left
    out; floats keep 4 significant digits; a strategy's `seed` is written `strategy_seed`, so that a
    file name never holds the key `seed` twice (the run's seed is added as `_seedS`). When rounding lost
    digits, or the slug is over-long (then cut), a hash of the full configuration completes it, so
    distinct configurations stay distinct.
    """
    if not strategy:
        return BASELINE_SLUG
    parts = [strategy]
    for key in sorted(resolved):
        value = resolved[key]
        if isinstance(value, (bool, int, float, str, list, tuple)):
            parts.append(f"{RENAMED.get(key, key)}{_value_text(value)}")
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))
    digest = hashlib.sha1(json.dumps([strategy, resolved], sort_keys=True, default=repr).encode()).hexdigest()[:10]
    if any(_rounded(v) for v in resolved.values()) and len(slug) <= _MAX_SLUG:
        slug = f"{slug}-{digest}"
    if len(slug) > _MAX_SLUG:
        slug = f"{slug[:_MAX_SLUG - 11]}-{digest}"
    return slug


def config_slug(config) -> str:
    """The slug of a run's pruning configuration (a `run_config.PruningConfig`): the
    strategy, its parameters and, when importances are scored on calibration images, how many, since
    that changes the result too."""
    if not config.enabled:
        return BASELINE_SLUG
    resolved = dict(config.resolved)
    if getattr(config, "calibration_images", None):
        resolved["calib"] = int(config.calibration_images)
    return pruning_slug(config.strategy, resolved)


def output_template(template: str, slug: str, pruned: bool) -> str:
    """clip_benchmark's `--output` template with the pruning slug in it.

    `{pruning}` is replaced wherever the user put it. A pruned run whose template lacks it gets
    `_<slug>` before the extension, so it can never land on its baseline's file. Braces in the slug
    are impossible (see `pruning_slug`), so clip_benchmark's own `.format` still sees only its keys.
    """
    if PLACEHOLDER in template:
        return template.replace(PLACEHOLDER, slug)
    if not pruned:
        return template
    stem, ext = os.path.splitext(template)
    if not ext or "{" in ext:
        stem, ext = template, ""
    return f"{stem}_{slug}{ext}"


def feature_cache_id(model_id: str, slug: str) -> str:
    """The linear-probe feature cache folder of a pruned run; a baseline keeps clip_benchmark's own id."""
    return model_id if slug == BASELINE_SLUG else f"{model_id}__{slug}"
