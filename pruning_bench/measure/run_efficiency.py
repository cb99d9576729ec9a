"""Measuring the `efficiency` block of a result: compute, speed, memory and tokens of the image encoder as
evaluated (`record.efficiency` formats what is measured here).

Measured on one batch of the evaluation's own images (random images of the model's input size when
no image went through the encoder, e.g. a linear probe served from its feature cache), with the
pruning still patched in, on the evaluation's device and under the same autocast setting.
"""
from __future__ import annotations

import sys
from contextlib import nullcontext
from typing import Any

import torch

from ..record.efficiency import efficiency_block


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


def _peak_memory(model, images: torch.Tensor, autocast, family=None):
    """`pb.measure_memory`'s peak, or the exception it raised: a failure of the tracker is recorded, never
    allowed to lose the evaluation."""
    import pruning_bench as pb

    try:
        with autocast:
            return pb.measure_memory(model, images, family)
    except Exception as exc:  # the tracker is a private torch tool: report, do not crash after the evaluation
        return exc


def measure(model, images: torch.Tensor, *, device: str, amp: bool, repeats: int, handle=None,
            source: str = "evaluation batch", progress: bool | None = None, family=None) -> dict[str, Any]:
    """GMACs per image, images per second (every repeat kept) and tokens per block of `model` (pruned or
    not) on `images`, as the `efficiency` block. `progress`: a bar on stderr while timing (None: only on a
    terminal; False: silent, as `clip_benchmark eval --quiet` and `pruning-bench eval --no_progress` ask).
    `family`: the model's located family, when the caller has it."""
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
    peak = _peak_memory(model, images, autocast, family)
    stats = handle.stats() if handle is not None else {}
    tokens = list(stats.get("tokens_per_layer") or block_token_counts(model, images[:1], family))
    return efficiency_block(flops, speed, peak, stats, tokens=tokens, images=images, source=source,
                            dtype=compute_dtype(device, amp, model), amp=amp, device=device, repeats=repeats)
