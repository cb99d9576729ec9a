"""Pair each run with a like-for-like baseline (see pairing.py): same model, checkpoint, dataset, task,
language and settings (split, sample counts, image size, batch size, dtype, amp, device, threads; for
tasks that train, seed and training settings too).

Derived columns, relative to that baseline:
- acc1_delta = acc1 - acc1_baseline (fractions, like clip_benchmark's metrics);
- gmacs_ratio = gmacs / gmacs_baseline (compute kept);
- speedup = images_per_second / images_per_second_baseline (measured, not inferred from GMACs);
- efficiency = speedup x gmacs_ratio = measured speedup / ideal speedup: 1.0 when the wall clock
  falls exactly as the multiply-accumulates do, below 1 when overheads eat part of the saving
  (the same definition as benchmarks/speed.py);
- match_gap = match_achieved - match_target: for runs matched with `--match_macs`, how far the achieved MACs
  ratio (`pruning.match.achieved_ratio`, counted when matching) landed from the target, in shares of baseline MACs;
- memory_ratio = peak_activation_mb / peak_activation_mb_baseline (activations at the peak of one
  inference forward on the measured batch; each result file also records the weights, `efficiency.memory`).
A run without a matching baseline keeps its own numbers and NaN in every derived column, and
`pairing_note` says which setting differed; with several matching baselines the note says which
one was used and why. Runs differing only in seed are grouped by aggregate.py (mean, std, n).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .fields import SETTINGS
from .load import BASELINE, GROUP_KEYS
from .pairing import pair_baselines

REPORT_COLUMNS = [
    "model", "pretrained", "dataset", "task", "strategy", "params", "metric",
    "acc1", "acc1_baseline", "acc1_delta", "gmacs", "gmacs_baseline", "gmacs_ratio",
    "images_per_second", "images_per_second_baseline", "speedup", "efficiency",
    "peak_activation_mb", "peak_activation_mb_baseline", "memory_ratio",
    "has_baseline", "pruned_nothing", "pairing_note", "language", "tokens_per_layer", "batch_size", "dtype", "device", "file",
    "baseline_file", "seed", "strategy_seed", "config_params", *[s for s in SETTINGS if s not in ("batch_size", "dtype", "device")],
    "training", "classes", "images", "acc1_unpruned", "cosine", "cosine_centred", "relative_mse", "agreement",
    "agreement_kind", "recall_k", "image_retrieval_recall", "text_retrieval_recall",
    "images_per_second_min", "images_per_second_median", "images_per_second_max", "timing_repeats", "timing_warmup",
    "images_per_second_min_baseline", "images_per_second_max_baseline", "load_before", "load_after", "cpus",
    "under_load", "train_step_seconds_min", "train_step_seconds_median", "train_step_seconds_max",
    "train_steps_timed", "train_warmup_steps", "train_images_per_second", "per_image_correct", "per_image_n",
    "acc1_baseline_per_image_correct", "match_target", "match_achieved", "match_gap", "match_knob", "notes",
]
# taken from the paired baseline, renamed NAME_baseline
_FROM_BASELINE = ["acc1", "gmacs", "images_per_second", "peak_activation_mb", "file", "images_per_second_min",
                  "images_per_second_max", "per_image_correct"]


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    return numerator / denominator.where(denominator != 0)


def _baseline_columns(results: pd.DataFrame, index: pd.Series) -> pd.DataFrame:
    """The paired baseline's values for every row (NaN where a row has none)."""
    labels = [float("nan") if pd.isna(i) else i for i in index]
    picked = results.reindex(labels)[_FROM_BASELINE].reset_index(drop=True)
    picked.index = results.index
    names = {c: f"{c}_baseline" for c in _FROM_BASELINE}
    names.update(file="baseline_file", per_image_correct="acc1_baseline_per_image_correct")
    return picked.rename(columns=names)


def compare(results: pd.DataFrame) -> pd.DataFrame:
    """`results` (from load_results) with the baseline columns and the derived ones, sorted for reading."""
    results = results.reset_index(drop=True)
    for column in _FROM_BASELINE:  # tables built by older callers, without the extra fields
        if column not in results:
            results[column] = np.nan
    pairing = pair_baselines(results)
    table = pd.concat([results, pairing, _baseline_columns(results, pairing["baseline_index"])], axis=1)
    table["has_baseline"] = table["baseline_file"].notna()
    table["acc1_delta"] = table["acc1"] - table["acc1_baseline"]
    table["gmacs_ratio"] = _ratio(table["gmacs"], table["gmacs_baseline"])
    table["speedup"] = _ratio(table["images_per_second"], table["images_per_second_baseline"])
    table["efficiency"] = table["speedup"] * table["gmacs_ratio"]
    table["memory_ratio"] = _ratio(table["peak_activation_mb"], table["peak_activation_mb_baseline"])
    if "match_target" in table:  # --match_macs: how far the matched knob landed from the target (share of baseline MACs)
        table["match_gap"] = table["match_achieved"] - table["match_target"]
    table["_pruned"] = table["strategy"] != BASELINE
    table = table.sort_values(GROUP_KEYS + ["_pruned", "gmacs", "strategy", "params", "seed"],
                              ascending=[True] * len(GROUP_KEYS) + [True, False, True, True, True], na_position="last")
    return table.reindex(columns=REPORT_COLUMNS).replace([np.inf, -np.inf], np.nan).reset_index(drop=True)
