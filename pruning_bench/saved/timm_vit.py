"""Saving and rebuilding a timm `VisionTransformer` (pruned, layer-dropped or fine-tuned).

The record holds the timm architecture name (or the class, for a ViT built by hand) with the
constructor arguments read off the model for the kept depth, plus the timm `pretrained_cfg` entries
preprocessing needs. The rebuilt model is built at the kept depth and each block is cut to its widths.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .common import block_record, dtype_name, jsonable, probe_images, shrink_blocks, token_strategy

family = "timm"
label = "timm VisionTransformer"
PRETRAINED_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "architecture", "tag")


def _is_identity(module) -> bool:
    return module is None or isinstance(module, nn.Identity)


def constructor_args(vit: nn.Module, located) -> dict[str, Any]:
    """timm `VisionTransformer` arguments read off a (possibly pruned) model, for the kept depth.

    Heads count from the head width (embed_dim / head_dim) and the MLP width from the widest block,
    so every block can be sliced down to its own size after building."""
    blocks = list(vit.blocks)
    first = blocks[0]
    attn, mlp = first.attn, first.mlp
    _, hidden = located.block_widths()
    embed = int(vit.embed_dim)
    patch = vit.patch_embed
    return {
        "img_size": list(patch.img_size), "patch_size": list(patch.patch_size),
        "in_chans": int(patch.proj.in_channels), "num_classes": int(vit.num_classes),
        "global_pool": vit.global_pool, "embed_dim": embed, "depth": len(blocks),
        "num_heads": embed // int(attn.head_dim), "mlp_ratio": (max(hidden) + 0.5) / embed,
        "qkv_bias": attn.qkv.bias is not None, "qk_norm": not _is_identity(getattr(attn, "q_norm", None)),
        "scale_attn_norm": not _is_identity(getattr(attn, "norm", None)),
        "scale_mlp_norm": not _is_identity(getattr(mlp, "norm", None)),
        "proj_bias": attn.proj.bias is not None,
        "init_values": 1.0 if not _is_identity(getattr(first, "ls1", None)) else None,
        "class_token": bool(vit.has_class_token), "reg_tokens": int(vit.num_reg_tokens),
        "no_embed_class": bool(vit.no_embed_class), "pre_norm": not _is_identity(vit.norm_pre),
        "final_norm": not _is_identity(vit.norm), "fc_norm": not _is_identity(vit.fc_norm),
        "dynamic_img_size": bool(vit.dynamic_img_size),
        "pos_embed": "learn" if getattr(vit, "pos_embed", None) is not None else "none",
    }


def describe(model: nn.Module, located, model_args: dict | None = None, model_name: str | None = None) -> dict[str, Any]:
    """The timm part of the record; `model_name` is not needed (timm models carry their architecture)."""
    import timm

    vit = located.core
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    known = bool(architecture) and timm.is_model(architecture)
    return {
        "base": "reference" if getattr(vit, "reference_source", None) else (architecture if known else None),
        "builder": "timm.create_model" if known else "VisionTransformer",
        "architecture": architecture if known else None,
        "constructor_args": {**(model_args or {}), **constructor_args(vit, located)},
        **block_record(located),
        "dtype": dtype_name(vit),
        "pretrained_cfg": {k: cfg[k] for k in PRETRAINED_CFG_KEYS if k in cfg and jsonable(cfg[k])},
        "token_strategy": token_strategy(vit),
    }


def build(architecture: dict[str, Any]) -> nn.Module:
    """An eval-mode model of the recorded architecture (weights uninitialised in meaning, right in shape)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from ..families import locate

    kwargs = dict(architecture["constructor_args"])
    for key in ("img_size", "patch_size"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if architecture["builder"] == "timm.create_model":
        model = timm.create_model(architecture["architecture"], pretrained=False, **kwargs)
    else:
        model = VisionTransformer(**kwargs)
    shrink_blocks(locate(model), architecture["heads_per_block"], architecture["mlp_hidden_per_block"])
    model.blocks.pb_kept_indices = list(architecture["blocks_kept"])
    if architecture.get("pretrained_cfg"):
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in architecture["pretrained_cfg"].items()})
        model.pretrained_cfg = cfg
    model.to(getattr(torch, architecture.get("dtype", "float32")))
    return model.eval()


def saved_module(model: nn.Module) -> nn.Module:
    return model


def probe_outputs(model: nn.Module, architecture: dict) -> tuple[torch.Tensor, ...]:
    """What must be bit-identical between the model and its rebuild: logits on two random images."""
    args = architecture["constructor_args"]
    return (model(probe_images(args["in_chans"], args["img_size"], getattr(torch, architecture["dtype"]))),)


def mismatch_hint() -> str:
    return "pass the constructor arguments it does not reveal with model_args="
