"""One run counted once: the result files a report reads, with copies, repeats and temporary files left out.

A run counted twice makes a difference look certain (n=2, std 0). That happens with a copy of a result
under another name, a file named twice on the command line (`report results/ results/x.json`), or the
temporary file of a write in progress (`.x.json.k3j9x2.tmp.json`, which `*.json` matches). Files are
told apart by their resolved path and by their content (parsed JSON, so a re-indented copy is a copy);
each file left out is said in one note.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path


def is_temporary(path: Path) -> bool:
    """Hidden files and the temporary files of atomic writes (`.NAME.XXXX.tmp.json`) are never results."""
    return path.name.startswith(".") or ".tmp." in path.name or path.name.endswith((".tmp", ".incomplete"))


def _content_key(path: Path) -> str:
    data = path.read_bytes()
    try:
        data = json.dumps(json.loads(data), sort_keys=True).encode()
    except (ValueError, UnicodeDecodeError):
        pass
    return hashlib.sha1(data).hexdigest()


def distinct(files: list[Path]) -> tuple[list[Path], list[str]]:
    """(the files to read, one note per file left out), in the given order."""
    kept: list[Path] = []
    notes: list[str] = []
    by_path: dict[Path, Path] = {}
    by_content: dict[str, Path] = {}
    for path in files:
        if is_temporary(path):
            notes.append(f"{path} is a hidden or temporary file (a write in progress?), not a result")
            continue
        real = path.resolve()
        if real in by_path:
            notes.append(f"{path} is {by_path[real]} named again; counted once")
            continue
        try:
            key = _content_key(path)
        except OSError:
            key = None
        if key is not None and key in by_content:
            notes.append(f"{path} has the same content as {by_content[key]} (a copy of one run); counted once")
            by_path[real] = path
            continue
        by_path[real] = path
        if key is not None:
            by_content[key] = path
        kept.append(path)
    return kept, notes
