"""Save a pruned (sliced, layer-dropped or fine-tuned) timm ViT and load it back, without pickling modules.

The file is a safetensors file: the weights of the compact model as it runs, plus, in its metadata,
the architecture needed to rebuild it in a fresh process: the timm architecture name (or the class,
for a ViT built by hand) with the constructor arguments read off the model, the heads and MLP width of
each block, and which blocks of the original model are kept. Which heads or neurons were kept is not
stored: once weights are sliced only the sizes matter. Loading builds the model with the kept depth,
shrinks each block with the same slicing functions that pruning uses (`patches/structured.py`), and
loads the weights strictly; saving checks that the rebuilt model gives bit-identical outputs.

A model saved while a token strategy (ToMe, ...) is still patched in is saved as its plain compact
weights: a token strategy holds no weights and changes no shape. It is recorded in the metadata
(`token_strategy`, with its parameters) and a `UserWarning` says the loaded model runs without it.
"""
from __future__ import annotations

import json
import warnings
from typing import Any

import torch
from torch import nn

from .errors import UnsupportedModelError
from .record.atomic import atomic_path

FORMAT = "pruning_bench.saved/1"
METADATA_KEY = "pruning_bench"
PRETRAINED_CFG_KEYS = ("input_size", "mean", "std", "crop_pct", "interpolation", "architecture", "tag")


def _timm_vit(model: nn.Module):
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return model
    raise UnsupportedModelError(
        f"save_pruned supports timm VisionTransformer models (pruned, layer-dropped or fine-tuned), got "
        f"{type(model).__name__}")


def _is_identity(module) -> bool:
    return module is None or isinstance(module, nn.Identity)


def constructor_args(vit: nn.Module) -> dict[str, Any]:
    """timm `VisionTransformer` arguments read off a (possibly pruned) model, for the kept depth.

    Heads count from the head width (embed_dim / head_dim) and the MLP width from the widest block,
    so every block can be sliced down to its own size after building."""
    blocks = list(vit.blocks)
    first = blocks[0]
    attn, mlp = first.attn, first.mlp
    from .patches.structured import block_widths

    _, hidden = block_widths(blocks)
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


def _token_strategy(vit: nn.Module) -> dict | None:
    run = getattr(vit, "_pb_run", None)
    if run is None:
        return None
    params = {k: v for k, v in run.strategy.resolved_params().items() if k != "calibration"}
    return {"strategy": run.strategy.name, "params": json.loads(json.dumps(params, default=str))}


def describe(model: nn.Module, model_args: dict | None = None) -> dict[str, Any]:
    """The architecture record stored beside the weights."""
    from .patches.structured import block_widths

    vit = _timm_vit(model)
    heads, hidden = block_widths(list(vit.blocks))
    kept = getattr(vit.blocks, "pb_kept_indices", None)
    cfg = getattr(vit, "pretrained_cfg", None) or {}
    architecture = cfg.get("architecture")
    import timm

    source = getattr(vit, "reference_source", None)
    first_float = next((p for p in vit.parameters() if p.is_floating_point()), None)
    return {
        "format": FORMAT,
        "base": "reference" if source else (architecture if architecture and timm.is_model(architecture) else None),
        "builder": "timm.create_model" if architecture and timm.is_model(architecture) else "VisionTransformer",
        "architecture": architecture if architecture and timm.is_model(architecture) else None,
        "constructor_args": {**(model_args or {}), **constructor_args(vit)},
        "heads_per_block": heads, "mlp_hidden_per_block": hidden,
        "blocks_kept": list(kept) if kept is not None else list(range(len(heads))),
        "dtype": str(first_float.dtype).removeprefix("torch.") if first_float is not None else "float32",
        "pretrained_cfg": {k: cfg[k] for k in PRETRAINED_CFG_KEYS if k in cfg and _jsonable(cfg[k])},
        "token_strategy": _token_strategy(vit),
    }


def _jsonable(value) -> bool:
    try:
        json.dumps(value)
        return True
    except TypeError:
        return False


