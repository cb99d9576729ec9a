"""What a timing or a count was measured with: library versions, threads, device, machine.

On a GPU also the driver, CUDA and cuDNN versions and the clocks (read from `nvidia-smi` when it is
installed; a GPU timing means little without them, since boost clocks move with temperature)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
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


SMI_FIELDS = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "clocks.max.mem", "power.limit",
              "temperature.gpu", "memory.total")


def gpu_environment(device: torch.device | str) -> dict:
    """GPU name, capability, memory, CUDA / cuDNN versions, and driver and clocks when readable."""
    device = torch.device(device)
    if device.type != "cuda":
        return {}
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
    except (RuntimeError, AssertionError):  # no usable driver: say what is known rather than fail a record
        return {"cuda_runtime": torch.version.cuda}
    info = {"gpu_name": props.name, "gpu_capability": f"{props.major}.{props.minor}",
            "gpu_memory_gb": round(props.total_memory / 2**30, 1), "cuda_runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    info.update(nvidia_smi(index))
    return info


def nvidia_smi(index: int) -> dict:
    """Driver version and clocks of GPU `index` from `nvidia-smi` ({} when it is missing or fails)."""
    if shutil.which("nvidia-smi") is None:
        return {}
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(SMI_FIELDS)}",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    values = [v.strip() for v in out.strip().split(",")]
    return dict(zip((f.replace(".", "_") for f in SMI_FIELDS), values)) if len(values) == len(SMI_FIELDS) else {}


def describe(env: dict) -> str:
    """One line for a report header: device, its versions and clocks, torch."""
    keys = ("gpu_name", "gpu_capability", "driver_version", "cuda_runtime", "cudnn", "clocks_sm", "clocks_max_sm",
            "clocks_mem", "power_limit", "tf32_matmul")
    parts = [f"device {env.get('device')} ({env.get('device_name')})", f"torch {env['versions'].get('torch')}"]
    parts += [f"{k} {env[k]}" for k in keys if env.get(k) not in (None, "")]
    if not env.get("gpu_name"):
        parts.append(f"CPU threads {env.get('threads')}")
    return "; ".join(parts)


def environment(device: torch.device | str = "cpu") -> dict:
    """Everything a reader needs to judge a timing: versions, threads, device, platform."""
    device = torch.device(device)
    return {
        **gpu_environment(device),
        "versions": library_versions(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
    }
