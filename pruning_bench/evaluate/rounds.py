"""Prune, fine-tune, prune again: `pruning-bench eval --task finetune --rounds N`.

Each round attaches the structured strategy to the model the previous round left (its fine-tuned,
sliced weights made into a plain compact model by `saved.compact_copy`), fine-tunes with it active,
measures, and hands the compact model on. A ratio therefore compounds on what is left: head_ratio=0.3
over three rounds keeps about 0.7^3 = 34% of the heads (nearest counts per round, at least one unit per
block), the way iterative pruning is usually run; for a fixed share of the original, give one round.

The per-round table (accuracy, parameters, GMACs, heads and MLP width per block, training time) goes
into the result file under `rounds`; `rounds_markdown` renders it for reports.
"""
from __future__ import annotations

from typing import Any

from ..patches.structured import block_widths, parameter_count

STRUCTURED = ("head_prune", "layer_drop")


def widths(model) -> tuple[list[int], list[int]]:
    from ..saved import _timm_vit

    return block_widths(list(_timm_vit(model).blocks))


def round_row(number: int, model, outcome, efficiency_record: dict, stats: dict, original: tuple[list, list]) -> dict:
    heads, hidden = widths(model)
    kept = list(stats.get("layers_kept") or range(len(heads)))
    heads0, hidden0 = original
    timing = outcome.timing()
    return {
        "round": number, "acc1": outcome.acc1, "parameters": parameter_count(model),
        "gmacs": efficiency_record.get("gmacs") if isinstance(efficiency_record, dict) else None,
        "heads_per_layer": heads, "mlp_hidden_per_layer": hidden, "layers_kept": kept,
        "head_sparsity_per_layer": [round(1 - h / heads0[i], 4) for h, i in zip(heads, kept)],
        "mlp_sparsity_per_layer": [round(1 - m / hidden0[i], 4) for m, i in zip(hidden, kept)],
        "train_seconds": float(sum(outcome.seconds_per_epoch)),
        "step_seconds_median": (timing["step_seconds"] or {}).get("median"),
        "train_images_per_second": timing["train_images_per_second"],
        "train_loss": outcome.train_loss,
    }


def _fmt(value, pattern: str) -> str:
    return "" if value is None else pattern.format(value)


def rounds_markdown(rows: list[dict[str, Any]], title: str | None = None) -> str:
    """The round table, then the per-block sparsity of each round (heads / MLP removed vs the original)."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| round | acc1 | parameters (M) | GMACs | train s | step s (median) | train img/s | heads per block | MLP width per block |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['round']} | {_fmt(r['acc1'] * 100 if r['acc1'] is not None else None, '{:.2f}%')} | "
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
    import json
    from pathlib import Path

    parts = []
    for file in files:
        try:
            data = json.loads(Path(file).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("rounds"):
            parts.append(rounds_markdown(data["rounds"], title=f"Rounds of prune + fine-tune: `{Path(file).name}`"))
    return ("## Prune and fine-tune rounds\n\n" + "\n".join(parts)) if parts else ""
