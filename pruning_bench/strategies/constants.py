"""Index tensors a strategy derives from the token schedule alone (seeded random draws, fixed
permutations): made once on the CPU, copied once to each device, and taken by `torch.compile` as
constants.

Drawn per batch inside a forward, they would run a CPU generator and a blocking host-to-device copy
in every reducing block of every batch (a host synchronisation on a GPU), and `torch.compile` could
not trace the generator (a graph break). Cached, the forward only reads a tensor already in place.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch


@functools.lru_cache(maxsize=1024)
def _on_device(make: Callable, args: tuple, device: torch.device):
    with torch.inference_mode(False), torch.no_grad():  # usable by later forwards that need gradients
        value = make(*args)
        return None if value is None else value.to(device)


@torch.compiler.assume_constant_result
def schedule_constant(make: Callable, args: tuple, device) -> torch.Tensor | None:
    """`make(*args)` (a tensor or None; it must depend on `args` alone) on `device`, computed once.

    The result is shared: callers must never modify it in place."""
    return _on_device(make, tuple(args), torch.device(device))
