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


def _value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    if isinstance(value, (list, tuple)):
        return "x".join(_value_text(v) for v in value)
    return str(value)


def pruning_slug(strategy: str | None, resolved: dict[str, Any]) -> str:
    """`anchor_diversity-alpha0.5-k_anchors10-start_layer1-top_m50`: the strategy and every scalar parameter.

    Parameters that are None (unset options) or not plain values (a calibration iterable) are left
    out; an over-long slug is cut and completed by a hash of the full configuration, so distinct
    configurations stay distinct.
    """
    if not strategy:
        return BASELINE_SLUG
    parts = [strategy]
    for key in sorted(resolved):
        value = resolved[key]
        if isinstance(value, (bool, int, float, str, list, tuple)):
            parts.append(f"{key}{_value_text(value)}")
    slug = re.sub(r"[^A-Za-z0-9_.+-]", "_", "-".join(parts))
    if len(slug) > _MAX_SLUG:
        digest = hashlib.sha1(json.dumps([strategy, resolved], sort_keys=True, default=repr).encode()).hexdigest()[:10]
        slug = f"{slug[:_MAX_SLUG - 11]}-{digest}"
    return slug


def config_slug(config) -> str:
    """The slug of a run's pruning configuration (a `clip_benchmark_ext.flags.PruningConfig`): the
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
