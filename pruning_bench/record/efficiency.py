"""The `efficiency` block of a result JSON: compute and speed of the image encoder as evaluated.

Measured on one batch of the evaluation's own images (random images of the model's input size when
no image went through the encoder, e.g. a linear probe served from its feature cache), with the
pruning still patched in, on the evaluation's device and under the same autocast setting.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

import torch


def compute_dtype(device: str, amp: bool, model: torch.nn.Module) -> str:
    """The dtype the encoder computes in: autocast's when amp is on (clip_benchmark's default), else the weights'."""
    if amp:
        return str(torch.get_autocast_dtype(torch.device(device).type)).removeprefix("torch.")
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def block_token_counts(model: torch.nn.Module, images: torch.Tensor, family=None) -> list[int]:
    """Tokens entering each transformer block on one forward of `images` (for unpruned runs)."""
    from ..families import locate

    counts: list[int] = []
    family = family or locate(model)
    blocks = family.blocks
    hooks = [b.register_forward_pre_hook(lambda _m, args: counts.append(int(args[0].shape[1]))) for b in blocks]
    try:
        with torch.no_grad():
            family.encoder(images)
    finally:
        for hook in hooks:
            hook.remove()
    return counts


def _peak_memory(model, images: torch.Tensor, autocast, family=None) -> dict[str, Any]:
    """The `memory` entry; a failure of the tracker is recorded, never allowed to lose the evaluation."""
    import pruning_bench as pb

    try:
        with autocast:
            peak = pb.measure_memory(model, images, family)
    except Exception as exc:  # the tracker is a private torch tool: report, do not crash after the evaluation
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {
        "peak_activation_mb": peak.activation_bytes / 2**20,
        "weights_mb": (peak.parameter_bytes + peak.buffer_bytes) / 2**20,
        "peak_total_mb": peak.total_bytes / 2**20,
        "counted": "bytes of live tensors at the forward's peak (pb.measure_memory), same batch",
    }


def measure(model, images: torch.Tensor, *, device: str, amp: bool, repeats: int, handle=None,
            source: str = "evaluation batch", progress: bool | None = None, family=None) -> dict[str, Any]:
    """GMACs per image, images per second (every repeat kept) and tokens per block of `model` (pruned or
    not) on `images`. `progress`: a bar on stderr while timing (None: only on a terminal; False: silent,
    as `clip_benchmark eval --quiet` and `pruning-bench eval --no_progress` ask). `family`: the model's located
    family, when the caller has it."""
    import pruning_bench as pb
    from ..families import locate

    images = images.to(device)
    if progress is not False:
        print(f"pruning-bench: measuring efficiency (MACs, {repeats} timed batches, peak memory)", file=sys.stderr)
    family = family or locate(model)  # once for the count, the timing, the memory and the token schedule
    flops = pb.count_flops(model, images, family=family)
    autocast = torch.autocast(torch.device(device).type) if amp else nullcontext()
    with autocast:
        speed = pb.measure_throughput(model, images, warmup=1, repeats=repeats, progress=progress, family=family)
    memory = _peak_memory(model, images, autocast, family)
    stats = handle.stats() if handle is not None else {}
    tokens = list(stats.get("tokens_per_layer") or block_token_counts(model, images[:1], family))
    return {
        "gmacs": float(flops.gmacs),
        "gflops": float(flops.gflops),
        "images_per_second": float(speed["images_per_second"]),
        "seconds_per_batch": float(speed["seconds_per_batch_median"]),
        "tokens_per_layer": tokens,
        "batch_size": int(len(images)),
        "image_size": list(images.shape[-2:]),
        "input": source,
        "dtype": compute_dtype(device, amp, model),
        "amp": bool(amp),
        "device": speed.get("device", str(device)),
        "device_name": speed.get("device_name"),
        "threads": speed.get("threads"),
        "timing": {"warmup": 1, "repeats": repeats, "protocol": speed.get("protocol"), "times": speed.get("times"),
                   "warmup_times": speed.get("warmup_times"), "load_average": speed.get("load_average")},
        "flops_note": flops.note,
        "memory": memory,
        "versions": speed.get("versions"),
        **per_image_budgets(flops, stats),
    }


def per_image_budgets(flops, stats: dict) -> dict[str, Any]:
    """For a strategy keeping a different number of tokens per image: the spread of each image's own MACs
    (`gmacs` is their mean), the padded batch's MACs as timed, and what the padding costs beyond the ideal."""
    if flops.per_image is None:
        return {}
    import numpy as np

    per_image = np.asarray(flops.per_image, dtype=np.float64)
    tokens = np.asarray(stats.get("tokens_per_image") or [[]], dtype=np.float64)
    return {
        "per_image_gmacs": {"mean": float(per_image.mean()), "std": float(per_image.std()),
                            "min": float(per_image.min()), "max": float(per_image.max()), "images": len(per_image)},
        "gmacs_as_run": float(flops.as_run),
        "padding_overhead": float(flops.padding_overhead),
        "padding_note": "gmacs: mean of each image counted alone (the tokens it kept); gmacs_as_run: the padded "
                        "batch as timed (images_per_second includes the padding)",
        **({"tokens_per_layer_mean": tokens.mean(axis=0).tolist()} if tokens.size else {}),
    }
