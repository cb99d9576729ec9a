"""A leaderboard over many result files (models, datasets, strategies), and the best run within a MACs budget.

Inputs are result JSONs (or folders of them) and CSVs written by `clip_benchmark build`; every run
goes through the reporter (`load_results` row logic, `compare` pairing with its baseline), so the
numbers are the report's. Output columns keep clip_benchmark build's names where they overlap
(`model`, `pretrained`, `model_fullname`, `dataset`, `task`, `language`, and the headline metric
under its own name, e.g. `acc1` or `image_retrieval_recall@5`), so the two CSVs can be joined.

Budgets:
- relative (`--budget 0.5`): within each model/checkpoint/dataset/task, the most accurate run
  spending at most that share of its baseline's GMACs (the baseline itself qualifies at >= 1);
- absolute (`--gmacs_budget 2.0`): within each dataset/task, the most accurate run of any model
  spending at most that many GMACs per image.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from .compare import compare
from .build_csv import BUILD_KEYS, build_csv_records  # noqa: F401  (re-exported)
from .load import GROUP_KEYS, load_results

_NON_METRIC = set(BUILD_KEYS) | {"pruning", "efficiency", "classnames", "templates", "attention_output"}
TASK_KEYS = ["dataset", "task", "language"]
LEADERBOARD_COLUMNS = [
    "rank", "model_fullname", "model", "pretrained", "dataset", "task", "language", "strategy", "params", "metric",
    "score", "score_baseline", "score_delta", "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency",
    "file",
]


def load_inputs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The reporter's flat table for result JSONs, folders of them, and `clip_benchmark build` CSVs."""
    paths = list(paths)
    if not paths:
        raise ValueError("no result JSON or build CSV given")
    return load_results(paths)


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """Every run with its baseline comparison, ranked by score within each dataset/task/language."""
    table = compare(results).rename(columns={"acc1": "score", "acc1_baseline": "score_baseline",
                                             "acc1_delta": "score_delta"})
    table["model_fullname"] = (table["model"] + " " + table["pretrained"].fillna("")).str.strip()
    table = table.sort_values(TASK_KEYS + ["score", "gmacs"], ascending=[True, True, True, False, True],
                              na_position="last")
    table["rank"] = table.groupby(TASK_KEYS, dropna=False)["score"].rank(method="min", ascending=False).astype("Int64")
    metrics = sorted(set(table["metric"].dropna()) - {""})
    for metric in metrics:  # the headline metric under clip_benchmark's own column name
        table[metric] = table["score"].where(table["metric"] == metric)
    return table[LEADERBOARD_COLUMNS + metrics].reset_index(drop=True)


