"""Saving and rebuilding a `transformers` vision model (DINOv2, ViT, DeiT, CLIP, SigLIP, ...) whose
image encoder was pruned.

The record holds the class name and the model's configuration (`config.to_dict()`, which transformers
rebuilds offline with `config_class.from_dict`), the widths and kept blocks of the image encoder, and
the input normalisation used to evaluate it. Rebuilding constructs the class from the configuration
(nothing is downloaded), drops the blocks that were dropped (kept indices recorded on the container,
as layer_drop does) and cuts each kept block to its widths with the family's own views.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .common import block_record, dtype_name, jsonable, probe_images, shrink_blocks, token_strategy

family = "transformers"
label = "transformers vision models (DINOv2, ViT, DeiT, CLIP, SigLIP)"


def describe(model: nn.Module, located, model_args: dict | None = None, model_name: str | None = None) -> dict[str, Any]:
    config = model.config.to_dict()
    if not jsonable(config):
        raise ValueError(f"the {type(model).__name__} configuration holds values that are not JSON")
    return {
        "base": model_name or getattr(model.config, "_name_or_path", None) or type(model).__name__,
        "builder": "transformers", "model_class": type(model).__name__, "config": config,
        **block_record(located),
        "dtype": dtype_name(model), "token_strategy": token_strategy(located.vit),
        "normalisation": getattr(model, "pb_normalisation", None),
    }


def build(architecture: dict[str, Any]) -> nn.Module:
    """An eval-mode model of the recorded architecture: constructed, blocks dropped, blocks cut to their widths."""
    import transformers

    from ..families import locate

    cls = getattr(transformers, architecture["model_class"], None)
    if cls is None or not isinstance(cls, type) or not issubclass(cls, transformers.PreTrainedModel):
        raise ValueError(f"transformers has no model class {architecture['model_class']!r}")
    model = cls(cls.config_class.from_dict(architecture["config"]))
    located = locate(model)
    owner, attribute = located.blocks_owner
    container = getattr(owner, attribute)
    kept = [int(i) for i in architecture["blocks_kept"]]
    if not kept or sorted(set(kept)) != kept or kept[-1] >= len(container) or kept[0] < 0:
        raise ValueError(f"blocks_kept {kept} does not fit the rebuilt model's {len(container)} blocks")
    new = type(container)([container[i] for i in kept])
    new.pb_kept_indices = kept
    setattr(owner, attribute, new)
    shrink_blocks(located, architecture["heads_per_block"], architecture["mlp_hidden_per_block"])
    if architecture.get("normalisation"):
        model.pb_normalisation = architecture["normalisation"]
    model.to(getattr(torch, architecture.get("dtype", "float32")))
    return model.eval()


def saved_module(model: nn.Module) -> nn.Module:
    return model


def probe_outputs(model: nn.Module, architecture: dict) -> tuple[torch.Tensor, ...]:
    """Image features (and logits of a classifier) on two random images."""
    from ..families import locate

    located = locate(model)
    dims = located.dims()
    features, logits = located.features(probe_images(dims.in_chans, dims.image_size, getattr(torch, architecture["dtype"])))
    return (features,) if logits is None else (features, logits)


def mismatch_hint() -> str:
    return "the configuration does not describe the model as it runs (was it changed after construction?)"
