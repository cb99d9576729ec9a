"""Peak memory of one inference forward of the image tower: weights and activations, counted apart.

Token reduction saves compute in the blocks after it, but the peak of an inference forward often
sits in the blocks before it (full token count), so MAC savings do not carry over to memory; this
measures it rather than inferring it. Counting uses torch's own tracker
(`torch.distributed._tools.mem_tracker.MemTracker`), which follows tensor storages through a
dispatch mode on any device: the numbers are bytes of live tensors, not of the allocator's cache
or the process (no RSS noise), and they are exact, so one run suffices. On a GPU the allocator's own
peak (`torch.cuda.max_memory_allocated`) is read beside it: what the device really had to hold,
including kernels' workspaces and a compiled graph's buffers, which the tracker does not see.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .analytic import image_tower


@dataclass
class PeakMemory:
    """Bytes at the forward's peak: `activation_bytes` (tensors made during the forward, output
    included), `parameter_bytes` and `buffer_bytes` (the model's own), `total_bytes` (all three)."""

    activation_bytes: int
    parameter_bytes: int
    buffer_bytes: int
    total_bytes: int
    batch_size: int
    device: str


def _tracker():
    try:
        from torch.distributed._tools.mem_tracker import MemTracker
    except ImportError as exc:  # a torch build without torch.distributed
        raise RuntimeError(f"peak memory needs torch.distributed._tools.mem_tracker ({exc})") from None
    return MemTracker()


def measure_memory(model: nn.Module, images: torch.Tensor, family=None) -> PeakMemory:
    """Peak memory of `model`'s image tower (pruning included when patched) on `images`, no gradients.
    `family`: the model's located family, when the caller has it."""
    tower = family.encoder if family is not None else image_tower(model)
    tracker = _tracker()
    tracker.track_external(tower)
    with torch.inference_mode(), tracker:
        tower(images)
    peak = tracker.get_tracker_snapshot("peak")
    device = images.device
    by_kind = {getattr(kind, "name", str(kind)): int(value) for kind, value in peak.get(device, {}).items()}
    return PeakMemory(activation_bytes=by_kind.get("ACT", 0) + by_kind.get("TEMP", 0),
                      parameter_bytes=by_kind.get("PARAM", 0), buffer_bytes=by_kind.get("BUFFER", 0),
                      total_bytes=by_kind.get("Total", 0), batch_size=len(images), device=str(device))


def cuda_peak_bytes(model_fn, images: torch.Tensor) -> int | None:
    """`torch.cuda.max_memory_allocated` over one no-gradient forward of `model_fn` (any callable, a
    compiled model included) on CUDA `images`, weights included; None off CUDA."""
    if images.device.type != "cuda":
        return None
    torch.cuda.synchronize(images.device)
    torch.cuda.reset_peak_memory_stats(images.device)
    with torch.inference_mode():
        model_fn(images)
    torch.cuda.synchronize(images.device)
    return int(torch.cuda.max_memory_allocated(images.device))
