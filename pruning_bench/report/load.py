"""Read result JSONs (clip_benchmark's keys plus `pruning` and `efficiency`) into one flat table.

A row carries the run's identity (`fields.run_fields`, written by `record.identity`) and its per-image
outcomes as `per_image_correct` / `per_image_n`: a retrieval run's per-query hits of the metric the
report shows. A run of a saved model evaluated without the token strategy the file records
(`--prune_no_reapply`) is labelled as such, never as a baseline.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .build_csv import build_csv_records, is_build_csv
from .distinct import distinct
from .fields import format_params, run_fields

BASELINE = "baseline"
GROUP_KEYS = ["model", "pretrained", "dataset", "task", "language"]
_PRIMARY = {"zeroshot_classification": "acc1", "linear_probe": "lp_acc1"}


def primary_metric(task: str, metrics: dict[str, Any]) -> str | None:
    """The metric the report calls `acc1`: top-1 accuracy, or image-retrieval recall at the smallest k."""
    name = _PRIMARY.get(task)
    if name in metrics:
        return name
    recalls = sorted((int(k.rsplit("@", 1)[1]), k) for k in metrics if k.startswith("image_retrieval_recall@"))
    if recalls:
        return recalls[0][1]
    for fallback in ("acc1", "lp_acc1", "mean_average_precision"):
        if fallback in metrics:
            return fallback
    return None


def result_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """The JSON files named, with directories expanded to the `*.json` files they hold (sorted)."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(path.glob("*.json"))
        elif path.exists():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such result file or directory: {path}")
    return files


def _number(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


class ResultFileError(ValueError):
    """A result file that cannot be reported: empty, truncated, foreign, or with a key of the wrong type."""


_BLOCKS = ("pruning", "efficiency")
_NUMBERS = ("gmacs", "gflops", "images_per_second")


def read_result(path) -> dict[str, Any]:
    """The parsed result at `path`, or `ResultFileError` naming the file and what is wrong with it."""
    from ..record.check import data_problem

    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ResultFileError(f"{path} is not a result file (not text)") from None
    if not text.strip():
        raise ResultFileError(f"{path} is empty (a run interrupted before writing it?)")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ResultFileError(f"{path} is not valid JSON ({exc}; truncated?)") from None
    problem = data_problem(data)
    if problem:
        raise ResultFileError(f"{path} is not a clip_benchmark result: it {problem}")
    for block in _BLOCKS:
        if data.get(block) is not None and not isinstance(data[block], dict):
            raise ResultFileError(f"{path}: '{block}' is {type(data[block]).__name__} {str(data[block])[:40]!r}, "
                                  "not an object")
    params = (data.get("pruning") or {}).get("params")
    if params is not None and not isinstance(params, dict):
        raise ResultFileError(f"{path}: 'pruning.params' is {type(params).__name__}, not an object")
    for key in _NUMBERS:
        value = (data.get("efficiency") or {}).get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ResultFileError(f"{path}: 'efficiency.{key}' is {type(value).__name__} {value!r}, not a number")
    return data


def _strategy(data: dict[str, Any]) -> str:
    """The strategy column: the applied one, a saved one left out, or the baseline."""
    pruning = data.get("pruning") or {}
    if pruning.get("strategy"):
        return pruning["strategy"]
    left_out = data.get("token_strategy_not_applied")
    if isinstance(left_out, dict) and left_out.get("strategy"):
        return f"none (saved with {left_out['strategy']}, not re-applied)"
    return BASELINE


def _outcomes(data: dict[str, Any], metric: str | None) -> dict[str, Any]:
    """Per-image outcomes of the reported metric: `per_image`, else the metric's `per_query` list."""
    per_query = data.get("per_query") if isinstance(data.get("per_query"), dict) else {}
    found = per_query.get(metric) if metric else None
    if not isinstance(found, dict) or not found.get("correct"):
        return {}
    return {"per_image_correct": found["correct"], "per_image_n": _number(found.get("n"))}


def result_row(path: Path) -> dict[str, Any]:
    data = read_result(path)
    metrics = data.get("metrics") or {}
    pruning = data.get("pruning") or {}
    efficiency = data.get("efficiency") or {}
    metric = primary_metric(data.get("task", ""), metrics)
    tokens = efficiency.get("tokens_per_layer") or []
    row = {
        "model": data.get("model", ""),
        "pretrained": data.get("pretrained", ""),
        "dataset": data.get("dataset", ""),
        "task": data.get("task", ""),
        "language": data.get("language", ""),
        "strategy": _strategy(data),
        "params": format_params(pruning.get("params")),
        "pruned_nothing": pruning.get("effective") is False,  # no block removed a token or a weight
        "metric": metric or "",
        "acc1": _number(metrics.get(metric)) if metric else math.nan,
        "gmacs": _number(efficiency.get("gmacs")),
        "gflops": _number(efficiency.get("gflops")),
        "images_per_second": _number(efficiency.get("images_per_second")),
        "peak_activation_mb": _number((efficiency.get("memory") or {}).get("peak_activation_mb")),
        # measured with efficiency; else as the run recorded them (the plugin's runs without efficiency)
        "batch_size": efficiency.get("batch_size", data.get("batch_size")),
        "dtype": efficiency.get("dtype", data.get("dtype")),
        "device": efficiency.get("device", data.get("device")),
        "tokens_per_layer": " ".join(map(str, tokens)),
        "file": str(path),
        "result_name": str(data.get("result_file") or getattr(path, "name", "") or path),
        **run_fields(data),
    }
    if not row["per_image_correct"]:
        row.update(_outcomes(data, metric))
    return row


def rows_of(path: Path) -> list[dict]:
    """The reporter's rows for one input file: one for a result JSON, one per line of a `clip_benchmark build` CSV."""
    if is_build_csv(Path(path)):
        return [result_row(record) for record in build_csv_records(Path(path))]
    return [result_row(path)]


def _warn(message: str) -> None:
    import warnings

    warnings.warn(message, UserWarning, stacklevel=3)


def load_results(paths: Iterable[str | os.PathLike], on_skip=None) -> pd.DataFrame:
    """One row per result file. A file that is not a complete result (empty, truncated, foreign, a key of the
    wrong type) is skipped with a message to `on_skip` (default: a UserWarning) when other files are fine, and
    raises `ResultFileError` naming it when none is."""
    rows, skipped = [], []
    files, repeats = distinct(result_files(paths))  # copies, repeats and temporary files: one run counted once
    for path in files:
        try:
            rows += rows_of(path)
        except (ResultFileError, UnicodeDecodeError) as exc:
            skipped.append(str(exc) if isinstance(exc, ResultFileError) else f"{path} is not a result file (not text)")
    if skipped and not rows:
        raise ResultFileError(skipped[0] + (f" (and {len(skipped) - 1} other file(s) unusable)" if len(skipped) > 1 else ""))
    for message in skipped + repeats:
        (on_skip or _warn)(f"skipped {message}")
    if not rows:
        raise ValueError("no result JSON files found")
    table = pd.DataFrame(rows)
    table["batch_size"] = table["batch_size"].astype("Int64")
    return table
