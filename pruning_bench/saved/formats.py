"""The saved formats, one module each, and a model built from an architecture record by its format.

Apart from `__init__` so `validate` can build a record's model on the meta device without importing the
package it is part of (which imports `validate`).
"""
from __future__ import annotations

from typing import Any

from torch import nn

from . import open_clip_model, timm_vit, transformers_model
from .common import FORMAT, first_line

FAMILIES = (timm_vit, open_clip_model, transformers_model)


def family_for(architecture: dict[str, Any]):
    """The family module of a record (files written before families were recorded are timm)."""
    name = architecture.get("family", timm_vit.family)
    for family in FAMILIES:
        if family.family == name:
            return family
    raise ValueError(f"saved model family {name!r} is not one of {', '.join(f.family for f in FAMILIES)}")


def build(architecture: dict[str, Any]) -> nn.Module:
    """An eval-mode model of the recorded architecture (weights uninitialised in meaning, right in shape)."""
    if architecture.get("format") != FORMAT:
        raise ValueError(f"not a pruning-bench saved model (format {architecture.get('format')!r}, expected {FORMAT})")
    family = family_for(architecture)
    try:
        return family.build(architecture)
    except (KeyError, TypeError, IndexError) as exc:  # a record edited by hand or cut short
        raise ValueError(f"the saved {family.family} architecture record is incomplete or malformed "
                         f"({type(exc).__name__}: {first_line(exc)})") from None
