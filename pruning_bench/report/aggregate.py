"""One row per configuration: runs that differ only in seed grouped, with mean, std and n.

A configuration is the model, checkpoint, dataset, task, language, strategy, its parameters other
than `seed`, and every setting a baseline must share except the seed. Each seed's run keeps its own
baseline (pairing.py), so `acc1_delta` is the mean of per-seed differences. Its 95% interval and
whether it is called out come from uncertainty.py; speedup gets an interval from the seeds, else
from the slowest / fastest timed repeats of the run and of its baseline.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .fields import SETTINGS
from .load import BASELINE, GROUP_KEYS
from .uncertainty import Z95, delta_interval, seed_interval, significant

CONFIG_KEYS = GROUP_KEYS + ["strategy", "config_params"] + SETTINGS + ["training"]
SPREAD_METRICS = ["acc1", "acc1_delta", "agreement", "speedup", "efficiency", "gmacs", "gmacs_ratio", "images_per_second",
                  "memory_ratio", "cosine", "cosine_centred", "relative_mse", "image_retrieval_recall",
                  "text_retrieval_recall", "train_step_seconds_median", "train_images_per_second"]


def _speedup_interval(runs: pd.DataFrame) -> tuple[float, float, str]:
    speedups = runs["speedup"].dropna()
    if len(speedups) >= 2:
        return (*seed_interval(speedups), "seeds")
    if len(speedups) == 1:
        row = runs.loc[speedups.index[0]]
        low = row["images_per_second_min"] / row["images_per_second_max_baseline"]
        high = row["images_per_second_max"] / row["images_per_second_min_baseline"]
        if not (math.isnan(low) or math.isnan(high)):
            return low, high, "timing range"
    return math.nan, math.nan, "none"


def _above_chance(acc: float, classes: float, images: float, task: str, metric: str) -> object:
    """Whether accuracy is above 1/classes by more than its binomial 95% margin (NA when unknowable)."""
    if "retrieval" in task or metric not in ("acc1", "lp_acc1") or math.isnan(acc) or math.isnan(classes) \
            or classes < 2:
        return pd.NA
    margin = Z95 * math.sqrt(max(acc * (1 - acc), 0.0) / images) if images and not math.isnan(images) else 0.0
    return bool(acc - margin > 1.0 / classes)


def _numbers(runs: pd.DataFrame, column: str) -> pd.Series:
    return pd.to_numeric(runs[column], errors="coerce") if column in runs else pd.Series(dtype=float)


def aggregate(table: pd.DataFrame) -> pd.DataFrame:
    """`table` from compare(): one row per configuration (see the module docstring)."""
    keyed = table.copy()
    for key in CONFIG_KEYS:
        keyed[key] = keyed[key].astype(object).where(keyed[key].notna(), "") if key in keyed else ""
    rows = []
    for key, runs in keyed.groupby(CONFIG_KEYS, sort=False, dropna=False):
        row = dict(zip(CONFIG_KEYS, key))
        row["params"] = row.pop("config_params")
        row["metric"] = runs["metric"].iloc[0]
        row["n"] = len(runs)
        seeds = [f"{s}" + (f"/{t}" if t else "") for s, t in zip(runs["seed"].fillna(""), runs["strategy_seed"].fillna(""))]
        row["seeds"] = ", ".join(sorted(set(s for s in seeds if s)))
        for column in SPREAD_METRICS:
            values = _numbers(runs, column).dropna()
            row[f"{column}_mean"] = values.mean() if len(values) else math.nan
            row[f"{column}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        row["runs_paired"] = int(runs["has_baseline"].sum())
        if row["strategy"] == BASELINE:
            low = high = math.nan
            method = ""
        else:
            baselines = pd.DataFrame({"acc1": runs["acc1_baseline"], "per_image_correct": runs[
                "acc1_baseline_per_image_correct"].fillna(""), "per_image_n": runs["per_image_n"]})
            low, high, method = delta_interval(runs.assign(per_image_correct=runs["per_image_correct"].fillna("")),
                                               baselines)
        row.update(acc1_delta_low=low, acc1_delta_high=high, delta_method=method,
                   delta_significant=significant(low, high))
        s_low, s_high, s_method = (math.nan, math.nan, "") if row["strategy"] == BASELINE else _speedup_interval(runs)
        row.update(speedup_low=s_low, speedup_high=s_high, speedup_method=s_method,
                   speedup_significant=not (math.isnan(s_low) or math.isnan(s_high)) and (s_low > 1 or s_high < 1))
        row["images_per_second_min"] = _numbers(runs, "images_per_second_min").min()
        row["images_per_second_median"] = _numbers(runs, "images_per_second_median").median()
        row["images_per_second_max"] = _numbers(runs, "images_per_second_max").max()
        row["timing_repeats"] = _numbers(runs, "timing_repeats").sum(min_count=1)
        row["under_load"] = bool(runs["under_load"].fillna(False).astype(bool).any())
        row["pruned_nothing"] = bool(runs["pruned_nothing"].fillna(False).astype(bool).any()) if "pruned_nothing" in runs else False
        row["load_max"] = pd.concat([_numbers(runs, "load_before"), _numbers(runs, "load_after")]).max()
        row["train_step_seconds_min"] = _numbers(runs, "train_step_seconds_min").min()
        row["train_step_seconds_max"] = _numbers(runs, "train_step_seconds_max").max()
        classes = _numbers(runs, "classes").dropna()
        row["classes"] = classes.iloc[0] if len(classes) else math.nan
        images = _numbers(runs, "images").sum(min_count=1)
        row["chance"] = 1.0 / row["classes"] if row["classes"] >= 2 else math.nan
        row["above_chance"] = _above_chance(row["acc1_mean"], row["classes"], images, row["task"], row["metric"])
        row["files"] = " ".join(runs["file"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.replace([np.inf, -np.inf], np.nan)
