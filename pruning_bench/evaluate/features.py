"""Image-tower features (and head logits, when the model has a classifier) of a whole image set.

The unpruned model's features are the reference every pruned configuration is compared with, so
they are computed once per (model weights, data set, split, image count, preprocessing) and cached:
in memory for the run, and optionally on disk (`--feature_cache DIR`) so that separate
`pruning-bench eval` invocations (a baseline and several pruned runs) share them.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm


@dataclass
class Features:
    features: torch.Tensor  # (N, D) float32
    labels: torch.Tensor  # (N,) int64, -1 when unlabelled
    logits: torch.Tensor | None = None  # (N, classes) when the model has a classifier head
    seconds: float = 0.0  # wall time of the extraction (decoding included)

    def __len__(self) -> int:
        return len(self.features)


def encode(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled features before any classifier, logits or None) of one batch, as the model's family runs it."""
    from ..families import encode as family_encode

    return family_encode(model, images)


def extract(model: torch.nn.Module, batches, *, total: int | None = None, desc: str = "features",
            progress: bool = True) -> Features:
    """Features of every batch of (images, labels), in order, under torch.inference_mode."""
    feats, logits, labels = [], [], []
    start = time.perf_counter()
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", disable=not progress,
                                      dynamic_ncols=True, leave=False) as bar:
        for images, target in batches:
            f, z = encode(model, images.to(device))
            feats.append(f.float().cpu())
            if z is not None:
                logits.append(z.float().cpu())
            labels.append(torch.as_tensor(target))
            bar.update(len(images))
    return Features(torch.cat(feats), torch.cat(labels).long(), torch.cat(logits) if logits else None,
                    time.perf_counter() - start)


class FeatureCache:
    """Unpruned features by key; `get(key, compute)` computes each key at most once per run.

    With a directory, entries are also saved there (`<sha1 of key>.pt`, the key stored inside and
    checked on load), so later runs with the same weights and data reuse them.
    """

    def __init__(self, directory: str | None = None):
        self.directory = Path(directory) if directory else None
        self._memory: dict[str, Features] = {}
        self.hits: list[str] = []

    @staticmethod
    def key(**parts) -> str:
        return json.dumps(parts, sort_keys=True, default=str)

    def _path(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha1(key.encode()).hexdigest()}.pt"

    def get(self, key: str, compute) -> Features:
        if key in self._memory:
            self.hits.append("memory")
            return self._memory[key]
        if self.directory is not None and self._path(key).is_file():
            stored = torch.load(self._path(key), map_location="cpu", weights_only=True)
            if stored.get("key") == key:
                self.hits.append("disk")
                self._memory[key] = Features(stored["features"], stored["labels"], stored.get("logits"),
                                             float(stored.get("seconds", 0.0)))
                return self._memory[key]
        value = compute()
        self._memory[key] = value
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            torch.save({"key": key, "features": value.features, "labels": value.labels, "logits": value.logits,
                        "seconds": value.seconds}, self._path(key))
        return value