def build(architecture: dict[str, Any]) -> nn.Module:
    """An eval-mode model of the recorded architecture (weights uninitialised in meaning, right in shape)."""
    import timm
    from timm.models.vision_transformer import VisionTransformer

    from .families.slicing import equivalent_attention, mlp_output_linear, sliced_mlp

    if architecture.get("format") != FORMAT:
        raise ValueError(f"not a pruning-bench saved model (format {architecture.get('format')!r}, expected {FORMAT})")
    kwargs = dict(architecture["constructor_args"])
    for key in ("img_size", "patch_size"):
        if isinstance(kwargs.get(key), list):
            kwargs[key] = tuple(kwargs[key])
    if architecture["builder"] == "timm.create_model":
        model = timm.create_model(architecture["architecture"], pretrained=False, **kwargs)
    else:
        model = VisionTransformer(**kwargs)
    for i, block in enumerate(model.blocks):
        heads, hidden = architecture["heads_per_block"][i], architecture["mlp_hidden_per_block"][i]
        if heads > block.attn.num_heads or hidden > mlp_output_linear(block.mlp).in_features:
            raise ValueError(f"block {i}: saved widths ({heads} heads, {hidden} MLP) exceed the rebuilt model's")
        if heads < block.attn.num_heads:
            block.attn = equivalent_attention(block.attn, torch.arange(heads))
        if hidden < mlp_output_linear(block.mlp).in_features:
            block.mlp = sliced_mlp(block.mlp, torch.arange(hidden))
    model.blocks.pb_kept_indices = list(architecture["blocks_kept"])
    if architecture.get("pretrained_cfg"):
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        cfg.update({k: tuple(v) if isinstance(v, list) else v for k, v in architecture["pretrained_cfg"].items()})
        model.pretrained_cfg = cfg
    model.to(getattr(torch, architecture.get("dtype", "float32")))
    return model.eval()


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}


def from_weights(architecture: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    model = build(architecture)
    model.load_state_dict(state, strict=True)
    model.pb_saved_architecture = architecture
    return model.eval()


def compact_copy(model: nn.Module, model_args: dict | None = None) -> nn.Module:
    """A fresh plain model equal to `model` as it runs now (slices kept, no patch, no hook): what the next
    round of pruning starts from."""
    vit = _timm_vit(model)
    return from_weights(describe(vit, model_args), _weights(vit))


def _probe_images(architecture: dict, dtype: torch.dtype) -> torch.Tensor:
    args = architecture["constructor_args"]
    h, w = args["img_size"] if isinstance(args["img_size"], (list, tuple)) else (args["img_size"],) * 2
    generator = torch.Generator().manual_seed(0)
    return torch.randn(2, args["in_chans"], h, w, generator=generator).to(dtype)


def save_pruned(model: nn.Module, path, *, model_args: dict | None = None, verify: bool = True) -> dict[str, Any]:
    """Write `model` (a timm ViT, pruned or not) to `path` as safetensors plus its architecture.

    `model_args` adds constructor arguments the model does not reveal (e.g. `act_layer`); what the model
    shows (widths, depth kept, image size...) wins over them. With `verify`,
    the rebuilt model must give bit-identical outputs on two random images, else nothing is written.
    Returns the architecture record."""
    from safetensors.torch import save_file

    vit = _timm_vit(model)
    architecture = describe(vit, model_args)
    state = _weights(vit)
    if architecture["token_strategy"] is not None:
        warnings.warn(f"save_pruned: the live token strategy {architecture['token_strategy']['strategy']} holds no "
                      "weights; it is recorded in the file's metadata and the loaded model runs without it",
                      UserWarning, stacklevel=2)
    if verify and architecture["token_strategy"] is None:  # a live token strategy changes the outputs
        _check_rebuilds(vit, architecture, state)
    metadata = {METADATA_KEY: json.dumps(architecture)}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return architecture


def _check_rebuilds(vit: nn.Module, architecture: dict, state: dict) -> None:
    rebuilt = from_weights(architecture, state)
    dtype = getattr(torch, architecture["dtype"])
    images = _probe_images(architecture, dtype)
    was_training = vit.training
    vit.eval()
    try:
        with torch.no_grad():
            expected = vit(images)
            got = rebuilt(images)
    finally:
        vit.train(was_training)
    if not torch.equal(expected, got):
        raise UnsupportedModelError(
            "save_pruned: the model rebuilt from the recorded architecture does not reproduce this model's outputs "
            f"(max difference {float((expected - got).abs().max()):.3g}); pass the constructor arguments it "
            "does not reveal with model_args=")


def read_architecture(path) -> dict[str, Any]:
    """The architecture record of a saved file (no weights read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} is not a pruning-bench saved model (no {METADATA_KEY!r} metadata)")
    return json.loads(metadata[METADATA_KEY])


def is_saved_model(path) -> bool:
    try:
        read_architecture(path)
        return True
    except Exception:
        return False


def load_pruned(path) -> nn.Module:
    """The model saved by `save_pruned`, in eval mode, bit-identical to it; `model.pb_saved_architecture`
    holds the record (blocks kept, widths, a token strategy that was live when saving)."""
    from safetensors.torch import load_file

    architecture = read_architecture(path)
    return from_weights(architecture, load_file(str(path)))
