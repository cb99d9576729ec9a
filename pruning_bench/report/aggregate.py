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
from .uncertainty import above_chance, delta_interval, seed_interval, significant

CONFIG_KEYS = GROUP_KEYS + ["strategy", "config_params"] + SETTINGS + ["training"]
SPREAD_METRICS = ["match_target", "match_achieved", "match_gap", "acc1", "acc1_baseline", "acc1_delta", "gmacs_baseline", "agreement", "speedup", "efficiency", "gmacs", "gmacs_ratio", "images_per_second",
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


def _above_chance(runs: pd.DataFrame, classes: float, task: str, metric: str) -> object:
    """Whether every run is above 1/classes by its own one-sided exact binomial test (NA when unknowable).
    Runs of a configuration share one test set, so their images are never pooled."""
    if "retrieval" in task or metric not in ("acc1", "lp_acc1") or math.isnan(classes) or classes < 2:
        return pd.NA
    images = _numbers(runs, "images").fillna(_numbers(runs, "per_image_n")).to_numpy(float)
    acc = _numbers(runs, "acc1").to_numpy(float)
    if not len(acc) or np.isnan(acc).any() or np.isnan(images).any() or (images <= 0).any():
        return pd.NA
    return bool(above_chance(acc * images, images, classes).all())


def _per_image(runs: pd.DataFrame) -> tuple[str, float, str]:
    """The runs' packed per-image correctness in seed order (space-joined), their image count and seeds in that
    order, or ("", NaN, "") unless every run carries it for the same number of images (the leaderboard's paired
    comparisons read it)."""
    if "per_image_correct" not in runs:
        return "", math.nan, ""
    ordered = runs.assign(_seed=pd.to_numeric(runs["seed"], errors="coerce")).sort_values(["_seed", "seed"])
    packed, counts = ordered["per_image_correct"].fillna(""), set(_numbers(ordered, "per_image_n"))
    if (packed == "").any() or len(counts) != 1 or math.isnan(next(iter(counts))):
        return "", math.nan, ""
    return " ".join(packed), next(iter(counts)), " ".join(ordered["seed"].fillna("").astype(str))


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
        row["images"] = _numbers(runs, "images").mean()
        row["chance"] = 1.0 / row["classes"] if row["classes"] >= 2 else math.nan
        row["above_chance"] = _above_chance(runs, row["classes"], row["task"], row["metric"])
        row["per_image_correct"], row["per_image_n"], row["per_image_seeds"] = _per_image(runs)
        notes = [n for n in runs["notes"].fillna("").astype(str) if n] if "notes" in runs else []
        row["notes"] = " | ".join(dict.fromkeys(notes))
        row["files"] = " ".join(runs["file"])
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.replace([np.inf, -np.inf], np.nan)
