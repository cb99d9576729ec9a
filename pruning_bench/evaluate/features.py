"""Image-tower features (and head logits, when the model has a classifier) of a whole image set.

The unpruned model's features are the reference every pruned configuration is compared with, so
they are computed once per (model weights, data set, split, image count, preprocessing) and cached:
in memory for the run, and optionally on disk (`--feature_cache DIR`) so that separate
`pruning-bench eval` invocations (a baseline and several pruned runs) share them.
"""
from __future__ import annotations

import hashlib
import json
import sys
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


def encode(model: torch.nn.Module, images: torch.Tensor, family=None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled features before any classifier, logits or None) of one batch, as the model's family runs it."""
    from ..families import encode as family_encode

    return family_encode(model, images, family)


def extract(model: torch.nn.Module, batches, *, total: int | None = None, desc: str = "features",
            progress: bool = True, family=None) -> Features:
    """Features of every batch of (images, labels), in order, under torch.inference_mode."""
    feats, logits, labels = [], [], []
    start = time.perf_counter()
    device = next(model.parameters()).device
    with torch.inference_mode(), tqdm(total=total, desc=desc, unit="img", disable=not progress,
                                      dynamic_ncols=True, leave=False) as bar:
        for images, target in batches:
            f, z = encode(model, images.to(device), family)
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
        self.notes: list[str] = []

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
            stored = self._read(key)
            if stored is not None:
                self.hits.append("disk")
                self._memory[key] = stored
                return stored
        value = compute()
        self._memory[key] = value
        if self.directory is not None:
            from ..record.atomic import atomic_path

            with atomic_path(self._path(key)) as tmp:  # a killed run leaves no half-written entry
                torch.save({"key": key, "features": value.features, "labels": value.labels, "logits": value.logits,
                            "seconds": value.seconds}, tmp)
        return value

    def _read(self, key: str) -> Features | None:
        """The stored entry, or None (with a note) when it is truncated, foreign or not for this key."""
        path = self._path(key)
        try:  # weights only: an entry is never unpickled with code
            stored = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(stored, dict) or stored.get("key") != key:
                raise ValueError("written for another key" if isinstance(stored, dict) else "not a cache entry")
            value = Features(stored["features"], stored["labels"], stored.get("logits"),
                             float(stored.get("seconds", 0.0)))
            if not (isinstance(value.features, torch.Tensor) and isinstance(value.labels, torch.Tensor)
                    and len(value.features) == len(value.labels)):
                raise ValueError("its tensors do not match")
            return value
        except Exception as exc:  # noqa: BLE001 - truncated zip, foreign pickle, missing field: recompute
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
            self.notes.append(f"feature cache entry {path} unusable ({type(exc).__name__}: {reason}); recomputed")
            print(f"pruning-bench eval: {self.notes[-1]}", file=sys.stderr)
            return None
