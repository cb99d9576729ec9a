"""The `efficiency` block of a result JSON, formatted from what `measure.run_efficiency` measured: compute and
speed of the image encoder as evaluated, every timing repeat kept."""
from __future__ import annotations

from typing import Any


def memory_entry(peak) -> dict[str, Any]:
    """The `memory` entry from `pb.measure_memory`'s peak, or the error that stopped the tracker."""
    if isinstance(peak, Exception):
        return {"error": f"{type(peak).__name__}: {peak}"}
    return {
        "peak_activation_mb": peak.activation_bytes / 2**20,
        "weights_mb": (peak.parameter_bytes + peak.buffer_bytes) / 2**20,
        "peak_total_mb": peak.total_bytes / 2**20,
        "counted": "bytes of live tensors at the forward's peak (pb.measure_memory), same batch",
    }


def efficiency_block(flops, speed: dict, peak, stats: dict, *, tokens: list[int], images, source: str, dtype: str,
                     amp: bool, device: str, repeats: int) -> dict[str, Any]:
    """The block: the MAC count `flops`, the throughput record `speed`, the memory `peak`, the handle's `stats`
    and the tokens per block, measured on `images` (`source` says which)."""
    return {
        "gmacs": float(flops.gmacs),
        "gflops": float(flops.gflops),
        "images_per_second": float(speed["images_per_second"]),
        "seconds_per_batch": float(speed["seconds_per_batch_median"]),
        "tokens_per_layer": tokens,
        "batch_size": int(len(images)),
        "image_size": list(images.shape[-2:]),
        "input": source,
        "dtype": dtype,
        "amp": bool(amp),
        "device": speed.get("device", str(device)),
        "device_name": speed.get("device_name"),
        "threads": speed.get("threads"),
        "timing": {"warmup": 1, "repeats": repeats, "protocol": speed.get("protocol"), "times": speed.get("times"),
                   "warmup_times": speed.get("warmup_times"), "load_average": speed.get("load_average")},
        "flops_note": flops.note,
        "memory": memory_entry(peak),
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
