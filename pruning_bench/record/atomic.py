"""Atomic file writes: a temporary file in the target's folder, flushed and fsynced, then renamed.

A reader (or `--skip_existing`, or a resumed sweep) therefore sees either the old file or the whole
new one, never a 0-byte or truncated file, whatever interrupts the writer. The file gets the mode an
ordinary `open(path, "w")` would give it (0666 less the umask: 0644 under umask 022): `mkstemp` creates
its temporary file 0600, which would leave results unreadable to collaborators.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


def _umask() -> int:
    """The process umask (read by setting it and putting it straight back: there is no other way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    For writers that insist on a file name (matplotlib's `savefig`, `torch.save`, safetensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, obj: Any, **dump_kwargs) -> Path:
    """Serialise first (a value that cannot be encoded fails before any file is touched), then write."""
    dump_kwargs.setdefault("indent", 1)
    return write_text(path, json.dumps(obj, **dump_kwargs))
