"""How close a pruned encoder's image features stay to the unpruned ones (seed 002's measures).

Reported beside accuracy: accuracy can hide a drift the next task would see, and fidelity needs no
labels. Per image, the cosine similarity of the pruned and the unpruned feature vectors; over all
images, their mean and minimum, the mean squared error of the raw features, and the MSE relative to
the mean squared norm of the unpruned features (so encoders of different scales compare).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F


class FidelityMeter:
    """Accumulates feature fidelity over batches: `update(reference, pruned)`, then `result()`."""

    def __init__(self):
        self.images = 0
        self._cos_sum = 0.0
        self._cos_min = float("inf")
        self._sq_err = 0.0
        self._sq_ref = 0.0
        self._elements = 0

    def update(self, reference: torch.Tensor, pruned: torch.Tensor) -> None:
        if reference.shape != pruned.shape:
            raise ValueError(f"feature shapes differ: reference {tuple(reference.shape)}, pruned {tuple(pruned.shape)}")
        ref = reference.detach().double().flatten(1)
        out = pruned.detach().double().flatten(1)
        cos = F.cosine_similarity(out, ref, dim=1)
        self.images += len(ref)
        self._cos_sum += cos.sum().item()
        self._cos_min = min(self._cos_min, cos.min().item())
        self._sq_err += (out - ref).pow(2).sum().item()
        self._sq_ref += ref.pow(2).sum().item()
        self._elements += ref.numel()

    def result(self) -> dict:
        if not self.images:
            raise ValueError("no features compared yet")
        mse = self._sq_err / self._elements
        return {
            "cosine_mean": self._cos_sum / self.images,
            "cosine_min": self._cos_min,
            "mse": mse,
            "relative_mse": mse / (self._sq_ref / self._elements) if self._sq_ref > 0 else float("nan"),
            "images": self.images,
        }


def feature_fidelity(reference: torch.Tensor, pruned: torch.Tensor) -> dict:
    """Fidelity of one set of features (N, D) against its reference."""
    meter = FidelityMeter()
    meter.update(reference, pruned)
    return meter.result()


def image_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """What the image encoder emits (its family's image path: a CLIP image embedding, a classifier's output)."""
    from ..families import image_tower

    out = image_tower(model)(images)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def measure_fidelity(model: torch.nn.Module, batches: Iterable, strategy, **params) -> dict:
    """Prune `model` with `strategy` (anything `pb.prune` takes) and compare its features on `batches`
    with the unpruned model's; the model is restored afterwards. Batches are image tensors or
    (images, ...) tuples."""
    from ..api import prune

    batches = [b[0] if isinstance(b, (list, tuple)) else b for b in batches]
    references = [image_features(model, x) for x in batches]
    meter = FidelityMeter()
    with prune(model, strategy, **params):
        for x, ref in zip(batches, references):
            meter.update(ref, image_features(model, x))
    return meter.result()
