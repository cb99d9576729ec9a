"""`--extract_attention`: one forward of the first images with attention recording on, which collects each
block's class-token attention and kept token indices (`record.attention` formats and saves the file)."""
from __future__ import annotations

import warnings
from typing import Any

import torch

from ..families import encode_images
from ..record.attention import attention_file


def record_attention(model, images: torch.Tensor, handle=None, family=None) -> dict[str, Any]:
    """Forward `images` once with attention recording on; the per-block lists of the saved file.
    `family`: the model's located family, when the caller has it."""
    from ..api import make_strategy, prune_located

    run = handle.token_run if handle is not None else None
    probe_handle = None
    if run is None:  # unpruned (or structurally pruned) model: a selection that keeps every token
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            probe_handle = prune_located(model, [make_strategy("cls_topk", {"keep": 10**9, "start_layer": 0})], family)
        run = probe_handle.token_run
    run.record_attention = True
    run.trace_source = True
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            encode_images(model, images, family)
        records = list(run.records)
        tokens = list(run.stats()["tokens_per_layer"])
    finally:
        run.record_attention = False
        run.trace_source = False
        if probe_handle is not None:
            probe_handle.restore()
    return attention_file(model, images, records, tokens, family)
