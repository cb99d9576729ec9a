"""Per-block Markdown tables from result JSONs: what a structured run kept, and how many tokens each block saw.

- Structured runs (head_prune, layer_drop, or both): one table per run, a row per block of the
  original model with heads and MLP width kept (and the share removed, as in a per-layer sparsity
  table), or "dropped" for a block layer_drop removed.
- Token runs: one table per model, a row per configuration (baseline first) and a column per block
  with the tokens entering it, plus their sum (token-blocks, the quantity token reduction saves).

The per-block facts are the handle's `stats()` as recorded in the result (`heads_per_layer`,
`mlp_hidden_per_layer`, `layers_kept`, the importance lists; `efficiency.tokens_per_layer`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from .fields import format_params
from .load import BASELINE

STRUCTURE_KEYS = ("heads_per_layer", "mlp_hidden_per_layer", "layers_kept", "head_importance", "mlp_importance",
                  "heads_total_per_layer", "mlp_hidden_total_per_layer",
                  "head_sparsity_per_layer", "mlp_sparsity_per_layer", "layer_importance", "blocks_total")


def _places(record: dict) -> list[dict]:
    pruning = record.get("pruning") or {}
    efficiency = record.get("efficiency") or {}
    places = (pruning.get("stats"), efficiency.get("pruning_stats"), efficiency.get("structure"), efficiency.get("stats"),
              efficiency, pruning)
    return [d for d in places if isinstance(d, dict)]


def structure_of(record: dict) -> dict[str, Any] | None:
    """The structured-pruning stats a result carries (wherever the writer put them), or None."""
    for place in _places(record):
        if place.get("heads_per_layer") is not None:
            return {k: place[k] for k in STRUCTURE_KEYS if place.get(k) is not None}
    return None


def _fraction(value) -> str:
    return "" if value is None or pd.isna(value) else f"{value * 100:.2f}%"


def _totals(totals, importance, kept_blocks: list[int], n_running: int, n_total: int) -> list[int | None]:
    """Units per running block before pruning: the recorded totals, else the lengths of the per-unit
    importance lists (older results), when either lines up with the blocks."""
    per_block = totals or ([len(s) for s in importance] if importance else None)
    if not per_block:
        return [None] * n_running
    if len(per_block) == n_total:
        return [per_block[i] for i in kept_blocks]
    if len(per_block) == n_running:
        return list(per_block)
    return [None] * n_running


def structure_frame(stats: dict[str, Any]) -> pd.DataFrame:
    """One row per block of the original model: heads / MLP width kept, share removed, or dropped."""
    heads = list(stats["heads_per_layer"])
    hidden = list(stats.get("mlp_hidden_per_layer") or [None] * len(heads))
    kept = list(stats.get("layers_kept") or range(len(heads)))
    n_total = int(stats.get("blocks_total") or max(max(kept) + 1, len(heads)))
    head_total = _totals(stats.get("heads_total_per_layer"), stats.get("head_importance"), kept, len(heads), n_total)
    mlp_total = _totals(stats.get("mlp_hidden_total_per_layer"), stats.get("mlp_importance"), kept, len(heads), n_total)
    rows = pd.DataFrame({"block": kept, "heads": heads, "heads_total": head_total, "mlp_hidden": hidden,
                         "mlp_hidden_total": mlp_total})
    frame = pd.DataFrame({"block": range(n_total)}).merge(rows, on="block", how="left")
    frame["dropped"] = ~frame["block"].isin(kept)
    frame["head_sparsity"] = 1 - frame["heads"] / frame["heads_total"]
    frame["mlp_sparsity"] = 1 - frame["mlp_hidden"] / frame["mlp_hidden_total"]
    if stats.get("layer_importance") is not None and len(stats["layer_importance"]) == n_total:
        frame["layer_importance"] = stats["layer_importance"]
    return frame


def _count(kept, total) -> str:
    if pd.isna(kept):
        return ""
    return f"{int(kept)} / {int(total)}" if not pd.isna(total) else f"{int(kept)}"


def structure_markdown(stats: dict[str, Any]) -> str:
    frame = structure_frame(stats)
    shown = pd.DataFrame({"block": frame["block"].astype(str)})
    shown["heads kept"] = [_count(k, t) for k, t in zip(frame["heads"], frame["heads_total"])]
    shown["attn sparsity"] = frame["head_sparsity"].map(_fraction)
    shown["MLP hidden kept"] = [_count(k, t) for k, t in zip(frame["mlp_hidden"], frame["mlp_hidden_total"])]
    shown["MLP sparsity"] = frame["mlp_sparsity"].map(_fraction)
    if "layer_importance" in frame:
        shown["block importance"] = frame["layer_importance"].map(lambda v: f"{v:.4g}")
    shown.loc[frame["dropped"], ["heads kept", "attn sparsity", "MLP hidden kept", "MLP sparsity"]] = "dropped"
    lines = [shown.to_markdown(index=False, disable_numparse=True), ""]
    running = frame[~frame["dropped"]]
    summary = [f"blocks kept: {len(running)} of {len(frame)}"]
    for unit, kept, total in (("heads", "heads", "heads_total"), ("MLP neurons", "mlp_hidden", "mlp_hidden_total")):
        if frame[total].notna().all():  # every block's size known: totals over the original model
            summary.append(f"{unit} kept: {int(running[kept].sum())} of {int(frame[total].sum())} "
                           f"({_fraction(1 - running[kept].sum() / frame[total].sum())} removed)")
        elif running[kept].notna().any():
            summary.append(f"{unit} kept: {int(running[kept].sum())}")
    return "\n".join(lines + ["; ".join(summary) + "."])


def _strategy_names(pruning: dict) -> list[str]:
    stages = pruning.get("stages") or []
    return [s.get("strategy") for s in stages if isinstance(s, dict)] or [pruning.get("strategy")]


def run_label(pruning: dict | None) -> str:
    """`tome r=8`, or every stage joined by " + " for a composed run; `baseline` without pruning."""
    pruning = pruning or {}
    if not pruning.get("strategy"):
        return BASELINE
    stages = [s for s in pruning.get("stages") or [] if isinstance(s, dict)]
    if len(stages) < 2:
        stages = [pruning]
    return " + ".join(f"{s.get('strategy')} {format_params(s.get('params'))}".strip() for s in stages)


def reduces_tokens(record: dict) -> bool:
    """Whether a run applies a token strategy (registry kind), or, for an unknown name, its schedule shrinks."""
    from ..registry import get_strategy

    pruning = record.get("pruning") or {}
    for name in _strategy_names(pruning):
        try:
            if get_strategy(name).kind == "token":
                return True
        except (KeyError, ValueError):
            tokens = (record.get("efficiency") or {}).get("tokens_per_layer") or []
            if len(set(tokens)) > 1:
                return True
    return False


def _schedule(record: dict) -> dict[int, int]:
    """Tokens entering each block, keyed by the block's index in the original model (layer_drop skips some)."""
    tokens = list(map(int, (record.get("efficiency") or {}).get("tokens_per_layer") or []))
    kept = (structure_of(record) or {}).get("layers_kept")
    blocks = kept if kept is not None and len(kept) == len(tokens) else range(len(tokens))
    return dict(zip(blocks, tokens))


