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

Budgets carry a tolerance (`budget_tolerance`, a share of the baseline's MACs, default 0.01): a run matched
to 0.6002 of its baseline fits "<= 0.6" (absolute budgets: that share of the run's own baseline GMACs).
`--match_macs` runs show their target, achieved ratio and gap.

One row per configuration: runs differing only in seed are aggregated (mean score, `n` runs), never
ranked once per seed. "Best" is never given to a configuration that is not above chance in every run
(1 / the dataset's classes, one-sided exact binomial test per run; `above_chance`). The best one's
`verdict` is `only candidate` when nothing else fits, `clear lead` when the 95% interval of its lead
over every other candidate excludes zero (paired bootstrap over the test images for single runs with
per-image outcomes, images + seeds t interval with Satterthwaite degrees of freedom for seeds; see
uncertainty.py), `tied within noise` (`tied_with` names them) or `uncertainty unknown` when a candidate's
result files carry no per-image outcomes (older files: no calibrated interval exists for them).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from ..record.atomic import write_text
from .aggregate import aggregate
from .compare import compare
from .uncertainty import MISSING_OUTCOMES_NOTE, NO_OUTCOMES, config_difference_interval, unpack_correct
from .build_csv import BUILD_KEYS, build_csv_records  # noqa: F401  (re-exported)
from .load import GROUP_KEYS, load_results

TASK_KEYS = ["dataset", "task", "language"]
LEADERBOARD_COLUMNS = [
    "rank", "model_fullname", "model", "pretrained", "dataset", "task", "language", "strategy", "params", "metric",
    "score", "score_baseline", "score_delta", "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency",
    "file", "n", "seeds", "score_mean", "score_std", "score_delta_low", "score_delta_high", "delta_method",
    "delta_significant", "above_chance", "classes", "match_target", "match_achieved", "match_gap", "notes",
]
_FROM_CONFIG = {"acc1_mean": "score", "acc1_baseline_mean": "score_baseline", "acc1_delta_mean": "score_delta",
                "gmacs_mean": "gmacs", "gmacs_baseline_mean": "gmacs_baseline", "gmacs_ratio_mean": "gmacs_ratio",
                "images_per_second_mean": "images_per_second", "speedup_mean": "speedup",
                "efficiency_mean": "efficiency", "files": "file", "acc1_std": "score_std",
                "acc1_delta_low": "score_delta_low", "acc1_delta_high": "score_delta_high", "images": "images_evaluated",
                "match_target_mean": "match_target", "match_achieved_mean": "match_achieved",
                "match_gap_mean": "match_gap"}
_HIDDEN = ["per_image_correct", "per_image_n", "per_image_seeds", "gmacs_baseline"]  # read by the lead test, not written


def load_inputs(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """The reporter's flat table for result JSONs, folders of them, and `clip_benchmark build` CSVs."""
    paths = list(paths)
    if not paths:
        raise ValueError("no result JSON or build CSV given")
    return load_results(paths)


def leaderboard(results: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (runs differing only in seed aggregated) with its baseline comparison, ranked by
    mean score within each dataset/task/language."""
    table = aggregate(compare(results)).rename(columns=_FROM_CONFIG)
    table["score_mean"] = table["score"]
    table["model_fullname"] = (table["model"] + " " + table["pretrained"].fillna("")).str.strip()
    table = table.sort_values(TASK_KEYS + ["score", "gmacs", "strategy", "params"],
                              ascending=[True, True, True, False, True, True, True], na_position="last")
    table["rank"] = table.groupby(TASK_KEYS, dropna=False)["score"].rank(method="min", ascending=False).astype("Int64")
    metrics = sorted(set(table["metric"].dropna()) - {""})
    for metric in metrics:  # the headline metric under clip_benchmark's own column name
        table[metric] = table["score"].where(table["metric"] == metric)
    return table[LEADERBOARD_COLUMNS + metrics + ["images_evaluated"] + _HIDDEN].reset_index(drop=True)


def _outcomes(row) -> np.ndarray | None:
    """A configuration's per-image correctness, seeds x images, or None when its runs do not all carry it."""
    if not row.get("per_image_correct") or pd.isna(row.get("per_image_n")):
        return None
    return np.stack([unpack_correct(text, int(row["per_image_n"])) for text in row["per_image_correct"].split()])


def lead_interval(best, other) -> tuple[float, float, float]:
    """(mean, low, high) of best's score minus other's: the paired interval over the images both were evaluated on
    (see the module docstring); NaN bounds unless both carry per-image outcomes for the same images."""
    a, b = _outcomes(best), _outcomes(other)
    if a is not None and b is not None and a.shape[1] == b.shape[1]:
        return tuple(float(v) for v in config_difference_interval(a, b))
    return best["score"] - other["score"], math.nan, math.nan


def _verdicts(ordered: pd.DataFrame) -> pd.Series:
    """Per candidate list (best first): `only candidate`, `clear lead`, `tied within noise` or `uncertainty unknown`."""
    best, others = ordered.iloc[0], ordered.iloc[1:]
    if others.empty:
        return pd.Series({"verdict": "only candidate", "tied_with": ""})
    tied, unknown = [], False
    for _, other in others.iterrows():
        _, low, _ = lead_interval(best, other)
        if math.isnan(low):
            unknown = True
        elif low <= 0:
            tied.append(f"{other['model']} {other['strategy']} {other['params']}".strip())
    verdict = "tied within noise" if tied else ("uncertainty unknown" if unknown else "clear lead")
    return pd.Series({"verdict": verdict, "tied_with": "; ".join(tied)})


def _best(candidates: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per group, the most accurate configuration above chance (ties: fewer GMACs, then name), how many
    qualified, how many were set aside at chance level, and whether the lead is outside the noise."""
    chance = candidates["above_chance"].eq(False).fillna(False).astype(bool)
    eligible = candidates[~chance]
    ordered = eligible.sort_values(keys + ["score", "gmacs", "strategy", "params"],
                                   ascending=[True] * len(keys) + [False, True, True, True])
    best = ordered.groupby(keys, dropna=False).head(1).copy()
    verdicts = [_verdicts(part) for _, part in ordered.groupby(keys, dropna=False, sort=False)]
    if len(best):
        best[["verdict", "tied_with"]] = pd.DataFrame(verdicts, index=best.index)
    counts = candidates.groupby(keys, dropna=False).size().rename("candidates").reset_index()
    at_chance = candidates[chance].groupby(keys, dropna=False).size().rename("at_chance").reset_index()
    return best, counts.merge(at_chance, on=keys, how="left")


def best_within_budget(board: pd.DataFrame, budgets: Iterable[float] = (), gmacs_budgets: Iterable[float] = (),
                       budget_tolerance: float = 0.01) -> pd.DataFrame:
    """One row per budget and group: the best configuration that fits (within `budget_tolerance`, a share of the
    baseline's MACs), or an empty row saying none does."""
    if not (budget_tolerance >= 0):
        raise ValueError(f"budget_tolerance={budget_tolerance!r}: must be >= 0 (a share of the baseline's MACs)")
    measured = board.dropna(subset=["score", "gmacs"])
    slack = budget_tolerance * measured["gmacs_baseline"].fillna(measured["gmacs"]) if "gmacs_baseline" in measured \
        else budget_tolerance * measured["gmacs"]
    specs = [("relative", b, f"<= {b:g} x baseline GMACs", GROUP_KEYS,
              measured["gmacs_ratio"] <= b + budget_tolerance + 1e-12) for b in budgets]
    specs += [("absolute", b, f"<= {b:g} GMACs", TASK_KEYS, measured["gmacs"] <= b + slack + 1e-12)
              for b in gmacs_budgets]
    parts = []
    for kind, value, name, keys, fits in specs:
        best, counts = _best(measured[fits], keys)
        every_group = measured[keys].drop_duplicates().merge(counts, on=keys, how="left")
        parts.append(every_group.merge(best, on=keys, how="left").assign(budget=name, budget_kind=kind,
                                                                          budget_value=value,
                                                                          budget_tolerance=budget_tolerance))
    if not parts:
        return pd.DataFrame()
    table = pd.concat(parts, ignore_index=True)
    unnamed = table["model_fullname"].isna() & table["model"].notna()
    table.loc[unnamed, "model_fullname"] = (table["model"] + " " + table["pretrained"].fillna("")).str.strip()[unnamed]
    table["candidates"] = table["candidates"].fillna(0).astype(int)
    table["at_chance"] = table.get("at_chance", pd.Series(0, index=table.index)).fillna(0).astype(int)
    for column in ("verdict", "tied_with"):
        table[column] = table[column].fillna("") if column in table else ""
    columns = ["budget", "budget_kind", "budget_value", "budget_tolerance", "model_fullname", "model", "pretrained", "dataset", "task",
               "language", "strategy", "params", "metric", "score", "score_delta", "score_delta_low", "score_delta_high",
               "delta_significant", "delta_method", "n", "gmacs", "gmacs_ratio", "match_target", "match_achieved", "match_gap",
               "speedup",
               "candidates", "at_chance", "verdict", "tied_with", "file"]
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
               "match_target": lambda v: _fmt(v, "{:.3f}"), "match_achieved": lambda v: _fmt(v, "{:.3f}"),
               "match_gap": lambda v: _fmt(v, "{:+.4f}"),
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
        methods = table["delta_method"] if "delta_method" in table else pd.Series("", index=table.index)
        shown["score_delta"] = [d + ("" if not d else " (no interval)" if m == NO_OUTCOMES else
                                     "" if pd.isna(sig) or sig else " (within noise)")
                                for d, sig, m in zip(shown["score_delta"], table["delta_significant"], methods)]
    return shown


def _match_columns(part: pd.DataFrame) -> list[str]:
    """Target, achieved and gap of `--match_macs` runs, when the table holds any."""
    return ["match_target", "match_achieved", "match_gap"] if part["match_target"].notna().any() else []


def markdown(board: pd.DataFrame, best: pd.DataFrame, title: str, top: int | None = None) -> str:
    lines = [f"# {title}", "", f"{len(board)} configurations ({int(board['n'].sum())} runs), "
             f"{board['model_fullname'].nunique()} model(s), "
             f"{board['dataset'].nunique()} dataset(s), {board['strategy'].nunique()} strategies (baseline included).", ""]
    if not best.empty:
        lines += ["## Best run within a MACs budget", "",
                  "Configurations not above chance in every run (one-sided exact binomial test per run against 1 / "
                  "classes) are never best (`at_chance` counts those set aside); `verdict` says whether the best "
                  "one's lead over every other candidate is outside its 95% interval (`clear lead`), or that it is "
                  "the `only candidate`. Intervals: paired over the test images, seeds included with t quantiles "
                  "(see uncertainty in `pruning-bench report`'s Definitions); `uncertainty unknown`: some candidate "
                  "has no per-image outcomes.", ""]
        for _, part in best.groupby("budget", sort=False):
            tolerance = part["budget_tolerance"].iloc[0]
            lines += [f"### {part['budget'].iloc[0]}" + (f" (tolerance {tolerance:g} of baseline MACs)" if tolerance
                                                          else ""), ""]
            part = part.assign(strategy=part["strategy"].fillna("(none fits)"))
            cols = ["model_fullname", "dataset", "task", "strategy", "params", "n", "score", "score_delta", "gmacs",
                    "gmacs_ratio", *_match_columns(part), "speedup", "candidates", "at_chance", "verdict", "tied_with"]
            shown = _noise_marked(part.assign(score_std=math.nan))
            shown["n"] = part["n"].map(lambda v: _fmt(v, "{:.0f}"))
            shown = shown[cols]
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
                *_match_columns(part), "images_per_second", "speedup", "efficiency"]
        lines += [_noise_marked(part)[cols].to_markdown(index=False, disable_numparse=True), ""]
    if board["delta_method"].eq(NO_OUTCOMES).any():
        lines += [MISSING_OUTCOMES_NOTE + " Rows marked `(no interval)`; a lead over one of them is `uncertainty "
                  "unknown`.", ""]
    metrics = sorted(set(board["metric"].dropna()) - {""})
    lines += [f"`score` is the task's headline metric ({', '.join(f'`{m}`' for m in metrics)}); `score_delta` is "
              "against the baseline of the same model, checkpoint, dataset, task and language; `gmacs_ratio` and "
              "`speedup` likewise (see `pruning-bench report` for the definitions).", ""]
    return "\n".join(lines)


def write_leaderboard(board: pd.DataFrame, output, *, budgets=(0.25, 0.5, 0.75), gmacs_budgets=(), title=None,
                      top=None, budget_tolerance: float = 0.01) -> list[Path]:
    """OUTPUT.csv (every configuration), OUTPUT_budget.csv (best within each budget) and OUTPUT.md."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    best = best_within_budget(board, budgets, gmacs_budgets, budget_tolerance)
    paths = [output.with_name(output.name + ".csv")]
    write_text(paths[0], board.drop(columns=_HIDDEN, errors="ignore").to_csv(index=False))
    if not best.empty:
        paths.append(output.with_name(output.name + "_budget.csv"))
        write_text(paths[-1], best.to_csv(index=False))
    paths.append(output.with_name(output.name + ".md"))
    write_text(paths[-1], markdown(board, best, title or f"Leaderboard: {output.name}", top))
    return paths

