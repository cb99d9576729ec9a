"""Write a comparison table as NAME.csv (raw numbers), NAME.md (readable) and NAME.png (accuracy vs compute)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .compare import __doc__ as DEFINITIONS
from .load import BASELINE

MARKDOWN_COLUMNS = [
    "model", "pretrained", "dataset", "task", "strategy", "params", "acc1", "acc1_baseline", "acc1_delta",
    "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency",
]


def _fmt(value, pattern: str) -> str:
    return "" if pd.isna(value) else pattern.format(value)


def markdown(table: pd.DataFrame, title: str) -> str:
    shown = table[MARKDOWN_COLUMNS].copy()
    for column in ("acc1", "acc1_baseline"):
        shown[column] = table[column].map(lambda v: _fmt(v * 100, "{:.2f}%"))
    shown["acc1_delta"] = table["acc1_delta"].map(lambda v: _fmt(v * 100, "{:+.2f} pp"))
    shown["gmacs"] = table["gmacs"].map(lambda v: _fmt(v, "{:.3f}"))
    shown["gmacs_ratio"] = table["gmacs_ratio"].map(lambda v: _fmt(v, "{:.3f}"))
    shown["images_per_second"] = table["images_per_second"].map(lambda v: _fmt(v, "{:.1f}"))
    shown["speedup"] = table["speedup"].map(lambda v: _fmt(v, "{:.2f}x"))
    shown["efficiency"] = table["efficiency"].map(lambda v: _fmt(v, "{:.3f}"))
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
    lines += ["", "## Definitions", "", DEFINITIONS.strip(), ""]
    lines += ["Measured settings per run (batch size, dtype, device, tokens per layer) are in the CSV.", ""]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path) -> Path | None:
    """Accuracy against GMACs per image, one panel per dataset/task, baselines as stars."""
    data = table.dropna(subset=["gmacs", "acc1"])
    if data.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(data.groupby(["dataset", "task"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, ((dataset, task), group) in zip(axes[0], panels):
        for (model, pretrained), runs in group.groupby(["model", "pretrained"], sort=True):
            label = f"{model} {pretrained}".strip()
            base = runs[runs["strategy"] == BASELINE]
            pruned = runs[runs["strategy"] != BASELINE]
            line = ax.plot(pruned["gmacs"], pruned["acc1"] * 100, "o", label=label)[0]
            ax.plot(base["gmacs"], base["acc1"] * 100, "*", markersize=14, color=line.get_color())
            for row in pruned.itertuples():
                ax.annotate(row.strategy, (row.gmacs, row.acc1 * 100), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set(title=f"{dataset} ({task})", xlabel="GMACs per image", ylabel="acc1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="* baseline", title_fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(table: pd.DataFrame, output: str | Path, *, title: str | None = None, with_plot: bool = True) -> list[Path]:
    """Write OUTPUT.csv, OUTPUT.md (and OUTPUT.png); returns the paths written."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = output.with_name(output.name + ".csv"), output.with_name(output.name + ".md")
    table.to_csv(csv_path, index=False)
    md_path.write_text(markdown(table, title or f"Pruning comparison: {output.name}"))
    written = [csv_path, md_path]
    if with_plot:
        png = plot(table, output.with_name(output.name + ".png"))
        if png is not None:
            written.append(png)
    return written
