"""Accuracy against compute and against measured speed, from the reporter's comparison table.

One panel per model/checkpoint/dataset/task, one point per configuration (runs differing only in
seed averaged, with the standard deviation over seeds as a vertical error bar and, against
throughput, the slowest-to-fastest timed repeat as a horizontal one), labelled by the parameters
that vary. A line joins a strategy's points only when they are one sweep: every varying parameter
is numeric and moves in one direction along the x axis (one knob, or knobs moved together);
anything else (a categorical choice, a knob going up while another goes down) stays unjoined.
The baseline is a black star with a dotted line at its accuracy, and the Pareto front (no other
run is both cheaper/faster and at least as accurate) a grey band with ringed points.
Panels comparing like with like share axis ranges: the same dataset, task and metric share the
accuracy axis, the same model shares the x axis. Labels are moved apart until none overlaps.
"""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..record.atomic import atomic_path
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


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def is_one_sweep(params: pd.Series, x: pd.Series) -> bool:
    """Whether a strategy's configurations, sorted by x, form one sweep (see the module docstring)."""
    table = pd.DataFrame([param_dict(p) for p in params], index=params.index)
    varying = [c for c in table.columns if table[c].nunique(dropna=False) > 1]
    if len(table) < 2 or not varying:
        return len(table) >= 2 and not varying
    order = x.sort_values(kind="stable").index
    directions = set()
    for column in varying:
        values = [_as_number(v) for v in table.loc[order, column]]
        if any(v is None for v in values):
            return False
        directions |= set(np.sign(np.diff(values))) - {0}
    return len(directions) <= 1


def _strategy_colours(strategies) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(sorted(strategies))}


def _panel_title(key: tuple) -> str:
    fields = dict(zip(GROUP_KEYS, key))
    pretrained = fields["pretrained"] or "random init"
    return f"{fields['model']} ({pretrained})\n{fields['dataset']} · {fields['task']}"


def _draw_panel(ax, runs: pd.DataFrame, column: str, larger_better: bool, colours: dict) -> list:
    """Draw one panel; returns the label annotations (moved apart later, once the axes are final)."""
    x, y = runs[column].to_numpy(float), runs["acc1"].to_numpy(float) * 100
    front = pareto_mask(x, y, larger_x_better=larger_better)
    order = np.argsort(x[front])
    ax.step(x[front][order], y[front][order], where="pre" if larger_better else "post", color="0.8", linewidth=6,
            solid_capstyle="round", zorder=1)
    ax.scatter(x[front], y[front], s=160, facecolors="none", edgecolors="0.35", linewidths=1.2, zorder=4)
    is_base = (runs["strategy"] == BASELINE).to_numpy()
    labels = []
    for name, group in runs[~is_base].groupby("strategy", sort=True):
        group = group.sort_values(column)
        gx, gy = group[column].to_numpy(float), group["acc1"].to_numpy(float) * 100
        style = "o-" if is_one_sweep(group["params"], group[column]) else "o"
        ax.plot(gx, gy, style, color=colours[name], markersize=5, linewidth=1.4, zorder=3)
        _error_bars(ax, group, column, colours[name])
        for px, py, label in zip(gx, gy, varying_labels(group["params"])):
            if label:
                labels.append(ax.annotate(label, (px, py), fontsize=6, xytext=(4, 3), textcoords="offset points",
                                          color=colours[name]))
    if "pruned_nothing" in runs:  # a run that removed nothing is crossed out, not hidden under the baseline
        nothing = runs["pruned_nothing"].fillna(False).astype(bool).to_numpy() & ~is_base
        if nothing.any():
            ax.scatter(x[nothing], y[nothing], marker="x", s=120, color="red", linewidths=2, zorder=6)
            for px, py in zip(x[nothing], y[nothing]):
                labels.append(ax.annotate("pruned nothing", (px, py), fontsize=6, xytext=(4, -9),
                                          textcoords="offset points", color="red"))
    if is_base.any():
        _error_bars(ax, runs[is_base], column, "black")
        ax.scatter(x[is_base], y[is_base], marker="*", s=220, color="black", zorder=5)
        ax.axhline(y[is_base][0], color="black", linestyle=":", linewidth=0.8, zorder=2)
    ax.grid(alpha=0.3)
    return labels


def _error_bars(ax, group: pd.DataFrame, column: str, colour) -> None:
    """Std over seeds (vertical) and, for throughput, the slowest-to-fastest repeat (horizontal), where known."""
    yerr = group["acc1_std"].to_numpy(float) * 100 if "acc1_std" in group else np.full(len(group), np.nan)
    xerr = None
    if column == "images_per_second" and {"images_per_second_min", "images_per_second_max"} <= set(group):
        centre = group[column].to_numpy(float)
        xerr = np.vstack([centre - group["images_per_second_min"].to_numpy(float),
                          group["images_per_second_max"].to_numpy(float) - centre])
        xerr = np.where(np.isfinite(xerr), np.clip(xerr, 0, None), 0)
    has_y = np.isfinite(yerr).any()
    if not has_y and (xerr is None or not xerr.any()):
        return
    ax.errorbar(group[column].to_numpy(float), group["acc1"].to_numpy(float) * 100,
                yerr=np.nan_to_num(yerr) if has_y else None, xerr=xerr, fmt="none", ecolor=colour, elinewidth=0.9,
                capsize=2.5, alpha=0.8, zorder=2)


