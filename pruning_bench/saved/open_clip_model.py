"""Saving and rebuilding an open_clip model (CLIP, CustomTextCLIP, CoCa) whose image tower was pruned.

The whole model is saved, text tower included: zero-shot evaluation needs it. An open_clip model
does not carry the name of the config it was created from, so the name comes from `model_name=`, or
from the model when a driver of this package created or loaded it (`pb_open_clip_model`, or the
record of a model loaded with `load_pruned`). The record holds that name and the config itself
(with what creation-time overrides changed, read off the model: image size, context length,
QuickGELU), the preprocessing config, and the widths and kept blocks of the image tower.

Rebuilding calls `open_clip.create_model(name, pretrained=None)` (nothing is downloaded) when the
name is registered in the loading process with the recorded config; a config that is not (a custom
config on a fresh machine, or one changed at creation) is built from the record with the class
open_clip's factory would choose. Dropped blocks then leave `resblocks` (kept indices recorded on
the container, as layer_drop does) and each kept block is cut to its widths.
"""
from __future__ import annotations

import copy
import json
import logging
from typing import Any

import torch
from torch import nn

from .common import block_record, dtype_name, jsonable, probe_images, shrink_blocks, token_strategy

family = "open_clip"
label = "open_clip CLIP / CustomTextCLIP / CoCa (created from a config name)"
NAME_ATTRIBUTE = "pb_open_clip_model"  # set by the drivers that create an open_clip model by name


def remember_name(model: nn.Module, name: str) -> nn.Module:
    """Note on `model` the config name it was created from, so `save_pruned` needs no `model_name=`."""
    setattr(model, NAME_ATTRIBUTE, name)
    return model


def _carried(model: nn.Module) -> dict:
    record = getattr(model, "pb_saved_architecture", None) or {}
    return record if record.get("family") == family else {}


def config_name(model: nn.Module, model_name: str | None) -> str:
    name = model_name or getattr(model, NAME_ATTRIBUTE, None) or _carried(model).get("open_clip_model")
    if not name:
        raise ValueError("save_pruned: an open_clip model does not carry its config name; pass model_name=NAME, "
                         "the name given to open_clip.create_model (e.g. model_name='ViT-B-32')")
    return str(name)


def _pair(size) -> list[int]:
    return [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]


def model_config(model: nn.Module, name: str, model_args: dict | None, located) -> dict[str, Any]:
    """open_clip's config for `name`, with `model_args` (create_model keyword overrides) and what the model
    (located as the family `located`) shows."""
    import open_clip

    cfg = open_clip.get_model_config(name)
    if cfg is None:
        carried = _carried(model)
        if carried.get("open_clip_model") != name:
            raise ValueError(f"model_name={name!r} is not an open_clip model config (open_clip.list_models() lists them)")
        cfg = copy.deepcopy(carried["model_cfg"])
    cfg.update(copy.deepcopy(model_args or {}))
    vision, text = cfg.setdefault("vision_cfg", {}), cfg.setdefault("text_cfg", {})
    size = getattr(model.visual, "image_size", None)
    if size is not None and _pair(size) != _pair(vision.get("image_size", 224)):
        vision["image_size"] = _pair(size)
    context = getattr(model, "context_length", None)
    if isinstance(context, int) and context != text.get("context_length", 77):
        text["context_length"] = context
    quick_gelu = located.uses_quick_gelu()
    if "timm_model_name" not in vision and quick_gelu != bool(cfg.get("quick_gelu", False)):
        cfg["quick_gelu"] = quick_gelu
    if not jsonable(cfg):
        raise ValueError(f"model_args={model_args!r}: open_clip config values must be JSON (numbers, strings, lists)")
    return json.loads(json.dumps(cfg))


def describe(model: nn.Module, tower, model_args: dict | None = None, model_name: str | None = None) -> dict[str, Any]:
    from open_clip import get_model_preprocess_cfg

    name = config_name(model, model_name)
    preprocess = {k: list(v) if isinstance(v, tuple) else v for k, v in get_model_preprocess_cfg(model).items()}
    return {
        "base": name, "builder": "open_clip.create_model", "open_clip_model": name,
        "model_class": type(model).__name__, "model_cfg": model_config(model, name, model_args, tower),
        "preprocess_cfg": {k: v for k, v in preprocess.items() if jsonable(v)},
        **block_record(tower),
        "dtype": dtype_name(model), "token_strategy": token_strategy(tower.vit),
    }


