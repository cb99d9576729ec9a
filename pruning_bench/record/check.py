"""Whether a result file holds a complete run: what sweep resume and report loading trust.

A run killed at the wrong moment, a full disk, or a file that is not a result at all must never
count as done: a resumed sweep would skip that point forever. A complete run of either driver
(`clip_benchmark eval`, `pruning-bench eval`) writes a JSON object with these keys; a pruned run
also writes its `pruning` block.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REQUIRED_KEYS = ("dataset", "model", "task", "metrics")


def data_problem(data: Any, *, pruned: bool | None = None) -> str | None:
    """What is wrong with a parsed result (None when it looks complete)."""
    if not isinstance(data, dict):
        return f"holds a JSON {type(data).__name__}, not a result object"
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        return f"lacks the key(s) {', '.join(missing)} that a complete run writes"
    if not isinstance(data["metrics"], dict) or not data["metrics"]:
        return f"'metrics' is {type(data['metrics']).__name__} {str(data['metrics'])[:40]!r}, not a non-empty object"
    for key in ("dataset", "model", "task"):
        if not isinstance(data[key], str):
            return f"'{key}' is {type(data[key]).__name__} {data[key]!r}, not a string"
    if pruned and not isinstance(data.get("pruning"), dict):
        return "is a pruned run's file without its 'pruning' block"
    return None


def file_problem(path: str | os.PathLike, *, pruned: bool | None = None) -> str | None:
    """What is wrong with the result file at `path` (None when it is complete); a missing file is a problem too."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return "does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot be read ({exc})"
    if not text.strip():
        return "is empty"
    try:
        data = json.loads(text)
    except ValueError as exc:
        return f"is not valid JSON ({exc}; truncated?)"
    return data_problem(data, pruned=pruned)


def is_complete(path: str | os.PathLike, *, pruned: bool | None = None) -> bool:
    return file_problem(path, pruned=pruned) is None
