"""Write a comparison table as NAME.csv (raw numbers), NAME.md (readable, with per-block sections) and the
accuracy plots NAME_accuracy_vs_gmacs.png / NAME_accuracy_vs_throughput.png."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .compare import __doc__ as DEFINITIONS
from .layers import layer_sections
from .plots import write_plots

MARKDOWN_COLUMNS = [
    "model", "pretrained", "dataset", "task", "strategy", "params", "acc1", "acc1_baseline", "acc1_delta",
    "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency", "memory_ratio",
]


def _fmt(value, pattern: str) -> str:
    return "" if pd.isna(value) else pattern.format(value)


def markdown(table: pd.DataFrame, title: str) -> str:
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
    lines = [f"# {title}", "", shown.to_markdown(index=False, disable_numparse=True), ""]
    metrics = sorted(set(table["metric"].dropna()) - {""})
    if metrics:
        lines.append(f"`acc1` is the task's headline metric: {', '.join(f'`{m}`' for m in metrics)}.")
    orphans = table[~table["has_baseline"]]
    if len(orphans):
        lines += ["", "Runs without a baseline of the same model, checkpoint, dataset, task and language "
                  "(reported with their own numbers only):", ""]
        lines += [f"- `{row.file}` ({row.strategy} {row.params})".rstrip() for row in orphans.itertuples()]
    missing = table[table["gmacs"].isna()]
    if len(missing):
        lines += ["", "Runs without an `efficiency` record (run with --measure_efficiency to measure them):", ""]
        lines += [f"- `{row.file}`" for row in missing.itertuples()]
    layers = layer_sections(table)
    if layers:
        lines += ["", layers.rstrip()]
    lines += ["", "## Definitions", "", DEFINITIONS.strip(), ""]
    lines += ["Measured settings per run (batch size, dtype, device, tokens per layer) are in the CSV.", ""]
    return "\n".join(lines)


def write_report(table: pd.DataFrame, output: str | Path, *, title: str | None = None, with_plot: bool = True) -> list[Path]:
    """Write OUTPUT.csv, OUTPUT.md (and the plots); returns the paths written."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = output.with_name(output.name + ".csv"), output.with_name(output.name + ".md")
    table.to_csv(csv_path, index=False)
    md_path.write_text(markdown(table, title or f"Pruning comparison: {output.name}"))
    written = [csv_path, md_path]
    if with_plot:
        written += write_plots(table, output)
    return written
