"""Warnings become notes: every clamp or cap a strategy reports, at attach time or during a forward
pass, lands once in the result's `pruning.notes` and once on stderr.

The one place that does it for every driver (clip_benchmark, `pruning-bench eval`, sweeps through
either). torch's `torch.jit.script is deprecated` warning, raised by a library every measured run
imports, is not a note about the run and is silenced here.
"""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager

QUIET = (r"`torch\.jit\.script` is deprecated",)


def quiet_library_warnings() -> None:
    """Silence warnings that say nothing about the run (call once per process, before the imports)."""
    for message in QUIET:
        warnings.filterwarnings("ignore", message=message)


def is_pruning_note(message: str) -> bool:
    """A strategy's own warning (its messages start with its name): a clamp, a cap, a no-op."""
    from ..registry import list_strategies

    head = message.split(":", 1)[0].strip()
    return ":" in message and (head in list_strategies() or head.startswith("pruning-bench"))


@contextmanager
def noting_warnings(notes: list[str], prefix: str = "pruning-bench"):
    """Collect the strategies' UserWarnings raised inside as `notes`, each distinct message once, also on
    stderr. Other warnings (a data loader's, a library's) are passed on untouched, not made notes."""
    others: list = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        quiet_library_warnings()
        try:
            yield notes
        finally:
            for w in caught:
                message = str(w.message)
                if issubclass(w.category, UserWarning) and is_pruning_note(message):
                    if message not in notes:
                        notes.append(message)
                        print(f"{prefix}: {message}", file=sys.stderr)
                else:
                    others.append(w)
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
