"""Images with NaN or infinite values are refused before they shape a pruning decision.

A calibration batch of NaN images makes every importance score NaN: Fisher or Taylor ranking then
keeps arbitrary heads, without a word. The check is one reduction over each batch as it is used.
"""
from __future__ import annotations

import torch


def non_finite_images(images: torch.Tensor) -> torch.Tensor:
    """Indices of the images (first dimension) holding a NaN or an infinity."""
    if not isinstance(images, torch.Tensor) or not images.is_floating_point() or images.ndim == 0:
        return torch.zeros(0, dtype=torch.long)
    bad = ~torch.isfinite(images.detach()).reshape(images.shape[0], -1).all(dim=1)
    return bad.nonzero().flatten().cpu()


def refuse_non_finite(images: torch.Tensor, what: str) -> None:
    """ValueError naming `what` (e.g. "calibration batch 0") when any image in it is not finite."""
    bad = non_finite_images(images)
    if len(bad):
        raise ValueError(f"{what} holds {len(bad)} of {images.shape[0]} image(s) with NaN or infinite values "
                         f"(first: image {int(bad[0])}); importance scores from them would be NaN and the "
                         f"pruning decision arbitrary")
