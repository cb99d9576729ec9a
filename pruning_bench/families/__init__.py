"""Model families: one adapter per family (see `base.Family`), found by `locate(model)`.

Every other module asks the located adapter (block layouts, attention and MLP views, dims, the image
path); none of them names a family's classes or probes their attribute names.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .attention import AttentionView, HeadWeights
from .base import ADAPTERS, BlockLayout, Family, register_family
from .mlp import MlpView
from . import timm_vit, timm_eva, open_clip_vit, hf_clip, hf_dinov2, hf_vit, hf_deit  # noqa: F401  (registration)


def supported() -> str:
    return "; ".join(a.label for a in ADAPTERS)


def locate(model: nn.Module) -> Family:
    """The adapter for the vision transformer inside `model`, or `UnsupportedModelError`."""
    for adapter in ADAPTERS:
        found = adapter.locate(model)
        if found is not None:
            return found
    visual = getattr(model, "visual", None)
    inner = type(getattr(visual, "trunk", visual)).__name__ if isinstance(visual, nn.Module) else type(model).__name__
    raise UnsupportedModelError(f"cannot patch {type(model).__name__} (image tower {inner}); supported: {supported()}")


locate_vit = locate  # the name the rest of the package grew up with


def image_tower(model: nn.Module) -> nn.Module:
    """The module whose forward runs `model`'s image path only (never a CLIP text tower).

    Models of no supported family fall back to `model.visual` or `model` itself, so totals can still
    be counted and timed."""
    try:
        return locate(model).encoder
    except UnsupportedModelError:
        return unlocated_tower(model)


def unlocated_tower(model: nn.Module) -> nn.Module:
    """The image tower of a model of no supported family: `model.visual`, or `model` itself."""
    visual = getattr(model, "visual", None)
    return visual if isinstance(visual, nn.Module) else model


def encode_images(model: nn.Module, images: torch.Tensor, family: Family | None = None) -> torch.Tensor:
    """Image features of one batch: the image embedding of CLIP-like models, pre-logits of a classifier.

    The one helper that runs an image encoder; unsupported modules run their own forward."""
    return encode(model, images, family)[0]


def encode(model: nn.Module, images: torch.Tensor, family: Family | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(image features, class logits or None) of one batch; `family`: the model's, when the caller located it."""
    try:
        family = family or locate(model)
    except UnsupportedModelError:
        run = getattr(model, "encode_image", None)
        out = run(images) if callable(run) else model(images)
        return (out[0] if isinstance(out, (tuple, list)) else out), None
    return family.features(images)
