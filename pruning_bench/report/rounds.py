"""The per-round table of `--task finetune --rounds N` results (written by `evaluate/rounds.py`).

One table per result file: test and train accuracy, overall sparsity of the attention and MLP weights,
parameters, GMACs, training time and the widths per block of every round (rows written before the
train accuracy and overall sparsity were recorded leave those cells empty), then the share of the original heads / MLP neurons each block has lost by that round.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .layers import read_record


def _fmt(value, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def rounds_markdown(rows: list[dict[str, Any]], title: str | None = None) -> str:
    """The round table, then the per-block sparsity of each round (heads / MLP removed vs the original)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| round | acc1 | train acc1 | overall sparsity | parameters (M) | GMACs | train s | step s (median) | "
              "train img/s | heads per block | MLP width per block |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['round']} | {_fmt(r['acc1'] * 100 if r['acc1'] is not None else None, '{:.2f}%')} | "
                     f"{_fmt(r['train_acc1'] * 100 if r.get('train_acc1') is not None else None, '{:.2f}%')} | "
                     f"{_fmt(r['overall_sparsity'] * 100 if r.get('overall_sparsity') is not None else None, '{:.2f}%')} | "
                     f"{r['parameters'] / 1e6:.3f} | {_fmt(r['gmacs'], '{:.4g}')} | {r['train_seconds']:.1f} | "
                     f"{_fmt(r['step_seconds_median'], '{:.3f}')} | {_fmt(r['train_images_per_second'], '{:.1f}')} | "
                     f"{' '.join(map(str, r['heads_per_layer']))} | {' '.join(map(str, r['mlp_hidden_per_layer']))} |")
    if rows:
        blocks = sorted({b for r in rows for b in r["layers_kept"]})
        lines += ["", "Sparsity per block (share of the original heads / MLP neurons removed; - = block dropped):", "",
                  "| round | " + " | ".join(f"b{b}" for b in blocks) + " |", "| --- |" + " --- |" * len(blocks)]
        for r in rows:
            cells = {b: f"{h:.2f} / {m:.2f}" for b, h, m in zip(r["layers_kept"], r["head_sparsity_per_layer"],
                                                                   r["mlp_sparsity_per_layer"])}
            lines.append(f"| {r['round']} | " + " | ".join(cells.get(b, "-") for b in blocks) + " |")
    return "\n".join(lines) + "\n"


def rounds_sections(files) -> str:
    """Markdown for every result file (of a report) that carries a round table; '' when none does."""
    parts = []
    for file in dict.fromkeys(files):
        data = read_record(file)
        if data and data.get("rounds"):
            parts.append(rounds_markdown(data["rounds"], title=f"Rounds of prune + fine-tune: `{Path(file).name}`"))
    return ("## Prune and fine-tune rounds\n\n" + "\n".join(parts)) if parts else ""
