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

Runs differing only in seed count as one configuration (its mean score; `n` runs). "Best" is never
given to a configuration whose accuracy is not above chance (1 / the dataset's classes, by more
than the binomial 95% margin; `above_chance`); a configuration whose score is within noise of the
best one (difference inside 1.96 x the combined standard error: std over seeds / sqrt(n), else the
binomial error over the test images) is listed as tied with it (`tied_with`, `verdict`), and its
score_delta against the baseline is marked when its 95% interval includes zero.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..record.atomic import write_text
from .aggregate import CONFIG_KEYS, aggregate
from .compare import compare
from .uncertainty import Z95, binomial_se
from .build_csv import BUILD_KEYS, build_csv_records  # noqa: F401  (re-exported)
from .load import GROUP_KEYS, load_results

TASK_KEYS = ["dataset", "task", "language"]
LEADERBOARD_COLUMNS = [
    "rank", "model_fullname", "model", "pretrained", "dataset", "task", "language", "strategy", "params", "metric",
    "score", "score_baseline", "score_delta", "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency",
    "file", "n", "score_mean", "score_std", "score_delta_low", "score_delta_high", "delta_significant", "above_chance",
    "classes",
]
_FROM_CONFIG = {"n": "n", "acc1_mean": "score_mean", "acc1_std": "score_std", "acc1_delta_low": "score_delta_low",
                "acc1_delta_high": "score_delta_high", "delta_significant": "delta_significant",
                "above_chance": "above_chance", "classes": "classes", "images": "images_evaluated"}


def load_inputs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The reporter's flat table for result JSONs, folders of them, and `clip_benchmark build` CSVs."""
    paths = list(paths)
    if not paths:
        raise ValueError("no result JSON or build CSV given")
    return load_results(paths)


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """Every run with its baseline comparison, ranked by score within each dataset/task/language."""
    compared = compare(results)
    configs = aggregate(compared)
    configs["images"] = [compared.loc[compared["file"].isin(f.split(" ")), "images"].astype(float).mean()
                         for f in configs["files"]]
    keyed = compared.copy()
    for key in CONFIG_KEYS:
        keyed[key] = keyed[key].astype(object).where(keyed[key].notna(), "")
    keyed = keyed.rename(columns={"params": "_params", "config_params": "params"})
    extra = configs[CONFIG_KEYS[:5] + ["strategy", "params"] + CONFIG_KEYS[7:] + list(_FROM_CONFIG)].rename(
        columns=_FROM_CONFIG).drop(columns=["classes"])
    compared = keyed.merge(extra, on=CONFIG_KEYS[:5] + ["strategy", "params"] + CONFIG_KEYS[7:], how="left") \
        .drop(columns=["params"]).rename(columns={"_params": "params"})
    table = compared.rename(columns={"acc1": "score", "acc1_baseline": "score_baseline", "acc1_delta": "score_delta"})
    table["model_fullname"] = (table["model"] + " " + table["pretrained"].fillna("")).str.strip()
    table = table.sort_values(TASK_KEYS + ["score", "gmacs"], ascending=[True, True, True, False, True],
                              na_position="last")
    table["rank"] = table.groupby(TASK_KEYS, dropna=False)["score"].rank(method="min", ascending=False).astype("Int64")
    metrics = sorted(set(table["metric"].dropna()) - {""})
    for metric in metrics:  # the headline metric under clip_benchmark's own column name
        table[metric] = table["score"].where(table["metric"] == metric)
    return table[LEADERBOARD_COLUMNS + metrics + ["images_evaluated"]].reset_index(drop=True)


def _score_se(row) -> float:
    """Standard error of a configuration's mean score: over seeds when repeated, else binomial over images."""
    if row["n"] >= 2 and not pd.isna(row["score_std"]):
        return row["score_std"] / math.sqrt(row["n"])
    return binomial_se(row["score_mean"], row["images_evaluated"] * row["n"] if not pd.isna(row["images_evaluated"]) else math.nan)


def _verdicts(ordered: pd.DataFrame) -> pd.Series:
    """Per candidate list (best first): `clear`, `tied within noise with ...` or `uncertainty unknown`."""
    best, others = ordered.iloc[0], ordered.iloc[1:]
    se_best = _score_se(best)
    tied, unknown = [], False
    for _, other in others.iterrows():
        se = math.sqrt(se_best ** 2 + _score_se(other) ** 2)
        if math.isnan(se):
            unknown = True
        elif best["score_mean"] - other["score_mean"] <= Z95 * se:
            tied.append(f"{other['model']} {other['strategy']} {other['params']}".strip())
    verdict = ("tied within noise" if tied else ("uncertainty unknown" if unknown and len(others) else "clear"))
    return pd.Series({"verdict": verdict, "tied_with": "; ".join(tied)})


