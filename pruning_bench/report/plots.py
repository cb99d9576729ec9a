"""Accuracy against compute and against measured speed, from the reporter's comparison table.

One panel per model/checkpoint/dataset/task, one line per strategy (its configurations sorted along
the x axis and labelled by the parameters that vary), the baseline as a black star with a dotted
line at its accuracy, and the Pareto front (no other run is both cheaper/faster and at least as
accurate) drawn as a grey band with ringed points.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .load import BASELINE, GROUP_KEYS

PANEL_INCHES = (5.0, 4.0)
LEGEND_INCHES = 0.7
DPI = 120
MAX_COLUMNS = 3
LEGEND_ENTRY_PIXELS = 130

# name -> (column, axis label, whether a larger value is better)
X_AXES = {
    "gmacs": ("gmacs", "GMACs per image (image encoder)", False),
    "throughput": ("images_per_second", "images / second (measured)", True),
}
_PARAM_SPLIT = re.compile(r", (?=[A-Za-z_]\w*=)")


def figure_pixels(n_panels: int) -> tuple[int, int]:
    """(width, height) in pixels of a figure with `n_panels` panels."""
    cols = min(MAX_COLUMNS, n_panels)
    rows = math.ceil(n_panels / cols)
    return round(cols * PANEL_INCHES[0] * DPI), round((rows * PANEL_INCHES[1] + LEGEND_INCHES) * DPI)


def pareto_mask(x: np.ndarray, y: np.ndarray, *, larger_x_better: bool) -> np.ndarray:
    """Points no other point beats: better-or-equal x with strictly higher y, or strictly better x with equal y."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    cost = -x if larger_x_better else x
    order = np.lexsort((-y, cost))  # cheapest first; among equal cost, most accurate first
    best_before = np.maximum.accumulate(np.concatenate([[-np.inf], y[order]]))[:-1]
    mask = np.zeros(len(x), bool)
    mask[order] = y[order] > best_before
    return mask


def param_dict(params: str) -> dict[str, str]:
    """`"r=4, prop_attn=True, r_list=[4, 8]"` -> {"r": "4", ...} (the reporter's `params` text)."""
    if not isinstance(params, str) or not params:
        return {}
    return dict(item.split("=", 1) for item in _PARAM_SPLIT.split(params) if "=" in item)


def varying_labels(params: pd.Series) -> pd.Series:
    """Per run, the parameters that differ between the runs of one strategy ("r=8"), else ""."""
    table = pd.DataFrame([param_dict(p) for p in params], index=params.index)
    if table.empty:
        return pd.Series("", index=params.index)
    varying = [c for c in table.columns if table[c].nunique(dropna=False) > 1]
    return table[varying].apply(lambda row: ", ".join(f"{k}={v}" for k, v in row.dropna().items()), axis=1) \
        if varying else pd.Series("", index=params.index)


def _strategy_colours(strategies) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(sorted(strategies))}


def _panel_title(key: tuple) -> str:
    fields = dict(zip(GROUP_KEYS, key))
    pretrained = fields["pretrained"] or "random init"
    return f"{fields['model']} ({pretrained})\n{fields['dataset']} · {fields['task']}"


def _draw_panel(ax, runs: pd.DataFrame, column: str, larger_better: bool, colours: dict) -> None:
    x, y = runs[column].to_numpy(float), runs["acc1"].to_numpy(float) * 100
    front = pareto_mask(x, y, larger_x_better=larger_better)
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="pre" if larger_better else "post", color="0.8", linewidth=6,
            solid_capstyle="round", zorder=1)
    ax.scatter(x[front], y[front], s=160, facecolors="none", edgecolors="0.35", linewidths=1.2, zorder=4)
    is_base = (runs["strategy"] == BASELINE).to_numpy()
    for name, group in runs[~is_base].groupby("strategy", sort=True):
        group = group.sort_values(column)
        ax.plot(group[column], group["acc1"] * 100, "o-", color=colours[name], markersize=5, linewidth=1.4, zorder=3)
        for (gx, gy), label in zip(zip(group[column], group["acc1"] * 100), varying_labels(group["params"])):
            if label:
                ax.annotate(label, (gx, gy), fontsize=6, xytext=(4, 3), textcoords="offset points", color=colours[name])
    if is_base.any():
        ax.scatter(x[is_base], y[is_base], marker="*", s=220, color="black", zorder=5)
        ax.axhline(y[is_base][0], color="black", linestyle=":", linewidth=0.8, zorder=2)
    ax.grid(alpha=0.3)


def _legend_handles(colours: dict, has_baseline: bool):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", markersize=5, label=name) for name, c in colours.items()]
    if has_baseline:
        handles.append(Line2D([], [], color="black", marker="*", linestyle=":", markersize=11, label="baseline"))
    handles.append(Line2D([], [], color="0.8", linewidth=6, marker="o", markerfacecolor="none",
                          markeredgecolor="0.35", label="Pareto front"))
    return handles


def accuracy_figure(frame: pd.DataFrame, axis: str):
    """The matplotlib figure of accuracy against `axis` ("gmacs" or "throughput"); None when no run has both."""
    column, xlabel, larger_better = X_AXES[axis]
    data = frame.dropna(subset=[column, "acc1"])
    data = data[np.isfinite(data[column]) & (data[column] > 0)]
    if data.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(data.groupby(GROUP_KEYS, sort=True, dropna=False))
    cols = min(MAX_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / cols)
    width, height = figure_pixels(len(panels))
    colours = _strategy_colours(set(data["strategy"]) - {BASELINE})
    fig, axes = plt.subplots(rows, cols, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False,
                             layout="constrained")
    for ax, (key, runs) in zip(axes.flat, panels):
        _draw_panel(ax, runs, column, larger_better, colours)
        metrics = sorted(set(runs["metric"].dropna()) - {""}) or ["acc1"]
        ax.set_title(_panel_title(key), fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"{', '.join(metrics)} (%)", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = _legend_handles(colours, bool((data["strategy"] == BASELINE).any()))
    per_row = max(1, min(len(handles), width // LEGEND_ENTRY_PIXELS))  # rows of entries that fit the width
    fig.legend(handles=handles, loc="outside lower center", ncols=per_row, fontsize=8, frameon=False)
    return fig


def plot_accuracy(frame: pd.DataFrame, axis: str, path: Path) -> Path | None:
    """Save `accuracy_figure` as a PNG at `path`; None (nothing written) when there is nothing to plot."""
    fig = accuracy_figure(frame, axis)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def write_plots(frame: pd.DataFrame, prefix) -> list[Path]:
    """PREFIX_accuracy_vs_gmacs.png and PREFIX_accuracy_vs_throughput.png (those with data); the paths written."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for axis in X_AXES:
        path = plot_accuracy(frame, axis, prefix.with_name(f"{prefix.name}_accuracy_vs_{axis}.png"))
        if path is not None:
            written.append(path)
    return written
