"""What a timing or a count was measured with: library versions, threads, device, machine."""
from __future__ import annotations

import os
import platform
from importlib import metadata

import torch

# distribution name -> key in the record
LIBRARIES = {
    "torch": "torch",
    "torchvision": "torchvision",
    "timm": "timm",
    "open_clip_torch": "open_clip",
    "clip-benchmark": "clip_benchmark",
    "fvcore": "fvcore",
    "numpy": "numpy",
    "pruning-bench": "pruning_bench",
}


def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries that change numbers (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist, key in LIBRARIES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def device_name(device: torch.device | str) -> str:
    """A human name for the device: the GPU model, or the CPU model and core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model()} ({os.cpu_count()} logical cores)"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | str = "cpu") -> dict:
    """Everything a reader needs to judge a timing: versions, threads, device, platform."""
    device = torch.device(device)
    return {
        "versions": library_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
