"""Running sweep points safely: one process per point at a time, and no child outliving the sweep.

- A per-point lock file (beside the point's first result file) holds the PIDs of the sweep and of
  its child. Another sweep, or a resume started while an orphaned child still runs, sees a live
  PID and leaves the point alone; a lock whose processes are all gone (checked with
  `os.kill(pid, 0)`) is stale and taken over.
- Each child runs in its own process group (so a terminal's Ctrl-C reaches only the sweep, which
  decides) and, on Linux, is sent SIGTERM by the kernel if the sweep dies, even by SIGKILL.
- SIGINT, SIGTERM and SIGHUP become `SweepInterrupted`: the running child's process group is
  terminated (killed after a grace period) before the sweep stops. Result files are written
  atomically by the drivers, so a stopped point leaves nothing a resume could mistake for done.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

if TYPE_CHECKING:
    from . import PlannedRun

from ..record import check as result_check
from ..record import atomic
from ..record.atomic_file import remove_leftovers

HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))
GRACE_SECONDS = 10.0
OUTPUTS_ENV = "PRUNING_BENCH_SWEEP_OUTPUTS"  # the result files a child is expected to write


class SweepInterrupted(BaseException):
    """The sweep received SIGINT, SIGTERM or SIGHUP; its running child has been stopped."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """Turn the handled signals into one `SweepInterrupted`; later ones, during clean-up, are ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, frame):
        if not raised:
            raised.append(signum)
            raise SweepInterrupted(signum)

    previous = {s: signal.signal(s, handler) for s in HANDLED_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- processes


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    try:  # Linux: a zombie (exited, not yet reaped) runs and writes nothing
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux for SIGTERM when the sweep dies (best effort elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def stop_group(process: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM to the child's whole process group, SIGKILL if it is still there after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, grace)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError, PermissionError):  # stragglers of the group
        os.killpg(process.pid, signal.SIGKILL)


def run_child(command: list[str], log: Path, *, lock: "PointLock | None" = None,
              env: dict[str, str] | None = None) -> int:
    """Run `command` in its own process group with its output in `log`; stop it if the sweep is interrupted."""
    with open(log, "w") as out:  # a stream the child appends to: not a result file
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   preexec_fn=_die_with_parent, env=env)
        try:
            if lock is not None:
                lock.set_child(process.pid)
            return process.wait()
        except BaseException:
            stop_group(process)
            raise


# ---------------------------------------------------------------- locks


class PointLock:
    """`<result>.lock`: created atomically (a complete temporary file hard-linked into place)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.held = False

    def holders(self) -> list[int] | None:
        """PIDs recorded in the lock (None when there is no lock file)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return []
        return [int(w) for w in text.split() if w.isdigit()]

    def live_holders(self) -> list[int]:
        return [pid for pid in (self.holders() or []) if pid_alive(pid)]

    def _write(self, pids: list[int]) -> Path:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        atomic.write_text(tmp, "".join(f"{pid}\n" for pid in pids))
        return tmp

    def acquire(self) -> bool:
        """Take the lock; False when a live process holds it. A stale lock is removed first."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            tmp = self._write([os.getpid()])
            try:
                os.link(tmp, self.path)
                self.held = True
                return True
            except FileExistsError:
                if self.live_holders():
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)  # stale: every recorded process is gone
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        return False

    def set_child(self, pid: int) -> None:
        """Record the child too, so a lock outlives a killed sweep for as long as its child runs."""
        if self.held:
            os.replace(self._write([os.getpid(), pid]), self.path)

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def clear_if_stale(self) -> bool:
        """Remove the lock (and temporary lock files beside it) when every process it names is gone."""
        holders = self.holders()
        if holders is None or any(pid_alive(pid) for pid in holders):
            return False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        for leftover in self.path.parent.glob(f".{self.path.name}.*.new"):
            pid = leftover.name.rsplit(".", 2)[-2]
            if pid.isdigit() and not pid_alive(int(pid)):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()
        return True

    def wait_free(self, poll: float = 0.5) -> None:
        while self.live_holders():
            time.sleep(poll)


# ---------------------------------------------------------------- running a sweep


def subprocess_runner(run: "PlannedRun", log: Path) -> int:
    """Run one command with its output in `log` (own process group, stopped with the sweep); its exit status."""
    try:
        return run_child(run.command, log, lock=getattr(run, "active_lock", None), env=run.env)
    finally:  # the child has ended: a temporary result it was writing when stopped is nobody's now
        for output in run.outputs:
            remove_leftovers(output)


def log_path(log_dir: Path, run: "PlannedRun") -> Path:
    return Path(log_dir) / f"{run.point.log_name}.log"


@dataclass
class SweepSummary:
    ran: list["PlannedRun"] = field(default_factory=list)
    skipped: list["PlannedRun"] = field(default_factory=list)
    failed: list["PlannedRun"] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def outputs(self) -> list[Path]:
        """Every result file the sweep has now (finished points, skipped or just run)."""
        return [p for r in self.skipped + self.ran if r not in self.failed for p in r.outputs if result_check.is_complete(p)]


def run_sweep(runs: list["PlannedRun"], *, log_dir: str | os.PathLike, runner: Callable[["PlannedRun", Path], int] | None = None,
              force: bool = False, progress: bool = True) -> SweepSummary:
    """Run every point not finished yet (all with `force`), one after another, with a progress bar.

    A failing point does not stop the sweep; it is listed in the summary with its log file. A point
    another process is running (its lock is live) is left to it and waited for at the end.
    """
    from tqdm.auto import tqdm

    runner = runner or subprocess_runner

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    summary = SweepSummary()
    pending = []
    stale = [run.lock_path for run in runs if PointLock(run.lock_path).clear_if_stale()]
    for run in runs:
        if run.lock_path in stale:  # its writer is gone: so is any use of the temporary result it left
            for output in run.outputs:
                remove_leftovers(output)
    if stale:  # a killed sweep's locks: their processes are gone (finished points included)
        summary.notes.append(f"removed {len(stale)} stale lock(s) of processes no longer running: "
                             f"{', '.join(map(str, stale[:3]))}{' ...' if len(stale) > 3 else ''}")
        print(f"pruning-bench sweep: {summary.notes[-1]}", file=sys.stderr)
    for run in runs:
        (pending if force or not run.finished else summary.skipped).append(run)
    bar = tqdm(total=len(runs), initial=len(summary.skipped), disable=not progress, unit="point", desc="sweep")

    def say(message: str) -> None:
        summary.notes.append(message)
        bar.write(message, file=sys.stderr)

    def run_one(run: "PlannedRun", lock: PointLock) -> None:
        run.active_lock = lock
        try:
            if not force and run.finished:  # finished meanwhile by whoever held the lock
                summary.skipped.append(run)
                return
            for message in run.set_aside_incomplete():
                say(message)
            bar.set_postfix_str(run.point.label, refresh=True)
            run.make_output_dirs()
            status = runner(run, log_path(log_dir, run))
            summary.ran.append(run)
            if status != 0 or not run.finished:
                summary.failed.append(run)
                say(f"failed ({status}): {run.point.label}; log: {log_path(log_dir, run)}")
        finally:
            lock.release()
            run.active_lock = None
        bar.update(1)

    busy = []
    try:
        for run in pending:
            lock = PointLock(run.lock_path)
            if lock.acquire():
                run_one(run, lock)
            else:
                say(f"{run.point.label} is being run by process {', '.join(map(str, lock.live_holders()))} "
                    f"({run.lock_path}); waiting for it after the other points")
                busy.append((run, lock))
        for run, lock in busy:
            lock.wait_free()
            if lock.acquire():
                run_one(run, lock)
            else:  # taken again by someone else in between: theirs
                summary.failed.append(run)
                say(f"{run.point.label} is still locked by another process; not run")
    finally:
        bar.close()
    return summary