def token_schedule_frame(records: list[dict]) -> pd.DataFrame:
    """Rows: the baseline and each distinct token configuration of one model; columns: blocks, then the total."""
    rows = {}
    for record in records:
        pruning = record.get("pruning") or {}
        if pruning.get("strategy") and not reduces_tokens(record):
            continue
        schedule = _schedule(record)
        if not schedule:
            continue
        rows.setdefault(run_label(pruning), schedule)
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame.from_dict(rows, orient="index").sort_index(axis=1).astype("Int64")
    frame.columns = [str(c) for c in frame.columns]
    frame["total"] = frame.sum(axis=1).astype("Int64")
    order = sorted(frame.index, key=lambda label: (label != BASELINE, -frame.loc[label, "total"], label))
    return frame.loc[order]


def token_schedule_markdown(records: list[dict]) -> str:
    frame = token_schedule_frame(records)
    if frame.empty or (frame.index == BASELINE).all():
        return ""
    shown = frame.map(lambda v: "" if pd.isna(v) else str(v))
    if BASELINE in frame.index:
        share = frame["total"] / frame.loc[BASELINE, "total"]
        shown["total"] = [f"{t} ({s * 100:.0f}%)" for t, s in zip(frame["total"], share)]
    shown.index.name = "configuration"
    return shown.reset_index().to_markdown(index=False, disable_numparse=True)


def read_record(path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def layer_markdown(records: Iterable[dict]) -> str:
    """The "Per-block structure" section for these result records ("" when none has per-block facts)."""
    records = [r for r in records if r]
    parts = []
    structured: dict[str, list[str]] = {}
    for record in records:
        stats = structure_of(record)
        if stats is None or not (record.get("pruning") or {}).get("strategy"):
            continue
        title = f"{record.get('model', '')} · {run_label(record['pruning'])}"
        table = structure_markdown(stats)
        structured.setdefault(f"#### {title}\n\n{table}", []).append(str(record.get("dataset", "")))
    if structured:
        parts += ["### Heads and MLP width kept per block", ""]
        for text, datasets in structured.items():
            parts += [text, "", f"(runs on: {', '.join(sorted(set(datasets)))})", ""]
    models = {}
    for record in records:
        models.setdefault(record.get("model", ""), []).append(record)
    schedules = [(model, token_schedule_markdown(rs)) for model, rs in models.items()]
    schedules = [(m, t) for m, t in schedules if t]
    if schedules:
        parts += ["### Token schedule (tokens entering each block, class token included)", ""]
        for model, text in schedules:
            parts += [f"#### {model}", "", text, ""]
    if not parts:
        return ""
    return "\n".join(["## Per-block structure", ""] + parts)


def layer_sections(frame: pd.DataFrame) -> str:
    """`layer_markdown` for the result files behind a comparison table (its `file` column)."""
    files = list(dict.fromkeys(frame["file"].dropna())) if "file" in frame else []
    return layer_markdown(read_record(f) for f in files)