def spread_labels(fig, labels: list, tries: int = 12) -> None:
    """Move annotations down (then up) in steps of their height until no two overlap."""
    if not labels:
        return
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in sorted(labels, key=lambda a: -a.xy[1]):
        start = label.get_position()
        height = label.get_window_extent(renderer).height * 72 / fig.dpi + 1
        for i in range(tries):
            step = (i + 1) // 2 * (-1 if i % 2 else 1)
            label.set_position((start[0], start[1] - step * height))
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
        placed.append(label.get_window_extent(renderer))


def _share_ranges(axes_by_key: dict, data_by_key: dict, column: str) -> None:
    """Panels of the same dataset/task/metric share the y range; of the same model, the x range."""
    def padded(values):
        values = np.asarray([v for v in values if np.isfinite(v)], float)
        low, high = values.min(), values.max()
        pad = (high - low) * 0.08 or max(abs(high) * 0.05, 0.5)
        return low - pad, high + pad

    for field, setter, keyed in (("y", "set_ylim", lambda k, r: (k[2], k[3], tuple(sorted(set(r["metric"]))))),
                                 ("x", "set_xlim", lambda k, r: (k[0], k[1]))):
        groups: dict = {}
        for key, runs in data_by_key.items():
            groups.setdefault(keyed(key, runs), []).append(key)
        for keys in groups.values():
            if len(keys) < 2:
                continue
            values = []
            for key in keys:
                runs = data_by_key[key]
                if field == "y":
                    err = runs["acc1_std"].fillna(0) if "acc1_std" in runs else 0
                    values += list((runs["acc1"] - err) * 100) + list((runs["acc1"] + err) * 100)
                else:
                    values += list(runs[column])
                    for extra in ("images_per_second_min", "images_per_second_max"):
                        if column == "images_per_second" and extra in runs:
                            values += list(runs[extra])
            for key in keys:
                getattr(axes_by_key[key], setter)(*padded(values))


def _legend_handles(colours: dict, has_baseline: bool):
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=c, marker="o", markersize=5, label=name) for name, c in colours.items()]
    if has_baseline:
        handles.append(Line2D([], [], color="black", marker="*", linestyle=":", markersize=11, label="baseline"))
    handles.append(Line2D([], [], color="0.8", linewidth=6, marker="o", markerfacecolor="none",
                          markeredgecolor="0.35", label="Pareto front"))
    return handles


def points(frame: pd.DataFrame, configs: pd.DataFrame | None = None) -> pd.DataFrame:
    """One point per configuration: the aggregate's means under the run table's column names."""
    if configs is None:
        from .aggregate import aggregate

        configs = aggregate(frame) if "has_baseline" in frame else None
    if configs is None or configs.empty:
        return frame
    renamed = configs.rename(columns={"acc1_mean": "acc1", "gmacs_mean": "gmacs"})
    renamed["images_per_second"] = configs["images_per_second_median"].fillna(
        configs.get("images_per_second_mean", np.nan))
    return renamed


def accuracy_figure(frame: pd.DataFrame, axis: str, configs: pd.DataFrame | None = None):
    """The matplotlib figure of accuracy against `axis` ("gmacs" or "throughput"); None when no run has both."""
    column, xlabel, larger_better = X_AXES[axis]
    frame = points(frame, configs)
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
    labels, axes_by_key = [], {}
    for ax, (key, runs) in zip(axes.flat, panels):
        labels += _draw_panel(ax, runs, column, larger_better, colours)
        axes_by_key[key] = ax
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
    _share_ranges(axes_by_key, dict(panels), column)
    fig.canvas.draw()
    spread_labels(fig, labels)
    return fig


def plot_accuracy(frame: pd.DataFrame, axis: str, path: Path, configs: pd.DataFrame | None = None) -> Path | None:
    """Save `accuracy_figure` as a PNG at `path`; None (nothing written) when there is nothing to plot."""
    fig = accuracy_figure(frame, axis, configs)
    if fig is None:
        return None
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return path


def write_plots(frame: pd.DataFrame, prefix, configs: pd.DataFrame | None = None) -> list[Path]:
    """PREFIX_accuracy_vs_gmacs.png and PREFIX_accuracy_vs_throughput.png (those with data); the paths written."""
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for axis in X_AXES:
        path = plot_accuracy(frame, axis, prefix.with_name(f"{prefix.name}_accuracy_vs_{axis}.png"), configs)
        if path is not None:
            written.append(path)
    return written
