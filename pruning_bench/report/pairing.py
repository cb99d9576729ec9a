"""Like-for-like pairing: which baseline a run is compared with, and why, or why none.

A baseline qualifies when it shares the run's model, checkpoint, dataset, task and language and
every setting in `fields.SETTINGS` (split, sample counts, image size, batch size, dtype, amp,
device, threads); for tasks that train or fit something (`fields.TRAINING_TASKS`) also the seed
and the training settings. Without one, the derived columns stay NaN and `pairing_note` names
the settings in which the closest candidate differed. With several, the one measured for
efficiency wins, then the one closest in time to the run (load on a shared machine drifts, so
the nearest baseline saw the most similar machine); the note says which file and why.
A baseline is always paired with itself.
"""
from __future__ import annotations

import pandas as pd

from .fields import SETTINGS, TRAINING_SETTINGS, TRAINING_TASKS
from .load import BASELINE, GROUP_KEYS


def settings_for(task: str) -> list[str]:
    return SETTINGS + (TRAINING_SETTINGS if task in TRAINING_TASKS else [])


def _text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def differences(run: pd.Series, baseline: pd.Series) -> list[str]:
    """`setting run-value vs baseline-value` for every setting in which the two differ."""
    found = []
    for name in settings_for(str(run.get("task", ""))):
        a, b = _text(run.get(name)), _text(baseline.get(name))
        if a != b:
            found.append(f"{name} {a or '(not recorded)'} vs {b or '(not recorded)'}")
    return found


def _group_key(row: pd.Series) -> tuple:
    return tuple(_text(row.get(k)) for k in GROUP_KEYS)


def pair_baselines(results: pd.DataFrame) -> pd.DataFrame:
    """Per row of `results`: `baseline_index` (row label of its baseline, or NA) and `pairing_note`."""
    baselines: dict[tuple, list] = {}
    for index, row in results[results["strategy"] == BASELINE].iterrows():
        baselines.setdefault(_group_key(row), []).append(index)
    chosen, notes = [], []
    for index, row in results.iterrows():
        if row["strategy"] == BASELINE:
            chosen.append(index)
            notes.append("")
            continue
        candidates = baselines.get(_group_key(row), [])
        diffs = {j: differences(row, results.loc[j]) for j in candidates}
        matching = [j for j in candidates if not diffs[j]]
        if not candidates:
            chosen.append(pd.NA)
            notes.append("no baseline of this model, checkpoint, dataset, task and language")
        elif not matching:
            closest = min(candidates, key=lambda j: len(diffs[j]))
            chosen.append(pd.NA)
            notes.append("no like-for-like baseline; the closest differs in " + "; ".join(diffs[closest]))
        else:
            best = min(matching, key=lambda j: (pd.isna(results.loc[j, "gmacs"]),
                                                abs(results.loc[j, "mtime"] - row["mtime"])))
            chosen.append(best)
            notes.append("" if len(matching) == 1 else
                         f"{len(matching)} matching baselines; used {results.loc[best, 'file']} "
                         f"({'measured for efficiency, ' if pd.notna(results.loc[best, 'gmacs']) else ''}"
                         "closest in time to this run)")
    return pd.DataFrame({"baseline_index": chosen, "pairing_note": notes}, index=results.index)
