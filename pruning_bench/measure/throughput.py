"""The one throughput protocol: image tower only, warm-up, several timed repeats, median.

Only the forward of the image encoder on a batch already in memory is timed: no data loading,
no text tower, no classifier. Every record carries what a reader needs to judge it (batch size,
dtype, threads, device, library versions). On a GPU the device is synchronised around every
timed run so asynchronous kernels are not mistaken for speed.
"""
from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn

from .analytic import image_tower
from .env import environment

_clock = time.perf_counter  # module level so the protocol can be tested with a fake clock
PROTOCOL = "torch.inference_mode, warm-up runs discarded, median of timed repeats, time.perf_counter"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_fn(model) -> Callable:
    """The image tower's forward for a module (model.visual for CLIP); callables pass through."""
    return image_tower(model) if isinstance(model, nn.Module) else model


def _place(model, images: torch.Tensor, device, dtype):
    """Move (in place) a module and the images to the requested device / dtype."""
    if isinstance(model, nn.Module) and (device is not None or dtype is not None):
        model.to(device=device, dtype=dtype)
    if device is not None or dtype is not None:
        images = images.to(device=device, dtype=dtype)
    return model, images


def _compute_dtype(model, images: torch.Tensor, device: torch.device) -> torch.dtype:
    """The dtype the forward computes in: autocast's when the caller enabled it, else the weights'."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    if isinstance(model, nn.Module):
        param = next(model.parameters(), None)
        if param is not None:
            return param.dtype
    return images.dtype


@contextmanager
def _threads(threads: int | None):
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _time_once(fn: Callable, images: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = _clock()
    fn(images)
    _synchronize(device)
    return _clock() - start


def _summary(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {
        "images_per_second": batch / median,
        "seconds_per_batch_median": median,
        "times": list(times),
    }


def _check_counts(warmup: int, repeats: int) -> None:
    if warmup < 0:
        raise ValueError(f"warmup={warmup} is out of range [0, inf)")
    if repeats < 1:
        raise ValueError(f"repeats={repeats} is out of range [1, inf)")


def measure_throughput(
    model,
    images: torch.Tensor,
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
) -> dict:
    """Images per second of the image tower on `images` (median over `repeats` timed forwards).

    `model`: a module (a CLIP model runs `model.visual` only) or any callable taking the batch.
    `device` / `dtype`: when given, the module and images are moved there (the module in place).
    `threads`: CPU threads for the run; the previous setting comes back afterwards.
    """
    _check_counts(warmup, repeats)
    model, images = _place(model, images, device, dtype)
    device = torch.device(device) if device is not None else images.device
    fn = _forward_fn(model)
    batch = int(images.shape[0])
    with _threads(threads), torch.inference_mode():
        for _ in range(warmup):
            fn(images)
        _synchronize(device)
        times = [_time_once(fn, images, device) for _ in range(repeats)]
        env = environment(device)
    return {
        **_summary(times, batch),
        "batch_size": batch,
        "warmup": warmup,
        "repeats": repeats,
        "dtype": str(_compute_dtype(model, images, device)).removeprefix("torch."),
        "autocast": torch.is_autocast_enabled(device.type),
        **env,
        "protocol": PROTOCOL,
    }


def compare_throughput(
    baseline_fn,
    pruned_fn,
    images: torch.Tensor,
    *,
    warmup: int = 3,
    repeats: int = 10,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    threads: int | None = None,
) -> dict:
    """Time a baseline and a pruned model interleaved in one run; speedup = ratio of median times.

    Runs alternate (A B, B A, A B, ...) so drift in a noisy machine hits both alike. Give two
    separate models (e.g. a deep copy for the pruned one): both stay patched as they are.
    """
    _check_counts(warmup, repeats)
    baseline_fn, images = _place(baseline_fn, images, device, dtype)
    pruned_fn, _ = _place(pruned_fn, images, device, dtype)
    device = torch.device(device) if device is not None else images.device
    fns = {"baseline": _forward_fn(baseline_fn), "pruned": _forward_fn(pruned_fn)}
    batch = int(images.shape[0])
    times: dict[str, list[float]] = {"baseline": [], "pruned": []}
    with _threads(threads), torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn(images)
        _synchronize(device)
        for i in range(repeats):
            order = ("baseline", "pruned") if i % 2 == 0 else ("pruned", "baseline")
            for name in order:
                times[name].append(_time_once(fns[name], images, device))
        env = environment(device)
    base, pruned = _summary(times["baseline"], batch), _summary(times["pruned"], batch)
    paired = [b / p for b, p in zip(times["baseline"], times["pruned"])]
    return {
        "baseline": base,
        "pruned": pruned,
        "speedup": base["seconds_per_batch_median"] / pruned["seconds_per_batch_median"],
        "speedup_paired_median": statistics.median(paired),
        "batch_size": batch,
        "warmup": warmup,
        "repeats": repeats,
        "dtype": str(_compute_dtype(baseline_fn, images, device)).removeprefix("torch."),
        "autocast": torch.is_autocast_enabled(device.type),
        **env,
        "protocol": PROTOCOL + ", baseline and pruned interleaved",
    }
