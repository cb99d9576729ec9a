"""How close a pruned encoder's image features and predictions stay to the unpruned ones, with or
without labels: the one fidelity module.

Reported beside accuracy: accuracy can hide a drift the next task would see, and fidelity needs no
labels. Per image, the cosine similarity of the pruned and the unpruned feature vectors; over all
images, their mean and minimum, the mean squared error of the raw features, and the MSE relative to
the mean squared norm of the unpruned features (so encoders of different scales compare): seed 002's
measures (`FidelityMeter`, `feature_fidelity`, `measure_fidelity`).

Raw cosine flatters: the features of a ViT share a large common component (on the reference
DINOv2 ViT-S/14, two *different* images already have raw cosine around 0.7), so even a badly
damaged feature keeps a high raw cosine with its original. The centred cosine subtracts the mean of
the unpruned features of the evaluated images first, leaving only what tells images apart; both are
reported (`cosine_metrics`), and `reference_pairwise_cosine` (the mean raw cosine between different
images, unpruned) shows the floor raw cosine starts from.

Agreement is the share of images whose top-1 decision is unchanged by pruning:
- `classifier`: a probe or the model's own head, the argmax of its logits;
- `nearest_neighbour` (label-free, no classifier): each image's nearest *other* image among the
  unpruned features (centred cosine); pruning agrees when the pruned feature's nearest other
  unpruned feature is the same image. `self_retrieval_at1` is the easier test: the pruned feature's
  nearest unpruned feature is its own image's.
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


# ---------------------------------------------------------------- centred cosine and agreement (pruning-bench eval)


def _centred_unit(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.double() - centre, dim=1)


def cosine_metrics(reference: torch.Tensor, pruned: torch.Tensor, centre: torch.Tensor | None = None) -> dict:
    """Raw and centred cosine (mean and min over images) and relative MSE of pruned vs unpruned features."""
    raw = feature_fidelity(reference, pruned)
    centre = reference.double().mean(0) if centre is None else centre.double()
    centred = (_centred_unit(reference, centre) * _centred_unit(pruned, centre)).sum(1)
    return {
        "cosine": raw["cosine_mean"],
        "cosine_min": raw["cosine_min"],
        "cosine_centred": float(centred.mean()),
        "cosine_centred_min": float(centred.min()),
        "relative_mse": raw["relative_mse"],
    }


def pairwise_cosine(features: torch.Tensor) -> float | None:
    """Mean raw cosine between the features of different images (None for a single image)."""
    n = len(features)
    if n < 2:
        return None
    unit = F.normalize(features.double(), dim=1)
    gram = unit @ unit.T
    return float((gram.sum() - gram.diagonal().sum()) / (n * (n - 1)))


def agreement(reference_pred, pruned_pred) -> float:
    reference_pred, pruned_pred = torch.as_tensor(reference_pred), torch.as_tensor(pruned_pred)
    return float((reference_pred == pruned_pred).double().mean())


def neighbour_agreement(reference: torch.Tensor, pruned: torch.Tensor, centre: torch.Tensor | None = None) -> dict:
    """Label-free agreement of the nearest other image, and self-retrieval at 1 (see module docstring)."""
    n = len(reference)
    centre = reference.double().mean(0) if centre is None else centre.double()
    ref, out = _centred_unit(reference, centre), _centred_unit(pruned, centre)
    cross = out @ ref.T  # (pruned image, unpruned image)
    self_retrieval = float((cross.argmax(1) == torch.arange(n)).double().mean())
    if n < 3:  # with two images the nearest other image is forced
        return {"nearest_neighbour_agreement": None, "self_retrieval_at1": self_retrieval}
    eye = torch.eye(n, dtype=torch.bool)
    ref_nn = (ref @ ref.T).masked_fill(eye, float("-inf")).argmax(1)
    out_nn = cross.masked_fill(eye, float("-inf")).argmax(1)
    return {"nearest_neighbour_agreement": agreement(ref_nn, out_nn), "self_retrieval_at1": self_retrieval}


def fidelity_metrics(reference, pruned, *, centre=None, reference_logits=None, pruned_logits=None) -> dict:
    """Every label-free measure of one configuration; `agreement` is the classifier's when logits are given,
    else the nearest-neighbour agreement (`agreement_kind` says which)."""
    metrics = cosine_metrics(reference.features, pruned.features, centre)
    metrics.update(neighbour_agreement(reference.features, pruned.features, centre))
    metrics["reference_pairwise_cosine"] = pairwise_cosine(reference.features)
    if reference_logits is not None and pruned_logits is not None:
        metrics["agreement"] = agreement(reference_logits.argmax(1), pruned_logits.argmax(1))
        metrics["agreement_kind"] = "classifier"
    else:
        metrics["agreement"] = metrics["nearest_neighbour_agreement"]
        metrics["agreement_kind"] = "nearest_neighbour"
    metrics["images"] = len(reference)
    return metrics
