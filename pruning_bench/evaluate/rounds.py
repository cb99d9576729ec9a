"""Prune, fine-tune, prune again: `pruning-bench eval --task finetune --rounds N`.

Each round attaches the structured strategy to the model the previous round left (its fine-tuned,
sliced weights made into a plain compact model by `saved.compact_copy`), fine-tunes with it active,
measures, and hands the compact model on. A ratio therefore compounds on what is left: head_ratio=0.3
over three rounds keeps about 0.7^3 = 34% of the heads (nearest counts per round, at least one unit per
block), the way iterative pruning is usually run; for a fixed share of the original, give one round.

refill and rsst (`strategies/refill.py`, `rsst.py`) open a state at each round's attach: the units leave
when the state's training ends (`finetune.train` ends it), before the round is measured.

The per-round table (test and train accuracy, parameters, GMACs, heads and MLP width per block, per-block
and overall sparsity, training time) goes into the result file under `rounds`; `pruning_bench.report.rounds` renders it for reports.
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


def overall_sparsity(heads: list[int], hidden: list[int], head_dims: list[int], original: tuple[list, list],
                     kept: list[int]) -> float:
    """Share of the original q/k/v + output-projection weights (4 x head_dim x width per head) and fc1 + fc2
    weights (2 x width per neuron) gone, dropped blocks included: the seed's "overall sparsity"."""
    heads0, hidden0 = original
    dim = dict(zip(kept, head_dims))
    hd0 = [dim.get(i, head_dims[0] if head_dims else 0) for i in range(len(heads0))]
    now = sum(2 * dim[i] * h + m for h, m, i in zip(heads, hidden, kept))
    before = sum(2 * d * h + m for d, h, m in zip(hd0, heads0, hidden0))
    return round(1 - now / before, 6) if before else 0.0


def head_dims(model) -> list[int]:
    family = locate(model)
    return [family.attention_view(b).head_dim for b in family.blocks]


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
        "overall_sparsity": overall_sparsity(heads, hidden, head_dims(model), original, kept),
        "train_acc1": outcome.train_acc1[-1] if outcome.train_acc1 else None,
        "test_acc1_per_epoch": list(outcome.test_acc1),
        "state": stats.get("state", number), **({"rsst_lambda": stats["rsst_lambda"]} if "rsst_lambda" in stats else {}),
    }
