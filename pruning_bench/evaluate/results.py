"""The result JSON of `pruning-bench eval`: clip_benchmark's keys plus the same `pruning` and
`efficiency` blocks as a `clip_benchmark eval --enable_pruning` run, so `pruning-bench report`
reads both alike.

Nothing here re-implements those blocks: file names, the `efficiency` block (measured by
`measure.run_efficiency`), the `pruning` block and the flat keys all come from `pruning_bench.record`,
which the clip_benchmark integration uses too.
"""
from __future__ import annotations

import os
from typing import Any

from ..measure import run_efficiency
from ..record import naming
from ..run_config import PruningConfig
from ..record import result as record

DEFAULT_OUTPUT = "{dataset}_{pretrained}_{model}_{language}_{task}_{pruning}.json"


def slug(config: PruningConfig) -> str:
    return naming.config_slug(config)


def output_path(template: str, *, config: PruningConfig, model: str, pretrained: str, dataset: str, task: str,
                language: str = "en") -> str:
    """`--output` with the pruning slug and clip_benchmark's fields filled in, as clip_benchmark names them."""
    template = naming.output_template(template, slug(config), config.enabled)
    if os.path.isdir(dataset):  # a folder of images is named after the folder
        name = os.path.basename(os.path.normpath(dataset))
    else:
        name = dataset[len("wds/"):] if dataset.startswith("wds/") else dataset
    pretrained_slug = os.path.basename(pretrained) if os.path.isfile(pretrained) else pretrained
    return template.format(model=model, pretrained=pretrained_slug,
                           pretrained_full_path=pretrained.replace("/", "_"), task=task,
                           dataset=name.replace("/", "_").strip("_") or "images", language=language)


def pruning_block(args, config: PruningConfig, handle, notes: list[str], model) -> dict | None:
    """The `pruning` block exactly as the clip_benchmark integration writes it."""
    return record.pruning_block(config, handle, notes, slug(config), model_loaded=model is not None)


def efficiency_block(model, images, *, handle, repeats: int, source: str, progress: bool | None = None,
                     family=None) -> dict[str, Any]:
    """GMACs, images/s and tokens per block of the encoder as evaluated (pruning still patched in)."""
    try:
        return run_efficiency.measure(model, images, device=str(images.device), amp=False, repeats=repeats,
                                      handle=handle, source=source, progress=progress, family=family)
    except Exception as exc:  # keep the metrics; say why efficiency is missing
        return {"error": f"{type(exc).__name__}: {exc}"}


def per_image(predictions, labels) -> dict:
    """Per-image correctness of the evaluated model, bit-packed (2,000 test images: 336 characters), stored as
    the result's `per_image` so `pruning-bench report` can bootstrap a paired difference over the images."""
    import numpy as np

    from ..report.uncertainty import pack_correct

    return pack_correct(np.asarray(predictions).reshape(-1) == np.asarray(labels).reshape(-1))


def result(*, dataset: str, model: str, pretrained: str, task: str, metrics: dict, pruning: dict | None,
           efficiency_record: dict | None, language: str = "en", **extra) -> dict[str, Any]:
    dump = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "metrics": metrics,
            "language": language, "pruning": pruning, "efficiency": efficiency_record}
    dump.update(extra)
    return record.complete(dump)


def write(path: str, dump: dict) -> str:
    """Atomically: an interrupted write never leaves a truncated file that would pass for a result."""
    from ..record import atomic

    atomic.write_json(path, dump, default=str)
    record.warn_if_ineffective(dump, "pruning-bench eval")
    return path
