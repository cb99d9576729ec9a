"""Like-for-like pairing: which baseline a run is compared with, and why, or why none.

A baseline qualifies when its identity equals the run's in everything but the strategy: model,
checkpoint, dataset, task and language, its seed, and every setting in `fields.SETTINGS` (dataset
root, split, image count and subset rule, model arguments, image size, batch size, dtype, amp,
device, threads); for tasks that train or fit something (`fields.TRAINING_TASKS`) also the training
settings. Without one, the derived columns stay NaN and `pairing_note` names the settings in which
the closest candidate differed. With several (the same baseline run twice), the choice never depends
on when or where the files were written, so a report from the result files and one from
`clip_benchmark build`'s CSV of the same runs choose alike: the one measured for efficiency, then the
one with the most timed repeats, then the first by the result's own file name (`result_file`); the
note names the candidates and that rule. A baseline is always paired with itself.
"""
from __future__ import annotations

import pandas as pd

from .fields import PAIRING_SETTINGS, SETTINGS, TRAINING_SETTINGS, TRAINING_TASKS
from .load import BASELINE, GROUP_KEYS

TIE_RULE = "measured for efficiency first, then most timed repeats, then first by result file name"


def settings_for(task: str) -> list[str]:
    return PAIRING_SETTINGS + SETTINGS + (TRAINING_SETTINGS if task in TRAINING_TASKS else [])


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


def _name(row: pd.Series) -> str:
    """The result's own file name (the same from its JSON file and from a build CSV row)."""
    return _text(row.get("result_name")) or _text(row.get("file"))


def _preference(row: pd.Series) -> tuple:
    repeats = row.get("timing_repeats")
    return (pd.isna(row.get("gmacs")), -(0 if repeats is None or pd.isna(repeats) else float(repeats)), _name(row))


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
            closest = min(candidates, key=lambda j: (len(diffs[j]), _name(results.loc[j])))
            chosen.append(pd.NA)
            notes.append("no like-for-like baseline; the closest differs in " + "; ".join(diffs[closest]))
        else:
            ranked = sorted(matching, key=lambda j: _preference(results.loc[j]))
            chosen.append(ranked[0])
            notes.append("" if len(ranked) == 1 else
                         f"{len(ranked)} matching baselines ({', '.join(results.loc[j, 'file'] for j in ranked)}); "
                         f"used {results.loc[ranked[0], 'file']} ({TIE_RULE})")
    return pd.DataFrame({"baseline_index": chosen, "pairing_note": notes}, index=results.index)
