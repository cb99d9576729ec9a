"""A local webdataset split looked at before any model loads: its shards cap the loader workers, and an empty
split is one line.

webdataset hands whole shards to DataLoader workers; with more workers than shards (clip_benchmark's
default is 4, a small split is often one shard) a worker finds nothing and the run dies with "No
samples found in dataset; perhaps you have fewer shards than workers". The workers are capped at
the shard count, said in a note. A split whose shards hold no sample at all is refused by name.
"""
from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path


def shards(root: str, split: str) -> list[Path]:
    folder = Path(root) / split
    return sorted(folder.glob("*.tar")) if folder.is_dir() else []


def _has_sample(shard: Path) -> bool:
    try:
        with tarfile.open(shard) as tar:
            return tar.next() is not None
    except (OSError, tarfile.TarError):
        return True  # unreadable: leave it to the loader, which names its own error


def check(args, root: str, fail) -> None:
    """Cap `args.num_workers` at the split's shard count (with a note); `fail` when no shard holds a sample."""
    if not str(getattr(args, "dataset", "")).startswith("wds/") or not os.path.isdir(root):
        return
    split = getattr(args, "split", "test")
    found = shards(root, split)
    if not found:
        return  # remote or templated layouts: clip_benchmark's own errors apply
    if not any(_has_sample(shard) for shard in found):
        fail(f"--dataset {args.dataset}: the {split!r} split under {root} holds no sample "
             f"({len(found)} empty shard(s))")
    workers = getattr(args, "num_workers", 0) or 0
    if workers > len(found):
        print(f"pruning-bench: --num_workers {workers} capped at {len(found)}, the number of shards of the "
              f"{split} split (webdataset gives each loader worker whole shards)", file=sys.stderr)
        args.num_workers = len(found)
