"""Pair each run with the baseline of its model, checkpoint, dataset, task and language.

Derived columns, relative to that baseline:
- acc1_delta = acc1 - acc1_baseline (fractions, like clip_benchmark's metrics);
- gmacs_ratio = gmacs / gmacs_baseline (compute kept);
- speedup = images_per_second / images_per_second_baseline (measured, not inferred from GMACs);
- efficiency = speedup x gmacs_ratio = measured speedup / ideal speedup: 1.0 when the wall clock
  falls exactly as the multiply-accumulates do, below 1 when overheads eat part of the saving
  (the same definition as benchmarks/speed.py);
- memory_ratio = peak_activation_mb / peak_activation_mb_baseline (activations at the peak of one
  inference forward on the measured batch; each result file also records the weights, `efficiency.memory`).
A run without a baseline keeps its own numbers and NaN in every derived column.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .load import BASELINE, GROUP_KEYS

REPORT_COLUMNS = [
    "model", "pretrained", "dataset", "task", "strategy", "params", "metric",
    "acc1", "acc1_baseline", "acc1_delta", "gmacs", "gmacs_baseline", "gmacs_ratio",
    "images_per_second", "images_per_second_baseline", "speedup", "efficiency",
    "peak_activation_mb", "peak_activation_mb_baseline", "memory_ratio",
    "has_baseline", "language", "tokens_per_layer", "batch_size", "dtype", "device", "file", "baseline_file",
]


def _pick_baselines(results: pd.DataFrame) -> pd.DataFrame:
    """One baseline per group: the newest run that measured efficiency, else the newest run."""
    baselines = results[results["strategy"] == BASELINE].copy()
    baselines["_measured"] = baselines["gmacs"].notna()
    baselines = baselines.sort_values(["_measured", "mtime"]).groupby(GROUP_KEYS, dropna=False).tail(1)
    return baselines[GROUP_KEYS + ["acc1", "gmacs", "images_per_second", "peak_activation_mb", "file"]].rename(columns={
        "acc1": "acc1_baseline", "gmacs": "gmacs_baseline", "images_per_second": "images_per_second_baseline",
        "peak_activation_mb": "peak_activation_mb_baseline", "file": "baseline_file"})


def _ratio(numerator: pd.Series, denominator: pd.Series) -> pd.Series:
    return numerator / denominator.where(denominator != 0)


def compare(results: pd.DataFrame) -> pd.DataFrame:
    """`results` (from load_results) with the baseline columns and the derived ones, sorted for reading."""
    table = results.merge(_pick_baselines(results), on=GROUP_KEYS, how="left")
    table["has_baseline"] = table["baseline_file"].notna()
    table["acc1_delta"] = table["acc1"] - table["acc1_baseline"]
    table["gmacs_ratio"] = _ratio(table["gmacs"], table["gmacs_baseline"])
    table["speedup"] = _ratio(table["images_per_second"], table["images_per_second_baseline"])
    table["efficiency"] = table["speedup"] * table["gmacs_ratio"]
    table["memory_ratio"] = _ratio(table["peak_activation_mb"], table["peak_activation_mb_baseline"])
    table["_pruned"] = table["strategy"] != BASELINE
    table = table.sort_values(GROUP_KEYS + ["_pruned", "gmacs", "strategy", "params"],
                              ascending=[True] * len(GROUP_KEYS) + [True, False, True, True], na_position="last")
    return table[REPORT_COLUMNS].replace([np.inf, -np.inf], np.nan).reset_index(drop=True)
