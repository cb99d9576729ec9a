"""Prune, fine-tune, prune again: `pruning-bench eval --task finetune --rounds N`.

Each round attaches the structured strategy to the model the previous round left (its fine-tuned,
sliced weights made into a plain compact model by `saved.compact_copy`), fine-tunes with it active,
measures, and hands the compact model on. A ratio therefore compounds on what is left: head_ratio=0.3
over three rounds keeps about 0.7^3 = 34% of the heads (nearest counts per round, at least one unit per
block), the way iterative pruning is usually run; for a fixed share of the original, give one round.

The per-round table (accuracy, parameters, GMACs, heads and MLP width per block, training time) goes
into the result file under `rounds`; `pruning_bench.report.rounds` renders it for reports.
"""
from __future__ import annotations

from ..families import locate
from ..patches.structured import parameter_count



def iterable(strategy: str) -> bool:
    """Whether `strategy` can be iterated over rounds: a structured one (its kind, as it declares it)."""
    from ..registry import get_strategy

    return get_strategy(strategy).kind == "structured"


def structured_names() -> list[str]:
    from ..registry import get_strategy, list_strategies

    return [name for name in list_strategies() if get_strategy(name).kind == "structured"]


def widths(model) -> tuple[list[int], list[int]]:
    """(heads, MLP hidden width) of each block the model runs now."""
    return locate(model).block_widths()


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
