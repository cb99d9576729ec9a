"""Write a comparison as NAME.csv (one row per run, raw numbers), NAME_configurations.csv (runs differing only
in seed grouped: mean, std, n, intervals), NAME.md (readable) and the plots NAME_accuracy_vs_{gmacs,throughput}.png.

The Markdown shows, per task, what that task measures: accuracy for classification and probes,
image and text recall@k for retrieval, cosine / centred cosine / MSE / agreement for fidelity, and
training time when the results carry it.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..record.atomic import write_text
from .aggregate import aggregate
from .compare import __doc__ as DEFINITIONS
from .layers import layer_sections
from .plots import write_plots
from .rounds import rounds_sections
from .uncertainty import MISSING_OUTCOMES_NOTE, NO_OUTCOMES
from .uncertainty import __doc__ as UNCERTAINTY

MARKDOWN_COLUMNS = [
    "model", "pretrained", "dataset", "task", "strategy", "params", "seed", "acc1", "acc1_baseline", "acc1_delta",
    "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency", "memory_ratio",
]
DECISION = ("How differences are decided: a difference is called out (**significant**) only when its 95% interval "
            "excludes zero. With per-image correctness in every run and its baseline: a paired bootstrap over the test "
            "images for one seed (`bootstrap`), or, for seeds sharing the test images, a t interval whose variance "
            "counts both the images and the seed spread (`images + seeds`). Without it there is no interval "
            "(`none: per-image outcomes missing`, \"undecided\"): what older result files keep cannot calibrate one. "
            "Each row names its method (see Definitions; simulated coverage in reports/coverage.md).")
LOAD_RULE = "1-minute load average before or after the timed runs above the machine's logical CPU count"


def _fmt(value, pattern: str) -> str:
    return "" if value is None or pd.isna(value) else pattern.format(value)


def _pm(mean, std, scale=1.0, pattern="{:.2f}", unit="") -> str:
    if mean is None or pd.isna(mean):
        return ""
    text = pattern.format(mean * scale)
    return text + (f" ± {pattern.replace('+', '').format(std * scale)}" if not pd.isna(std) else "") + unit


def _interval(low, high, scale, pattern) -> str:
    return "" if pd.isna(low) or pd.isna(high) else f"[{pattern.format(low * scale)}, {pattern.format(high * scale)}]"


def _kind(task: str, metric: str) -> str:
    if "retrieval" in task:
        return "retrieval"
    if task == "fidelity" or (not metric and task != "finetune"):
        return "fidelity"
    return "accuracy"


def _delta_cell(row) -> str:
    if row["strategy"] == "baseline" or pd.isna(row["acc1_delta_mean"]):
        return ""
    text = _pm(row["acc1_delta_mean"], row["acc1_delta_std"], 100, "{:+.2f}", " pp")
    interval = _interval(row["acc1_delta_low"], row["acc1_delta_high"], 100, "{:+.2f}")
    decided = row["delta_significant"]
    verdict = "undecided" if pd.isna(decided) else ("**significant**" if decided else "within noise")
    return " ".join(t for t in (text, interval, f"({row['delta_method']}; {verdict})") if t)


def _speed_cell(row) -> str:
    median = _fmt(row["images_per_second_median"], "{:.1f}") or _fmt(row["images_per_second_mean"], "{:.1f}")
    spread = _interval(row["images_per_second_min"], row["images_per_second_max"], 1, "{:.1f}").replace(", ", "–")
    return " ".join(t for t in (median, spread, "⚠ load" if row["under_load"] else "") if t)


def _speedup_cell(row) -> str:
    if row["strategy"] == "baseline":
        return _fmt(row["speedup_mean"], "{:.2f}x")
    text = _pm(row["speedup_mean"], row["speedup_std"], 1, "{:.2f}", "x")
    interval = _interval(row["speedup_low"], row["speedup_high"], 1, "{:.2f}")
    return " ".join(t for t in (text, interval) if t)


def _match_cell(target, achieved, gap) -> str:
    """`--match_macs` target and achieved MACs ratio with the gap, e.g. `0.600 / 0.638 (+0.0380)`."""
    if pd.isna(target):
        return ""
    return f"{target:.3f} / {_fmt(achieved, '{:.3f}') or '?'}" + (f" ({gap:+.4f})" if not pd.isna(gap) else "")


def configuration_tables(configs: pd.DataFrame) -> list[str]:
    """One Markdown table per task: the columns that task measures, mean ± std (n) where seeds repeat."""
    lines = []
    for task, part in configs.groupby("task", sort=True):
        kind = _kind(task, part["metric"].iloc[0])
        shown = pd.DataFrame({"model": part["model"], "dataset": part["dataset"], "strategy": part["strategy"],
                              "params": part["params"], "n": part["n"].astype(str)})
        metric = part["metric"].iloc[0] or "acc1"
        if kind == "accuracy":
            shown[f"{metric} (%)"] = [_pm(m, s, 100) for m, s in zip(part["acc1_mean"], part["acc1_std"])]
            shown["Δ vs baseline [95% interval]"] = [_delta_cell(r) for _, r in part.iterrows()]
            shown["above chance"] = part["above_chance"].map(lambda v: "" if pd.isna(v) else ("yes" if v else "**no**"))
            shown["agreement (%)"] = [_pm(m, s, 100) for m, s in zip(part["agreement_mean"], part["agreement_std"])]
        elif kind == "retrieval":
            k = part["metric"].iloc[0].rsplit("@", 1)[-1]
            for column, name in (("image_retrieval_recall", f"image recall@{k} (%)"),
                                 ("text_retrieval_recall", f"text recall@{k} (%)")):
                shown[name] = [_pm(m, s, 100) for m, s in zip(part[f"{column}_mean"], part[f"{column}_std"])]
            shown["Δ image recall [95% interval]"] = [_delta_cell(r) for _, r in part.iterrows()]
        else:
            for column in ("cosine", "cosine_centred", "relative_mse"):
                shown[column] = [_pm(m, s, 1, "{:.4f}") for m, s in zip(part[f"{column}_mean"], part[f"{column}_std"])]
            shown["agreement (%)"] = [_pm(m, s, 100) for m, s in zip(part["agreement_mean"], part["agreement_std"])]
        shown["GMACs ratio"] = part["gmacs_ratio_mean"].map(lambda v: _fmt(v, "{:.3f}"))
        if part["match_target_mean"].notna().any():
            shown["MACs target / achieved (gap)"] = [_match_cell(t, a, g) for t, a, g in zip(
                part["match_target_mean"], part["match_achieved_mean"], part["match_gap_mean"])]
        shown["images/s median [min–max]"] = [_speed_cell(r) for _, r in part.iterrows()]
        shown["speedup [interval]"] = [_speedup_cell(r) for _, r in part.iterrows()]
        shown["efficiency"] = [_pm(m, s, 1, "{:.3f}") for m, s in zip(part["efficiency_mean"], part["efficiency_std"])]
        if part["train_step_seconds_median_mean"].notna().any():
            shown["train s/step median [min–max]"] = [
                " ".join(t for t in (_fmt(r["train_step_seconds_median_mean"], "{:.3f}"),
                                     _interval(r["train_step_seconds_min"], r["train_step_seconds_max"], 1, "{:.3f}")
                                     .replace(", ", "–")) if t) for _, r in part.iterrows()]
            shown["train images/s"] = [_pm(m, s, 1, "{:.1f}") for m, s in
                                       zip(part["train_images_per_second_mean"], part["train_images_per_second_std"])]
        shown = shown.loc[:, [c for c in shown.columns if (shown[c] != "").any()]]
        lines += [f"### {task}", "", shown.to_markdown(index=False, disable_numparse=True), ""]
    return lines


def _run_table(table: pd.DataFrame) -> str:
    shown = table[MARKDOWN_COLUMNS].copy()
    for column in ("acc1", "acc1_baseline"):
        shown[column] = table[column].map(lambda v: _fmt(v * 100, "{:.2f}%"))
    shown["acc1_delta"] = table["acc1_delta"].map(lambda v: _fmt(v * 100, "{:+.2f} pp"))
    shown["gmacs"] = table["gmacs"].map(lambda v: _fmt(v, "{:.4g}"))
    shown["gmacs_ratio"] = table["gmacs_ratio"].map(lambda v: _fmt(v, "{:.3f}"))
    shown["images_per_second"] = table["images_per_second"].map(lambda v: _fmt(v, "{:.1f}"))
    shown["speedup"] = table["speedup"].map(lambda v: _fmt(v, "{:.2f}x"))
    shown["efficiency"] = table["efficiency"].map(lambda v: _fmt(v, "{:.3f}"))
    shown["memory_ratio"] = table["memory_ratio"].map(lambda v: _fmt(v, "{:.3f}"))
    shown["pretrained"] = shown["pretrained"].replace("", "(random init)")
    shown["seed"] = table["seed"].fillna("")
    if "match_target" in table and table["match_target"].notna().any():
        shown.insert(shown.columns.get_loc("gmacs_ratio") + 1, "MACs target / achieved (gap)",
                     [_match_cell(t, a, g) for t, a, g in zip(table["match_target"], table["match_achieved"],
                                                              table["match_gap"])])
    if "pruned_nothing" in table:  # never let a run that removed nothing pass for a pruned one
        nothing = table["pruned_nothing"].fillna(False).astype(bool)
        shown.loc[nothing, "strategy"] = shown.loc[nothing, "strategy"] + " (PRUNED NOTHING)"
    return shown.fillna("").to_markdown(index=False, disable_numparse=True)


def markdown(table: pd.DataFrame, title: str, configs: pd.DataFrame | None = None) -> str:
    configs = aggregate(table) if configs is None else configs
    lines = [f"# {title}", "",
             DECISION, "",
             f"Timings: images/s is the median timed repeat, with the slowest and fastest repeat in brackets; "
             f"⚠ load marks timings taken with the {LOAD_RULE}.", "",
             "## Configurations (runs differing only in seed grouped: mean ± std, n runs)", "",
             "The same numbers, unrounded, with every interval: the `_configurations.csv` beside this file.", ""]
    lines += configuration_tables(configs)
    without = configs[configs["delta_method"].eq(NO_OUTCOMES)] if "delta_method" in configs else configs[:0]
    if len(without):
        lines += [MISSING_OUTCOMES_NOTE + " Here:", ""]
        lines += [f"- {' '.join(t for t in (row.strategy, row.params) if t)} ({row.model}, {row.dataset}): "
                  + ", ".join(f"`{f}`" for f in row.files.split()) for row in without.itertuples()]
        lines += [""]
    lines += ["## Runs", "", _run_table(table), ""]
    metrics = sorted(set(table["metric"].dropna()) - {""})
    if metrics:
        lines.append(f"`acc1` in the run table is the task's headline metric: {', '.join(f'`{m}`' for m in metrics)}.")
    orphans = table[~table["has_baseline"] & (table["strategy"] != "baseline")]
    if len(orphans):
        lines += ["", "Runs without a baseline matching them like for like (reported with their own numbers only, derived columns "
                  "empty):", ""]
        lines += [f"- `{row.file}` ({row.strategy} {row.params}): {row.pairing_note}" for row in orphans.itertuples()]
    chosen = table[table["has_baseline"] & table["pairing_note"].fillna("").ne("")]
    if len(chosen):
        lines += ["", "Runs with more than one matching baseline:", ""]
        lines += [f"- `{row.file}`: {row.pairing_note}" for row in chosen.itertuples()]
    noted = table[table["notes"].fillna("").astype(str).ne("")] if "notes" in table else table[:0]
    if len(noted):
        lines += ["", "Clamps and caps recorded by the runs (`pruning.notes`):", ""]
        lines += [f"- `{row.file}` ({row.strategy} {row.params}): {row.notes}" for row in noted.itertuples()]
    nothing = table[table["pruned_nothing"].fillna(False).astype(bool)] if "pruned_nothing" in table else table[:0]
    if len(nothing):
        lines += ["", "Runs that pruned nothing (no block removed a token or a weight; their notes say why): their "
                  "speedup and accuracy are the baseline's, measured again:", ""]
        lines += [f"- `{row.file}`" for row in nothing.itertuples()]
    loaded = table[table["under_load"].fillna(False).astype(bool)]
    if len(loaded):
        lines += ["", f"Timings taken under load ({LOAD_RULE}): the images/s of these runs measure the machine as "
                  "much as the model:", ""]
        lines += [f"- `{row.file}`: load {_fmt(row.load_before, '{:.2f}')} before, {_fmt(row.load_after, '{:.2f}')} "
                  f"after, {_fmt(row.cpus, '{:.0f}')} CPUs" for row in loaded.itertuples()]
    missing = table[table["gmacs"].isna()]
    if len(missing):
        lines += ["", "Runs without an `efficiency` record (run with --measure_efficiency to measure them):", ""]
        lines += [f"- `{row.file}`" for row in missing.itertuples()]
    layers = layer_sections(table)
    if layers:
        lines += ["", layers.rstrip()]
    rounds = rounds_sections(table["file"].dropna()) if "file" in table else ""
    if rounds:
        lines += ["", rounds.rstrip()]
    lines += ["", "## Definitions", "", DEFINITIONS.strip(), "", UNCERTAINTY.strip(), ""]
    lines += ["Measured settings per run (batch size, dtype, device, threads, tokens per layer, every timing) are "
              "in the CSV.", ""]
    return "\n".join(lines)


def write_report(table: pd.DataFrame, output: str | Path, *, title: str | None = None, with_plot: bool = True) -> list[Path]:
    """Write OUTPUT.csv, OUTPUT.md (and the plots), returning their paths; OUTPUT_configurations.csv (the
    grouped table, named in OUTPUT.md) is written beside them."""
    output = Path(output)
    csv_path, md_path = output.with_name(output.name + ".csv"), output.with_name(output.name + ".md")
    configs_path = output.with_name(output.name + "_configurations.csv")
    configs = aggregate(table)
    write_text(csv_path, table.drop(columns=["per_image_correct", "acc1_baseline_per_image_correct"],
                                    errors="ignore").to_csv(index=False))
    write_text(md_path, markdown(table, title or f"Pruning comparison: {output.name}", configs))
    write_text(configs_path, configs.drop(columns=["per_image_correct"], errors="ignore").to_csv(index=False))
    written = [csv_path, md_path]
    if with_plot:
        written += write_plots(table, output, configs)
    return written
