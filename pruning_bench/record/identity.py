"""A run's identity and per-image outcomes, written into every result so the reporter pairs like with like.

A pruned run and its baseline are comparable only when everything that moves their numbers is equal
except the strategy: model, weights, dataset, its root, split, task, which images and how many, seed
(random-init weights and linear probes change with it), batch size, dtype and device (for timings).
Each driver (`clip_benchmark eval` through the plugin, `pruning-bench eval`, sweeps of either) writes
them the same way: the top-level `seed`, `result_file` (the file's own name, so a row of
`clip_benchmark build`'s CSV still says which run it is), and `data.test`:
`{split, images, dataset_root, subset, max_samples}`.

Outcomes per image make a paired bootstrap over the test images possible for a single pair of runs:
`per_image` holds top-1 correctness in evaluation order (bit-packed, see `report.uncertainty.pack_correct`);
retrieval writes `per_query`, one packed hit/miss list per recall metric (queries are texts for image
retrieval, images for text retrieval), and the reporter reads the list of the metric it reports.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np


def subset_rule(max_samples: int | None) -> str:
    """Which images were evaluated, in words that are equal exactly when the rule is."""
    if max_samples is None:
        return "all"
    return f"first {int(max_samples)}"


SUBSET_DOC = ("the first N images of the evaluated split's stream, in the order the data set stores them "
              "(CLIP_benchmark's webdatasets of these machines interleave classes, so any prefix is class-balanced)")


def test_block(*, split: str, images: int | None, dataset_root: str | None, max_samples: int | None) -> dict[str, Any]:
    """`data.test` of a result."""
    return {"split": split, "images": images,
            "dataset_root": os.path.abspath(dataset_root) if dataset_root and "://" not in dataset_root else dataset_root,
            "subset": subset_rule(max_samples), "max_samples": max_samples}


def packed(correct) -> dict[str, Any]:
    """0/1 outcomes per image (or query), in evaluation order, as stored in a result file."""
    from ..report.uncertainty import pack_correct

    return pack_correct(np.asarray(correct, dtype=bool).reshape(-1))


def top1_correct(logits, target) -> np.ndarray:
    """Per image: is the target the highest logit (ties broken as `topk` breaks them, like the accuracy itself)."""
    predicted = logits.topk(1, 1, True, True)[1][:, 0]
    return (predicted.cpu() == target.reshape(-1).to(predicted.device).cpu()).numpy()
