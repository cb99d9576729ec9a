"""transformers image encoders by hub name (`--model hf:facebook/dinov2-small`), built offline.

Weights come from the local Hugging Face cache when they are there (`from_pretrained(...,
local_files_only=True)`: nothing is downloaded). Otherwise the configuration is read from the cache,
and when that is missing too, from `KNOWN` below, which copies the dimensions of the hub
configurations of the models it names; the model is then randomly initialised and one line on
stderr says which of these happened. `--pretrained none` always builds from the configuration;
`--pretrained FILE` loads a state_dict into it. `--model_arg KEY=VALUE` overrides configuration
fields; `--img_size` sets the configuration's image size (position embeddings follow it).
"""
from __future__ import annotations

import sys

import torch

HF_PREFIX = "hf:"
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _dinov2(width, depth, heads, **extra):
    return dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, mlp_ratio=4, patch_size=14,
                image_size=518, **extra)


def _vit(width, depth, heads, **extra):
    return dict(hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * width,
                patch_size=16, image_size=224, **extra)


# hub name -> (transformers class, configuration fields, (mean, std) of its image processor)
KNOWN = {
    "facebook/dinov2-small": ("Dinov2Model", _dinov2(384, 12, 6), IMAGENET),
    "facebook/dinov2-base": ("Dinov2Model", _dinov2(768, 12, 12), IMAGENET),
    "facebook/dinov2-large": ("Dinov2Model", _dinov2(1024, 24, 16), IMAGENET),
    "facebook/dinov2-giant": ("Dinov2Model", _dinov2(1536, 40, 24, use_swiglu_ffn=True), IMAGENET),
    "facebook/dinov2-with-registers-small": ("Dinov2WithRegistersModel", _dinov2(384, 12, 6, num_register_tokens=4), IMAGENET),
    "facebook/dinov2-with-registers-base": ("Dinov2WithRegistersModel", _dinov2(768, 12, 12, num_register_tokens=4), IMAGENET),
    "facebook/dinov2-with-registers-large": ("Dinov2WithRegistersModel", _dinov2(1024, 24, 16, num_register_tokens=4), IMAGENET),
    "google/vit-base-patch16-224": ("ViTForImageClassification", _vit(768, 12, 12, num_labels=1000), HALF),
    "google/vit-base-patch16-224-in21k": ("ViTModel", _vit(768, 12, 12), HALF),
    "google/vit-large-patch16-224": ("ViTForImageClassification", _vit(1024, 24, 16, num_labels=1000), HALF),
    "facebook/deit-tiny-patch16-224": ("DeiTForImageClassification", _vit(192, 12, 3, num_labels=1000), IMAGENET),
    "facebook/deit-small-patch16-224": ("DeiTForImageClassification", _vit(384, 12, 6, num_labels=1000), IMAGENET),
    "facebook/deit-base-patch16-224": ("DeiTForImageClassification", _vit(768, 12, 12, num_labels=1000), IMAGENET),
    "facebook/deit-tiny-distilled-patch16-224": ("DeiTForImageClassificationWithTeacher", _vit(192, 12, 3, num_labels=1000), IMAGENET),
    "facebook/deit-small-distilled-patch16-224": ("DeiTForImageClassificationWithTeacher", _vit(384, 12, 6, num_labels=1000), IMAGENET),
    "facebook/deit-base-distilled-patch16-224": ("DeiTForImageClassificationWithTeacher", _vit(768, 12, 12, num_labels=1000), IMAGENET),
}


def _say(name: str, what: str) -> None:
    print(f"pruning-bench eval: {HF_PREFIX}{name}: {what}", file=sys.stderr)


def _cached_config(name: str):
    import transformers

    try:
        return transformers.AutoConfig.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError):
        return None


def _class_of(name: str, config) -> str:
    if name in KNOWN:
        return KNOWN[name][0]
    architectures = getattr(config, "architectures", None) or []
    return architectures[0] if architectures else "AutoModel"


def _config(name: str, image_size: int | None, model_args: dict):
    """(transformers class name, configuration) from the cache or `KNOWN`, with the overrides applied."""
    import transformers

    config = _cached_config(name)
    if config is None:
        if name not in KNOWN:
            raise ValueError(f"--model {HF_PREFIX}{name}: no configuration in the local Hugging Face cache and none "
                             f"known here (known: {', '.join(sorted(KNOWN))})")
        cls, fields, _ = KNOWN[name]
        config_class = getattr(transformers, cls).config_class
        config = config_class(**fields)
        source = "its configuration as written in pruning_bench.evaluate.hf_models.KNOWN (no cached config)"
    else:
        source = "its configuration in the local Hugging Face cache"
    for key, value in {**model_args, **({"image_size": image_size} if image_size else {})}.items():
        if not hasattr(config, key):
            raise ValueError(f"--model_arg {key}={value!r}: {type(config).__name__} has no field {key!r}")
        setattr(config, key, value)
    return _class_of(name, config), config, source


def load(name: str, pretrained: str | None, image_size: int | None, model_args: dict):
    """(model in eval mode, evaluation transform, what --pretrained resolved to)."""
    import transformers

    pretrained = "hub" if pretrained is None else pretrained
    cls_name, config, source = _config(name, image_size, model_args)
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise ValueError(f"--model {HF_PREFIX}{name}: transformers has no class {cls_name!r}")
    model = None
    if pretrained == "hub" and not model_args and not image_size:
        try:
            model = cls.from_pretrained(name, local_files_only=True)
            _say(name, "weights from the local Hugging Face cache")
        except (OSError, ValueError):
            model = None
    if model is None:
        torch.manual_seed(0)
        model = cls(config)
        if pretrained.lower() in ("hub", "none", "", "random"):
            _say(name, f"no weights loaded ({'none in the local cache' if pretrained == 'hub' else 'as asked'}); "
                       f"built from {source}, randomly initialised")
            pretrained = "none"
        else:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                _say(name, f"checkpoint {pretrained}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.eval()
    mean, std = KNOWN[name][2] if name in KNOWN else IMAGENET
    model.pb_normalisation = [list(mean), list(std)]  # recorded by save_pruned, so a reload preprocesses alike
    return model, transform(model, mean, std), pretrained


def transform(model, mean, std):
    """Resize the short side to the model's image size, centre-crop, normalise with the hub image processor's mean and std."""
    from torchvision import transforms

    from ..families import locate

    size = locate(model).image_size()
    return transforms.Compose([transforms.Resize(size[0], interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(size), transforms.ToTensor(), transforms.Normalize(mean, std)])