def _best(candidates: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Per group, the most accurate configuration above chance (ties: fewer GMACs, then name), how many
    qualified, how many were set aside at chance level, and whether the lead is outside the noise."""
    configs = candidates.drop_duplicates(subset=keys + ["model", "pretrained", "strategy", "params"])
    chance = configs["above_chance"].eq(False).fillna(False).astype(bool)
    eligible = configs[~chance].assign(score=lambda t: t["score_mean"].fillna(t["score"]))
    ordered = eligible.sort_values(keys + ["score", "gmacs", "strategy", "params"],
                                   ascending=[True] * len(keys) + [False, True, True, True])
    best = ordered.groupby(keys, dropna=False).head(1).copy()
    verdicts = [_verdicts(part) for _, part in ordered.groupby(keys, dropna=False, sort=False)]
    if len(best):
        best[["verdict", "tied_with"]] = pd.DataFrame(verdicts, index=best.index)
    counts = configs.groupby(keys, dropna=False).size().rename("candidates").reset_index()
    at_chance = configs[chance].groupby(keys, dropna=False).size().rename("at_chance").reset_index()
    return best, counts.merge(at_chance, on=keys, how="left")


def best_within_budget(board: pd.DataFrame, budgets: Iterable[float] = (), gmacs_budgets: Iterable[float] = ()) -> pd.DataFrame:
    """One row per budget and group: the best run that fits, or an empty row saying none does."""
    measured = board.dropna(subset=["score", "gmacs"])
    specs = [("relative", b, f"<= {b:g} x baseline GMACs", GROUP_KEYS, measured["gmacs_ratio"]) for b in budgets]
    specs += [("absolute", b, f"<= {b:g} GMACs", TASK_KEYS, measured["gmacs"]) for b in gmacs_budgets]
    parts = []
    for kind, value, name, keys, spent in specs:
        best, counts = _best(measured[spent <= value * (1 + 1e-9)], keys)
        every_group = measured[keys].drop_duplicates().merge(counts, on=keys, how="left")
        parts.append(every_group.merge(best, on=keys, how="left").assign(budget=name, budget_kind=kind,
                                                                          budget_value=value))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    unnamed = table["model_fullname"].isna() & table["model"].notna()
    table.loc[unnamed, "model_fullname"] = (table["model"] + " " + table["pretrained"].fillna("")).str.strip()[unnamed]
    table["candidates"] = table["candidates"].fillna(0).astype(int)
    table["at_chance"] = table.get("at_chance", pd.Series(0, index=table.index)).fillna(0).astype(int)
    for column in ("verdict", "tied_with"):
        table[column] = table[column].fillna("") if column in table else ""
    columns = ["budget", "budget_kind", "budget_value", "model_fullname", "model", "pretrained", "dataset", "task",
               "language", "strategy", "params", "metric", "score", "score_delta", "score_delta_low", "score_delta_high",
               "delta_significant", "n", "gmacs", "gmacs_ratio", "speedup", "candidates", "at_chance", "verdict",
               "tied_with", "file"]
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


def _noise_marked(table: pd.DataFrame) -> pd.DataFrame:
    """score as mean ± std (n) where seeds repeat; score_delta marked when its 95% interval includes zero."""
    shown = _shown(table, list(table.columns))
    if "score_std" in table:
        shown["score"] = [s + (f" ± {sd * 100:.2f} (n={int(n)})" if not pd.isna(sd) else "")
                          for s, sd, n in zip(shown["score"], table["score_std"], table["n"].fillna(1))]
    if "score_delta_low" in table:
        shown["score_delta"] = [d + (" (within noise)" if d and not pd.isna(lo) and not sig else "")
                                for d, lo, sig in zip(shown["score_delta"], table["score_delta_low"],
                                                      table["delta_significant"].fillna(False))]
    return shown


def markdown(board: pd.DataFrame, best: pd.DataFrame, title: str, top: int | None = None) -> str:
    lines = [f"# {title}", "", f"{len(board)} runs, {board['model_fullname'].nunique()} model(s), "
             f"{board['dataset'].nunique()} dataset(s), {board['strategy'].nunique()} strategies (baseline included).", ""]
    if not best.empty:
        lines += ["## Best run within a MACs budget", "",
                  "Configurations at chance level (accuracy not above 1 / classes by its binomial 95% margin) are "
                  "never best (`at_chance` counts those set aside); `verdict` says whether the best one's lead over "
                  "the others is outside the noise (1.96 x the combined standard error).", ""]
        for _, part in best.groupby("budget", sort=False):
            lines += [f"### {part['budget'].iloc[0]}", ""]
            part = part.assign(strategy=part["strategy"].fillna("(none fits)"))
            cols = ["model_fullname", "dataset", "task", "strategy", "params", "score", "score_delta", "gmacs",
                    "gmacs_ratio", "speedup", "candidates", "at_chance", "verdict", "tied_with"]
            shown = _noise_marked(part.assign(score_std=math.nan))[cols]
            lines += [shown.to_markdown(index=False, disable_numparse=True), ""]
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
        lines += [_noise_marked(part)[cols].to_markdown(index=False, disable_numparse=True), ""]
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
    write_text(paths[0], board.to_csv(index=False))
    if not best.empty:
        paths.append(output.with_name(output.name + "_budget.csv"))
        write_text(paths[-1], best.to_csv(index=False))
    paths.append(output.with_name(output.name + ".md"))
    write_text(paths[-1], markdown(board, best, title or f"Leaderboard: {output.name}", top))
    return paths