def _construct(cfg: dict) -> nn.Module:
    """The model class open_clip's factory picks for a config, built from it (no weights anywhere)."""
    from open_clip.coca_model import CoCa
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = copy.deepcopy(cfg)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    cls = (CoCa if "multimodal_cfg" in cfg else CustomTextCLIP) if custom_text else CLIP
    return cls(**cfg)


def _fresh(architecture: dict) -> nn.Module:
    import open_clip

    name, cfg = architecture["open_clip_model"], copy.deepcopy(architecture["model_cfg"])
    registered = open_clip.get_model_config(name)
    if registered is not None and json.loads(json.dumps(registered)) == cfg:
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # "no pretrained weights loaded": the saved ones load right after
        try:
            return open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False,
                                          device=torch.get_default_device())  # "meta" while validating a file
        finally:
            logging.disable(previous)
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    return _construct(cfg)


def build(architecture: dict[str, Any]) -> nn.Module:
    """An eval-mode model of the recorded architecture: created, blocks dropped, blocks cut to their widths."""
    from open_clip import set_model_preprocess_cfg

    from ..families import locate

    model = _fresh(architecture)
    tower = locate(model)
    owner, attribute = tower.blocks_owner
    container = getattr(owner, attribute)
    kept = [int(i) for i in architecture["blocks_kept"]]
    if not kept or sorted(set(kept)) != kept or kept[-1] >= len(container) or kept[0] < 0:
        raise ValueError(f"blocks_kept {kept} does not fit the rebuilt model's {len(container)} blocks")
    running = [container[i] for i in kept]
    new = type(container)(running) if isinstance(container, nn.ModuleList) else nn.Sequential(*running)
    new.pb_kept_indices = kept
    setattr(owner, attribute, new)
    shrink_blocks(tower, architecture["heads_per_block"], architecture["mlp_hidden_per_block"])
    if architecture.get("preprocess_cfg"):
        set_model_preprocess_cfg(model, {k: tuple(v) if isinstance(v, list) else v
                                         for k, v in architecture["preprocess_cfg"].items()})
    model.to(getattr(torch, architecture.get("dtype", "float32")))
    return model.eval()


def saved_module(model: nn.Module) -> nn.Module:
    return model


def _text_shape(model: nn.Module) -> tuple[int | None, int | None]:
    for part in (model, getattr(model, "text", None)):
        vocab, context = getattr(part, "vocab_size", None), getattr(part, "context_length", None)
        if isinstance(vocab, int) and isinstance(context, int):
            return vocab, context
    return None, None


def probe_outputs(model: nn.Module, architecture: dict) -> tuple[torch.Tensor, ...]:
    """encode_image on two random images and encode_text on two random token rows (when the text side is known)."""
    from ..families import locate

    dims = locate(model).dims()
    out = (model.encode_image(probe_images(dims.in_chans, dims.image_size, getattr(torch, architecture["dtype"]))),)
    vocab, context = _text_shape(model)
    if vocab is not None:
        tokens = torch.randint(0, vocab, (2, context), generator=torch.Generator().manual_seed(0))
        out += (model.encode_text(tokens),)
    return out


def mismatch_hint() -> str:
    return ("check model_name= (the config the model was created from) and pass create_model's keyword overrides "
            "with model_args=")


# ---------------------------------------------------------------- what drivers need beside the model


def transform(model: nn.Module):
    """open_clip's evaluation preprocessing for the (loaded) model, as create_model_and_transforms builds it."""
    from open_clip import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    return image_transform_v2(PreprocessCfg(**get_model_preprocess_cfg(model)), is_train=False)


def tokenizer(model: nn.Module):
    """The tokenizer of the recorded config: open_clip's for a registered name, else from the recorded text config."""
    import open_clip

    architecture = model.pb_saved_architecture
    name = architecture["open_clip_model"]
    _, context = _text_shape(model)
    if open_clip.get_model_config(name) is not None:
        return open_clip.get_tokenizer(name, context_length=context)
    text = architecture["model_cfg"].get("text_cfg", {})
    if "hf_tokenizer_name" in text:
        return open_clip.HFTokenizer(text["hf_tokenizer_name"], context_length=context,
                                     **text.get("tokenizer_kwargs", {}))
    return open_clip.SimpleTokenizer(context_length=context)
