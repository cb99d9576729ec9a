"""Per-image outcomes of a clip_benchmark evaluation, and `--max_samples`: the first N images of the split.

clip_benchmark returns only averages. Its own functions are observed, never re-implemented:
- zero-shot classification and linear probe: both score the test set with `accuracy(logits, target)`
  (the compat module's `topk_accuracy`, the one installed in both modules); the last call of an
  evaluation is the test set (the linear probe's earlier calls score its validation split), so
  its logits give top-1 correctness per image, whose mean is `acc1` / `lp_acc1` exactly;
- zero-shot retrieval: `batchify(recall_at_k, ...)` returns each query's recall; the calls come in the
  order of `recall_k` (image retrieval, then text retrieval, for each k), so each metric gets its
  per-query hit list (`recall > 0`, the metric's own test), whose mean is the metric.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from ..record import identity
from . import compat


class Outcomes:
    """What one evaluation's scoring saw: per-image correctness, per-query hits, the image count."""

    def __init__(self, task: str, recall_k: list[int] | None = None):
        self.task, self.recall_k = task, list(recall_k or [])
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.recalls: list[torch.Tensor] = []
        self.images: int | None = None

    @contextlib.contextmanager
    def observing(self, module):
        """For the duration: the task module's scoring functions also report here."""
        if self.task == "zeroshot_retrieval":
            original = module.batchify

            def batchify(func, X, Y, *a, **kw):
                result = original(func, X, Y, *a, **kw)
                if func is module.recall_at_k:
                    self.recalls.append(result)
                    self.images = int(X.shape[1]) if len(self.recalls) % 2 == 1 else int(X.shape[0])
                return result

            module.batchify = batchify
            try:
                yield self
            finally:
                module.batchify = original
            return
        compat.ACCURACY_RECORDERS.append(self.calls)
        try:
            yield self
        finally:
            compat.ACCURACY_RECORDERS.remove(self.calls)

    def fields(self) -> dict[str, Any]:
        """`per_image` or `per_query` for the result, and the image count (empty when nothing was seen)."""
        if self.task == "zeroshot_retrieval":
            names = [f"{kind}_retrieval_recall@{k}" for k in self.recall_k for kind in ("image", "text")]
            if len(self.recalls) != len(names):
                return {}
            return {"images": self.images,
                    "per_query": {name: identity.packed((r > 0).numpy()) for name, r in zip(names, self.recalls)}}
        if not self.calls:
            return {}
        logits, target = self.calls[-1]
        if target.ndim != 1:  # multi-label: no single correct class per image
            return {"images": int(len(target))}
        return {"images": int(len(target)), "per_image": identity.packed(identity.top1_correct(logits, target))}


class _Subset(torch.utils.data.Subset):
    """The first N items of a map-style data set, keeping the attributes clip_benchmark reads from it."""

    def __getattr__(self, name):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)


def first_n(dataset, n: int):
    """The first `n` images of `dataset` in its own order (a webdataset stream is sliced, so nothing after is read)."""
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if not hasattr(dataset, "slice"):
            raise ValueError(f"--max_samples cannot limit a {type(dataset).__name__} stream")
        return dataset.slice(n)
    return _Subset(dataset, range(min(n, len(dataset))))


def run_identity(args, config, seen: dict[str, Any], root: str, output: str | None, *, model=None,
                 first_batch=None) -> dict[str, Any]:
    """The result fields that say what the run was (`record.identity`): seed, the test images, the outcomes
    seen, the file's own name and, when no `efficiency` block holds them, the settings that timing and
    numerics depend on (batch size, amp, dtype, device, threads, image size)."""
    fields = {"seed": args.seed,
              "data": {"test": identity.test_block(split=getattr(args, "split", "test"), images=seen.get("images"),
                                                   dataset_root=root, max_samples=config.max_samples)},
              **{k: v for k, v in seen.items() if k in ("per_image", "per_query")}}
    if output:
        fields["result_file"] = os.path.basename(output)
    if not config.measure_efficiency and model is not None:
        from ..measure.run_efficiency import compute_dtype

        images = seen.get("images")
        fields.update(batch_size=min(args.batch_size, images or args.batch_size), amp=bool(args.amp),
                      device=str(args.device), dtype=compute_dtype(args.device, args.amp, model),
                      threads=torch.get_num_threads())
        if first_batch is not None:
            fields["image_size"] = list(first_batch.shape[-2:])
    return fields
