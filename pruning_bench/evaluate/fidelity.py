"""How far the pruned features and predictions move from the unpruned model's, with or without labels.

Raw cosine flatters: the features of a ViT share a large common component (on the reference
DINOv2 ViT-S/14, two *different* images already have raw cosine around 0.7), so even a badly
damaged feature keeps a high raw cosine with its original. The centred cosine subtracts the mean of
the unpruned features of the evaluated images first, leaving only what tells images apart; both are
reported, and `reference_pairwise_cosine` (the mean raw cosine between different images, unpruned)
shows the floor raw cosine starts from.

Agreement is the share of images whose top-1 decision is unchanged by pruning:
- `classifier`: a probe or the model's own head, the argmax of its logits;
- `nearest_neighbour` (label-free, no classifier): each image's nearest *other* image among the
  unpruned features (centred cosine); pruning agrees when the pruned feature's nearest other
  unpruned feature is the same image. `self_retrieval_at1` is the easier test: the pruned feature's
  nearest unpruned feature is its own image's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..measure.fidelity import feature_fidelity


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
