"""Save a pruned (sliced, layer-dropped or fine-tuned) model and load it back, without pickling modules.

The file is safetensors: the weights of the compact model as it runs plus, in its metadata, the
architecture needed to rebuild it in a fresh process (`common.py`). What that architecture is and
how a model is rebuilt belongs to a format, one module each: `timm_vit.py` (timm
VisionTransformer), `open_clip_model.py` (open_clip CLIP, text tower included) and
`transformers_model.py` (transformers vision models); which format a model takes is its located
family's answer (`Family.saved_format`). Loading builds
the model, shrinks each block with the slicing functions structured pruning uses, and loads the
weights strictly; saving checks that the rebuilt model gives bit-identical outputs. (Bit-identical on
the same kind of machine with the same torch thread count: CPU kernels split their sums by thread.)

A model saved while a token strategy (ToMe, ...) is still patched in is saved as its plain compact
weights: a token strategy holds no weights and changes no shape. It is recorded in the metadata
(`token_strategy`, with its parameters), and `load_pruned` re-applies it by default, so the model
that comes back computes what the saved one computed; `reapply=False` gives the bare weights.
"""
from __future__ import annotations

import json
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import UnsupportedModelError
from ..record.atomic import atomic_path
from ..families import locate
from .common import FORMAT, METADATA_KEY, first_line, is_saved_model, read_architecture, weights
from .formats import FAMILIES, build
from .validate import check_file

__all__ = ["FORMAT", "METADATA_KEY", "save_pruned", "load_pruned", "compact_copy", "is_saved_model",
           "read_architecture", "describe", "build", "from_weights"]


def family_of(model: nn.Module):
    """(format module, located family) of a model `save_pruned` can write."""
    try:
        located = locate(model)
    except UnsupportedModelError:
        located = None
    name = located.saved_format if located is not None else None
    for family in FAMILIES:
        if family.family == name:
            return family, located
    raise UnsupportedModelError(
        f"save_pruned supports {', '.join(f.label for f in FAMILIES)} models (pruned, layer-dropped or "
        f"fine-tuned), got {type(model).__name__}")


def describe(model: nn.Module, model_args: dict | None = None, model_name: str | None = None) -> dict[str, Any]:
    """The architecture record stored beside the weights."""
    family, located = family_of(model)
    return {"format": FORMAT, "family": family.family, **family.describe(model, located, model_args, model_name)}


def from_weights(architecture: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    model = build(architecture)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        problem = " ".join(line.strip() for line in str(exc).splitlines()[1:3]) or first_line(exc)
        raise ValueError(f"the saved weights do not fit the recorded architecture: {problem[:300]}") from None
    model.pb_saved_architecture = architecture
    return model.eval()


def compact_copy(model: nn.Module, model_args: dict | None = None, *, model_name: str | None = None) -> nn.Module:
    """A fresh plain model equal to `model` as it runs now (slices kept, no patch, no hook): what the next
    round of pruning starts from."""
    family, _ = family_of(model)
    return from_weights(describe(model, model_args, model_name), weights(family.saved_module(model)))


def save_pruned(model: nn.Module, path, *, model_args: dict | None = None, model_name: str | None = None,
                verify: bool = True) -> dict[str, Any]:
    """Write `model` (pruned or not) to `path` as safetensors plus its architecture.

    `model_args` adds constructor arguments the model does not reveal (timm: e.g. `act_layer`; open_clip:
    create_model keyword overrides of the config); what the model shows (widths, depth kept, image size...)
    wins over them. `model_name` is the open_clip config name when the model does not carry it. With
    `verify`, the rebuilt model must give bit-identical outputs on random inputs, else nothing is written.
    Returns the architecture record."""
    from safetensors.torch import save_file

    family, _ = family_of(model)
    architecture = describe(model, model_args, model_name)
    state = weights(family.saved_module(model))
    if architecture["token_strategy"] is not None:
        warnings.warn(f"save_pruned: the live token strategy {architecture['token_strategy']['strategy']} holds no "
                      "weights; it is recorded in the file's metadata and re-applied by load_pruned (with "
                      "reapply=False the loaded model runs without it)", UserWarning, stacklevel=2)
    if verify and architecture["token_strategy"] is None:  # a live token strategy changes the outputs
        _check_rebuilds(family, model, architecture, state)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(architecture)})
    return architecture


def _check_rebuilds(family, model: nn.Module, architecture: dict, state: dict) -> None:
    try:
        rebuilt = from_weights(architecture, state)
    except ValueError as exc:
        raise UnsupportedModelError(f"save_pruned: the model cannot be rebuilt from the recorded architecture "
                                    f"({exc}); {family.mismatch_hint()}") from None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            expected = family.probe_outputs(model, architecture)
            got = family.probe_outputs(rebuilt, architecture)
    finally:
        model.train(was_training)
    for e, g in zip(expected, got):
        if not torch.equal(e, g):
            raise UnsupportedModelError(
                "save_pruned: the model rebuilt from the recorded architecture does not reproduce this model's outputs "
                f"(max difference {float((e - g).abs().max()):.3g}); {family.mismatch_hint()}")


def load_pruned(path, reapply: bool = True) -> nn.Module:
    """The model saved by `save_pruned`, in eval mode, bit-identical to it; `model.pb_saved_architecture`
    holds the record (family, blocks kept, widths, a token strategy that was live when saving).

    With `reapply` (the default) a recorded token strategy is patched in again (`pb.prune` with its
    recorded parameters) and its handle kept as `model.pb_token_handle` (`.restore()` takes it out);
    with `reapply=False` the model runs without it."""
    model = _load_weights(path)
    token = model.pb_saved_architecture.get("token_strategy")
    if reapply and token:
        from ..api import prune

        try:
            model.pb_token_handle = prune(model, token["strategy"], **token["params"])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: the recorded token strategy {token['strategy']} cannot be re-applied ({exc}); "
                             "load it with reapply=False") from None
    return model


def _load_weights(path) -> nn.Module:
    from safetensors.torch import load_file

    architecture = check_file(path)  # what the file is, and its record bounded by its tensors, before any build
    try:
        state = load_file(str(path))
    except Exception as exc:  # truncated or corrupted tensor data
        raise ValueError(f"{path}: the weights cannot be read ({first_line(exc)})") from None
    try:
        return from_weights(architecture, state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
