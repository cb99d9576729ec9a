"""The `efficiency` block of a result JSON: compute and speed of the image encoder as evaluated.

Measured on one batch of the evaluation's own images (random images of the model's input size when
no image went through the encoder, e.g. a linear probe served from its feature cache), with the
pruning still patched in, on the evaluation's device and under the same autocast setting.
"""
from __future__ import annotations

import platform
from contextlib import nullcontext
from importlib import metadata
from typing import Any

import torch

_PACKAGES = ("pruning-bench", "torch", "open_clip_torch", "timm", "clip_benchmark", "numpy", "fvcore")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def autocast_dtype(device: str, amp: bool, model: torch.nn.Module) -> str:
    """The dtype the encoder computes in: autocast's when amp is on (clip_benchmark's default), else the weights'."""
    if amp:
        return str(torch.get_autocast_dtype(torch.device(device).type)).replace("torch.", "")
    return str(next(model.parameters()).dtype).replace("torch.", "")


def block_token_counts(model: torch.nn.Module, images: torch.Tensor) -> list[int]:
    """Tokens entering each transformer block on one forward of `images` (for unpruned runs)."""
    from ..patches.families import locate_vit

    counts: list[int] = []
    blocks = locate_vit(model).blocks
    hooks = [b.register_forward_pre_hook(lambda _m, args: counts.append(int(args[0].shape[1]))) for b in blocks]
    try:
        with torch.no_grad():
            encode_images(model, images)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """One forward of the image encoder only (a CLIP model's text tower stays idle)."""
    encode = getattr(model, "encode_image", None)
    return encode(images) if callable(encode) else model(images)


def images_per_second(result: Any, n_images: int) -> float:
    """Read pb.measure_throughput's answer, whichever of its documented shapes it has."""
    for key in ("images_per_second", "throughput"):
        if hasattr(result, key):
            return float(getattr(result, key))
        if isinstance(result, dict) and key in result:
            return float(result[key])
    return float(result)


def measure(model, images: torch.Tensor, *, device: str, amp: bool, repeats: int, handle=None,
            source: str = "evaluation batch") -> dict[str, Any]:
    """GMACs per image, images per second and tokens per block of `model` (pruned or not) on `images`."""
    import pruning_bench as pb

    images = images.to(device)
    flops = pb.count_flops(model, images[:1])
    autocast = torch.autocast(torch.device(device).type, enabled=amp) if amp else nullcontext()
    with torch.no_grad(), autocast:
        speed = pb.measure_throughput(model, images, repeats=repeats)
    if handle is not None:
        tokens = list(handle.stats().get("tokens_per_layer", []))
    else:
        tokens = block_token_counts(model, images[:1])
    return {
        "gmacs": float(flops.gmacs),
        "gflops": float(flops.gflops),
        "images_per_second": images_per_second(speed, len(images)),
        "tokens_per_layer": tokens,
        "batch_size": int(len(images)),
        "image_size": list(images.shape[-2:]),
        "input": source,
        "dtype": autocast_dtype(device, amp, model),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "versions": library_versions(),
    }
