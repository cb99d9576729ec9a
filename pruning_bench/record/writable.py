"""Can a file be written at this path? Asked before any model work, so a run never ends unable to save.

A run that only finds out at the end that its result (or saved model) path is a directory, sits under
a file, or lies in a read-only folder loses everything it computed. Each driver asks `problem` for
its output paths first and refuses with one line.
"""
from __future__ import annotations

import os


def problem(flag: str, path: str | os.PathLike) -> str | None:
    """Why `path` cannot be written (one line naming `flag` and the path), or None. Creates the folder."""
    path = os.fspath(path)
    if not path or path.endswith(os.sep):
        return f"{flag} {path!r} names a folder, not a file"
    if os.path.isdir(path):
        return f"{flag} {path} is a directory, not a file"
    return folder_problem(f"{flag} {path}", os.path.dirname(os.path.abspath(path)))


def folder_problem(what: str, folder: str) -> str | None:
    """Why files cannot be written in `folder` (one line starting with `what`), or None. Creates the folder."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        return f"{what}: cannot create the folder {folder} ({exc.strerror or exc})"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{what}: the folder {folder} is not writable"
    return None
