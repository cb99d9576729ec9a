"""Do these images fit the model's image tower? Asked before a forward pass is traced for counting.

A 1-channel batch, or a resolution the position embedding was not built for, otherwise fails deep
inside the trace (a convolution's channel error, timm's "Input height (48) doesn't match model (32)")
as a traceback that names neither the images nor the model's expected shape.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


def fit_dims(family):
    """The dims of a located family (None: a model of no supported family, or one whose dims cannot be read)."""
    if family is None:
        return None
    try:
        return family.dims()
    except (AttributeError, TypeError):  # not a ViT this package can measure: no shape to check
        return None


def check_channels(dims, images) -> None:
    """`dims`: the model's `fit_dims`, or None (nothing to check)."""
    if dims is not None and isinstance(images, torch.Tensor) and images.ndim == 4 and images.shape[1] != dims.in_chans:
        raise ValueError(f"images have {images.shape[1]} channel(s) (shape {tuple(images.shape)}) but the model's "
                         f"patch embedding takes {dims.in_chans}; preprocess them as the model expects "
                         f"(e.g. images.expand(-1, {dims.in_chans}, -1, -1) for grey images)")


@contextmanager
def naming_size_mismatch(dims, images):
    """An error from the traced forward becomes a ValueError when the images' size is not the model's (`dims`)."""
    try:
        yield
    except (RuntimeError, AssertionError) as exc:
        size = tuple(images.shape[-2:]) if isinstance(images, torch.Tensor) else None
        if dims is None or size is None or tuple(dims.image_size) == size:
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"images of size {size[0]}x{size[1]} do not fit the model, built for "
                         f"{dims.image_size[0]}x{dims.image_size[1]} ({type(exc).__name__}: {first})") from None
