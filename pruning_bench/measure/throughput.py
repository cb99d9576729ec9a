"""The one throughput protocol: image tower only, warm-up, several timed repeats, median.

The record keeps every timed repeat (`times`, seconds per batch), every warm-up time
(`warmup_times`, so a reader sees when the machine settled), and the machine's 1/5/15-minute load
average just before and just after the timed runs (`load_average`, with `cpus` and `under_load`:
the 1-minute load before or after exceeded the logical CPU count, so other work competed for the
cores and the timings measure the load as much as the model). A progress bar on stderr (tqdm)
covers the warm-up and the repeats: on by default when stderr is a terminal, off with
`progress=False`.

Only the forward of the image encoder on a batch already in memory is timed: no data loading,
no text tower, no classifier. Every record carries what a reader needs to judge it (batch size,
dtype, threads, device, library versions). On a GPU the device is synchronised around every
timed run so asynchronous kernels are not mistaken for speed.
"""
from __future__ import annotations

import os
import statistics
import sys
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


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the platform has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def load_record(before: list[float] | None, after: list[float] | None) -> dict:
    """Load before/after the timed runs and whether it exceeded the logical CPU count (the flag's threshold)."""
    cpus = os.cpu_count() or 1
    one_minute = [v[0] for v in (before, after) if v]
    return {"before": before, "after": after, "cpus": cpus,
            "under_load": bool(one_minute) and max(one_minute) > cpus,
            "threshold": "1-minute load average before or after the timed runs > logical CPUs"}


def _progress(total: int, desc: str, progress: bool | None):
    """A tqdm bar on stderr (None: only when stderr is a terminal); a no-op object when off."""
    enabled = sys.stderr.isatty() if progress is None else bool(progress)
    if not enabled:
        class _Off:
            def update(self, n=1):
                pass

            def close(self):
                pass
        return _Off()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", file=sys.stderr, leave=False)


def _time_once(fn: Callable, images: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = _clock()
    fn(images)
    _synchronize(device)
    return _clock() - start


def _time_unfenced(fn: Callable, images: torch.Tensor) -> float:
    """A warm-up run's time, without device syncs (on a GPU it times the launch, not the kernels)."""
    start = _clock()
    fn(images)
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
    progress: bool | None = None,
    family=None,
) -> dict:
    """Images per second of the image tower on `images` (median over `repeats` timed forwards).

    `model`: a module (a CLIP model runs `model.visual` only) or any callable taking the batch.
    `device` / `dtype`: when given, the module and images are moved there (the module in place).
    `threads`: CPU threads for the run; the previous setting comes back afterwards.
    `progress`: a progress bar on stderr (None: when stderr is a terminal).
    `family`: the model's located family, when the caller has it (its encoder is what runs).
    """
    _check_counts(warmup, repeats)
    model, images = _place(model, images, device, dtype)
    device = torch.device(device) if device is not None else images.device
    fn = family.encoder if family is not None else _forward_fn(model)
    batch = int(images.shape[0])
    bar = _progress(warmup + repeats, "timing", progress)
    with _threads(threads), torch.inference_mode():
        before = load_average()
        times, warmup_times = interleaved_times({"model": fn}, images, warmup=warmup, repeats=repeats, device=device,
                                                bar=bar)
        times, warmup_times = times["model"], warmup_times["model"]
        after = load_average()
        env = environment(device)
    bar.close()
    return {
        **_summary(times, batch),
        "warmup_times": warmup_times,
        "load_average": load_record(before, after),
        "batch_size": batch,
        "warmup": warmup,
        "repeats": repeats,
        "dtype": str(_compute_dtype(model, images, device)).removeprefix("torch."),
        "autocast": torch.is_autocast_enabled(device.type),
        **env,
        "protocol": PROTOCOL,
    }


def interleaved_times(fns: dict[str, Callable], images: torch.Tensor, *, warmup: int, repeats: int,
                      device: torch.device | None = None, bar=None) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """(seconds of every timed run by key, seconds of every warm-up run by key) of several forwards timed in
    interleaved rounds, the order reversed every other round (A B C, C B A, ...), so drift on a shared
    machine hits all alike. `bar`: a progress bar updated after every run."""
    device = images.device if device is None else torch.device(device)
    times: dict[str, list[float]] = {key: [] for key in fns}
    warmup_times: dict[str, list[float]] = {key: [] for key in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for key, fn in fns.items():
                warmup_times[key].append(_time_unfenced(fn, images))
                if bar is not None:
                    bar.update()
        _synchronize(device)
        for i in range(repeats):
            order = list(fns) if i % 2 == 0 else list(fns)[::-1]
            for key in order:
                times[key].append(_time_once(fns[key], images, device))
                if bar is not None:
                    bar.update()
    return times, warmup_times


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
    progress: bool | None = None,
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
    bar = _progress(2 * (warmup + repeats), "timing baseline and pruned", progress)
    with _threads(threads), torch.inference_mode():
        before = load_average()
        times, warmup_times = interleaved_times(fns, images, warmup=warmup, repeats=repeats, device=device, bar=bar)
        after = load_average()
        env = environment(device)
    bar.close()
    base = {**_summary(times["baseline"], batch), "warmup_times": warmup_times["baseline"]}
    pruned = {**_summary(times["pruned"], batch), "warmup_times": warmup_times["pruned"]}
    paired = [b / p for b, p in zip(times["baseline"], times["pruned"])]
    return {
        "baseline": base,
        "pruned": pruned,
        "speedup": base["seconds_per_batch_median"] / pruned["seconds_per_batch_median"],
        "speedup_paired_median": statistics.median(paired),
        "speedup_paired": paired,
        "load_average": load_record(before, after),
        "batch_size": batch,
        "warmup": warmup,
        "repeats": repeats,
        "dtype": str(_compute_dtype(baseline_fn, images, device)).removeprefix("torch."),
        "autocast": torch.is_autocast_enabled(device.type),
        **env,
        "protocol": PROTOCOL + ", baseline and pruned interleaved",
    }
