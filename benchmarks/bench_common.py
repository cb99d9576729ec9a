"""What the training benchmarks share: the model and data, a resumable record file, the report header.

Records are kept one JSON object per finished run in `<out>.jsonl` (rewritten atomically after each
run), so an interrupted benchmark resumes where it stopped; the report is rewritten atomically after
each run too, so a partial table is always readable.
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import pruning_bench as pb
from pruning_bench.evaluate import data
from pruning_bench.record.atomic import write_text

CIFAR = os.environ.get("PRUNING_BENCH_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data")) + "/wds_cifar10"


def load_model(name: str, img_size: int):
    """(model with a fresh 10-class head, transform): the reference ViT or a timm name (random init)."""
    from pruning_bench.evaluate.models import load_model as load

    loaded = load("reference" if name == "reference" else name, None if name == "reference" else "none",
                  image_size=img_size, check=False)
    return loaded


def cifar(split: str, n: int):
    return data.load("wds/cifar10", CIFAR, split, n)


class Records:
    """Finished runs by key, persisted after each one."""

    def __init__(self, out: Path):
        self.path = out.with_suffix(".jsonl")
        self.rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()] \
            if self.path.exists() else []
        self.done = {r["key"] for r in self.rows}

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self.done.add(row["key"])
        write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))


def spread(values) -> str:
    """mean ± std (min-max) over seeds; one value alone as is."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return ""
    if len(v) == 1:
        return f"{v[0]:.4g} (1 seed)"
    return f"{v.mean():.4g} ± {v.std(ddof=1):.2g} ({v.min():.4g}-{v.max():.4g}, {len(v)} seeds)"


def header(title: str, started: float, sizes: str, kept: list[str] | None = None) -> list[str]:
    """The report's opening lines; `kept` (from `previous_header`) replaces those before the sizes."""
    if kept:
        return kept + [f"Sizes: {sizes}", ""]
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",)
    command = " ".join(shlex.quote(a) for a in ["python", *sys.argv])
    return [f"# {title}", "", "```bash", command, "```", "",
            f"Machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, timm, pruning-bench {pb.__version__}; "
            f"load average at writing {load[0]:.1f} (the cores are shared, so absolute times are slow and noisy).",
            f"Wall time of this run so far: {(time.time() - started) / 60:.1f} min (resumed runs count only their own part).",
            "", f"Sizes: {sizes}", ""]


def previous_header(md: Path) -> list[str] | None:
    """The command / machine / wall-time lines of a report already written (None when there is none), so a
    report re-rendered from its records (`--table_only`) keeps the facts of the run that measured them."""
    if not md.is_file():
        return None
    lines = md.read_text().splitlines()
    end = next((i for i, line in enumerate(lines) if line.startswith("Sizes: ")), None)
    return None if end is None else lines[:end]