def _best(candidates: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group, the most accurate candidate (ties: fewer GMACs, then name), with how many qualified."""
    ordered = candidates.sort_values(keys + ["score", "gmacs", "strategy", "params"],
                                     ascending=[True] * len(keys) + [False, True, True, True])
    best = ordered.groupby(keys, dropna=False).head(1).copy()
    counts = candidates.groupby(keys, dropna=False).size().rename("candidates").reset_index()
    return best.merge(counts, on=keys, how="left")


def best_within_budget(board: pd.DataFrame, budgets: Iterable[float] = (), gmacs_budgets: Iterable[float] = ()) -> pd.DataFrame:
    """One row per budget and group: the best run that fits, or an empty row saying none does."""
    measured = board.dropna(subset=["score", "gmacs"])
    specs = [("relative", b, f"<= {b:g} x baseline GMACs", GROUP_KEYS, measured["gmacs_ratio"]) for b in budgets]
    specs += [("absolute", b, f"<= {b:g} GMACs", TASK_KEYS, measured["gmacs"]) for b in gmacs_budgets]
    parts = []
    for kind, value, name, keys, spent in specs:
        best = _best(measured[spent <= value * (1 + 1e-9)], keys)
        every_group = measured[keys].drop_duplicates()
        parts.append(every_group.merge(best, on=keys, how="left").assign(budget=name, budget_kind=kind,
                                                                          budget_value=value))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    unnamed = table["model_fullname"].isna() & table["model"].notna()
    table.loc[unnamed, "model_fullname"] = (table["model"] + " " + table["pretrained"].fillna("")).str.strip()[unnamed]
    table["candidates"] = table["candidates"].fillna(0).astype(int)
    columns = ["budget", "budget_kind", "budget_value", "model_fullname", "model", "pretrained", "dataset", "task",
               "language", "strategy", "params", "metric", "score", "score_delta", "gmacs", "gmacs_ratio", "speedup",
               "candidates", "file"]
    return table[columns]


def strategy_wins(best: pd.DataFrame) -> pd.DataFrame:
    """How often each strategy is the best within a budget (rows: strategies, columns: budgets)."""
    if best.empty or best["strategy"].isna().all():
        return pd.DataFrame()
    wins = best.dropna(subset=["strategy"]).pivot_table(index="strategy", columns="budget", values="score",
                                                        aggfunc="count", fill_value=0)
    order = best.drop_duplicates("budget")["budget"]
    return wins[[b for b in order if b in wins.columns]]


def _fmt(value, pattern: str) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value) else pattern.format(value)


def _shown(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    shown = table[columns].copy().astype(object)
    formats = {"score": lambda v: _fmt(v * 100, "{:.2f}%"), "score_baseline": lambda v: _fmt(v * 100, "{:.2f}%"),
               "score_delta": lambda v: _fmt(v * 100, "{:+.2f} pp"), "gmacs": lambda v: _fmt(v, "{:.4g}"),
               "gmacs_ratio": lambda v: _fmt(v, "{:.3f}"), "images_per_second": lambda v: _fmt(v, "{:.1f}"),
               "speedup": lambda v: _fmt(v, "{:.2f}x"), "efficiency": lambda v: _fmt(v, "{:.3f}")}
    for column, fmt in formats.items():
        if column in shown:
            shown[column] = table[column].map(fmt)
    return shown.fillna("")


def markdown(board: pd.DataFrame, best: pd.DataFrame, title: str, top: int | None = None) -> str:
    lines = [f"# {title}", "", f"{len(board)} runs, {board['model_fullname'].nunique()} model(s), "
             f"{board['dataset'].nunique()} dataset(s), {board['strategy'].nunique()} strategies (baseline included).", ""]
    if not best.empty:
        lines += ["## Best run within a MACs budget", ""]
        for _, part in best.groupby("budget", sort=False):
            lines += [f"### {part['budget'].iloc[0]}", ""]
            part = part.assign(strategy=part["strategy"].fillna("(none fits)"))
            cols = ["model_fullname", "dataset", "task", "strategy", "params", "score", "score_delta", "gmacs",
                    "gmacs_ratio", "speedup", "candidates"]
            lines += [_shown(part, cols).to_markdown(index=False, disable_numparse=True), ""]
        wins = strategy_wins(best)
        if not wins.empty:
            lines += ["### Wins per strategy", "", "How many model/dataset cells (or datasets, for absolute budgets) "
                      "each strategy wins under each budget.", "",
                      wins.reset_index().to_markdown(index=False, disable_numparse=True), ""]
    lines += ["## Leaderboard", ""]
    for key, part in board.groupby(TASK_KEYS, sort=True, dropna=False):
        lines += [f"### {key[0]} · {key[1]}" + (f" · {key[2]}" if key[2] and key[2] != "en" else ""), ""]
        part = part.head(top) if top else part
        cols = ["rank", "model_fullname", "strategy", "params", "score", "score_delta", "gmacs", "gmacs_ratio",
                "images_per_second", "speedup", "efficiency"]
        lines += [_shown(part, cols).to_markdown(index=False, disable_numparse=True), ""]
    metrics = sorted(set(board["metric"].dropna()) - {""})
    lines += [f"`score` is the task's headline metric ({', '.join(f'`{m}`' for m in metrics)}); `score_delta` is "
              "against the baseline of the same model, checkpoint, dataset, task and language; `gmacs_ratio` and "
              "`speedup` likewise (see `pruning-bench report` for the definitions).", ""]
    return "\n".join(lines)


def write_leaderboard(board: pd.DataFrame, output, *, budgets=(0.25, 0.5, 0.75), gmacs_budgets=(), title=None,
                      top=None) -> list[Path]:
    """OUTPUT.csv (every run), OUTPUT_budget.csv (best within each budget) and OUTPUT.md."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    best = best_within_budget(board, budgets, gmacs_budgets)
    paths = [output.with_name(output.name + ".csv")]
    board.to_csv(paths[0], index=False)
    if not best.empty:
        paths.append(output.with_name(output.name + "_budget.csv"))
        best.to_csv(paths[-1], index=False)
    paths.append(output.with_name(output.name + ".md"))
    paths[-1].write_text(markdown(board, best, title or f"Leaderboard: {output.name}", top))
    return paths

