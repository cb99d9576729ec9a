"""An `open(path, "w")` that cannot destroy the file it replaces.

clip_benchmark writes its result with `with open(output, "w") as f: json.dump(dump, f)`: the old file is
emptied before a byte of the new one exists, so a re-run that fails while writing (full disk, a
file-size limit, an error inside `dump`) loses a finished result. `AtomicFile` writes to a temporary
file beside the target and renames it over the target only when the `with` block ends normally; on
any failure the temporary file is removed and the earlier file is left as it was. A write that fails
for lack of room or permission is raised as `ResultWriteError` (an `OSError`) naming the file.
"""
from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from .atomic import _umask


class ResultWriteError(OSError):
    """The new content could not be written; the file that was there before is unchanged."""

    def __init__(self, path: str | os.PathLike, cause: BaseException):
        kept = "the earlier file is kept" if os.path.exists(path) else "nothing was written"
        reason = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        super().__init__(getattr(cause, "errno", None), f"cannot write {path} ({reason}); {kept}")
        self.path = str(path)

    def __str__(self) -> str:
        return self.strerror


class AtomicFile:
    """A text or binary file object that replaces `path` on a clean close, and never touches it otherwise."""

    def __init__(self, path: str | os.PathLike, mode: str = "w", **open_kwargs):
        if "r" in mode or "a" in mode or "+" in mode:
            raise ValueError(f"AtomicFile writes whole files; mode {mode!r} is not supported")
        self.target = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.target.name}.", suffix=".tmp" + self.target.suffix,
                                   dir=self.target.parent if str(self.target.parent) else ".")
        self._tmp = Path(tmp)
        os.fchmod(fd, 0o666 & ~_umask())  # what `open(path, "w")` would create, not mkstemp's 0600
        self._file = os.fdopen(fd, mode.replace("x", "w"), **open_kwargs)
        self.name = str(path)  # what `open(path)` would report: writers that look at `f.name` see the target
        self._done = False

    def __getattr__(self, attribute):
        return getattr(self._file, attribute)

    def write(self, data):
        try:
            return self._file.write(data)
        except OSError as exc:
            self.discard()
            raise ResultWriteError(self.target, exc) from exc

    def commit(self) -> None:
        if self._done:
            return
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.target)
        except OSError as exc:
            self.discard()
            raise ResultWriteError(self.target, exc) from exc
        self._done = True

    def discard(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink()

    close = commit

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False

    def __del__(self):  # dropped without close(): nothing replaces the target
        self.discard()


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an `AtomicFile` for `path` left when its process was killed mid-write.

    Call only when no writer of `path` can be alive (its process has ended, or a lock says so): a live
    writer's temporary file looks the same.
    """
    target = Path(path)
    removed = []
    for leftover in target.parent.glob(f".{glob.escape(target.name)}.*.tmp{glob.escape(target.suffix)}"):
        with contextlib.suppress(FileNotFoundError):
            leftover.unlink()
            removed.append(leftover)
    return removed


def opener_for(paths: set[str]):
    """A stand-in for the builtin `open` that opens the files in `paths` for writing atomically."""
    import builtins

    targets = {os.path.abspath(p) for p in paths}

    def open(file, mode="r", *args, **kwargs):  # noqa: A001 - replaces the builtin inside one module
        if isinstance(file, (str, os.PathLike)) and ("w" in mode or "x" in mode) and "+" not in mode \
                and os.path.abspath(file) in targets and not args:
            return AtomicFile(file, mode, **kwargs)
        return builtins.open(file, mode, *args, **kwargs)

    return open
