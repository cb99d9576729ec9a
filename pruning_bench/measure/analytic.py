"""Analytic multiply-accumulate counts for a ViT image tower under a token schedule.

A reviewer can check these by hand: with N tokens entering a block and M tokens reaching its MLP,
a block costs 4*N*d*a (qkv + output projection) + 2*N^2*a (QK^T and AV) + 2*M*d*h (fc1 + fc2),
where d is the width, a = heads*head_dim (= d unless heads were pruned) and h the MLP hidden
width (= mlp_ratio*d unless neurons were pruned). The patch embedding costs
N_patches * (C*p*p) * d. The pooling head is reported apart (`head`), because the reference
formula leaves it out; it is tiny except for an attention-pooling head.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..families import image_tower, locate
from ..families.dims import BlockDims, VitDims  # noqa: F401  (re-exported: part of this module's API)


def find_blocks(model: nn.Module, family=None) -> tuple[str, list[nn.Module]]:
    """(dotted name inside the module `image_tower(model)` runs, blocks) of the transformer blocks."""
    family = family or locate(model)
    container = family.blocks_container
    for name, module in family.encoder.named_modules():
        if module is container:
            return name, list(container)
    raise ValueError("the blocks are not inside the image encoder")  # pragma: no cover - adapters guarantee it


def vit_dims(model: nn.Module) -> VitDims:
    """Read the dimensions of the ViT inside `model` (any supported family)."""
    return locate(model).dims()


# ------------------------------------------------------------------ token schedules


@dataclass
class TokenSchedule:
    """Tokens entering each block and tokens each block's MLP sees (after the block's reduction).

    Either list may be 1-D (one schedule for every image) or 2-D (images x blocks) for strategies
    that keep a different number of tokens per image; costs are then averaged over images.
    """

    tokens_per_layer: Any
    mlp_tokens_per_layer: Any = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def coerce(cls, schedule) -> "TokenSchedule | None":
        """Accept a TokenSchedule, a `h.stats()` dict (its per-image counts when it has them), a plain list of
        tokens per layer, or None."""
        if schedule is None or isinstance(schedule, TokenSchedule):
            return schedule
        if isinstance(schedule, dict):
            if "tokens_per_layer" not in schedule:
                raise ValueError("a schedule dict needs 'tokens_per_layer' (what h.stats() returns)")
            if "tokens_per_image" in schedule:  # per-image budgets: each image's own counts, padding left out
                return cls(schedule["tokens_per_image"], schedule.get("mlp_tokens_per_image"))
            return cls(schedule["tokens_per_layer"], schedule.get("mlp_tokens_per_layer"))
        return cls(schedule)

    def resolved(self, depth: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(tokens, mlp_tokens) as float arrays of shape (images, depth), plus notes on assumptions."""
        tokens = np.atleast_2d(np.asarray(self.tokens_per_layer, dtype=np.float64))
        if tokens.shape[1] != depth:
            raise ValueError(f"tokens_per_layer has {tokens.shape[1]} entries but the model has {depth} blocks")
        notes = list(self.notes)
        if self.mlp_tokens_per_layer is None:
            # without the key, assume a block's MLP sees what enters the next block and the last block keeps all
            mlp = np.concatenate([tokens[:, 1:], tokens[:, -1:]], axis=1)
            notes.append("mlp_tokens_per_layer missing: assumed tokens entering the next block "
                         "(last block: no reduction)")
        else:
            mlp = np.atleast_2d(np.asarray(self.mlp_tokens_per_layer, dtype=np.float64))
            if mlp.shape[1] != depth:
                raise ValueError(f"mlp_tokens_per_layer has {mlp.shape[1]} entries but the model has {depth} blocks")
        tokens, mlp = np.broadcast_arrays(tokens, mlp)
        return tokens, mlp, notes


# ------------------------------------------------------------------ analytic counts


@dataclass
class AnalyticCount:
    """Analytic MACs per image (mean over images when the schedule varies per image)."""

    patch_embed: float
    per_block: list[float]
    per_block_terms: list[dict[str, float]]
    head: float
    tokens_per_layer: list[float]
    mlp_tokens_per_layer: list[float]
    notes: list[str]

    @property
    def macs(self) -> float:
        """The reference formula: patch embedding + blocks (head left out)."""
        return self.patch_embed + sum(self.per_block)

    @property
    def total_macs(self) -> float:
        """Patch embedding + blocks + pooling head."""
        return self.macs + self.head

    @property
    def gmacs(self) -> float:
        return self.macs / 1e9

    @property
    def gflops(self) -> float:
        return 2 * self.gmacs


def analytic_macs(
    model_or_dims,
    schedule=None,
    *,
    image_size: Sequence[int] | None = None,
    attn_dims=None,
    mlp_hidden=None,
) -> AnalyticCount:
    """Analytic MACs of one image through the tower for a token schedule.

    `schedule`: None (every block sees every token), a list of tokens entering each block, a
    `h.stats()` dict (uses `tokens_per_layer` and `mlp_tokens_per_layer`) or a TokenSchedule.
    `attn_dims` / `mlp_hidden`: per-block heads*head_dim and MLP widths, default read from the model.
    """
    dims = model_or_dims if isinstance(model_or_dims, VitDims) else vit_dims(model_or_dims)
    dims = dims.with_overrides(attn_dims, mlp_hidden)
    schedule = TokenSchedule.coerce(schedule)
    if schedule is None:
        schedule = TokenSchedule([dims.num_tokens(image_size)] * dims.depth)
        if image_size is None:
            schedule.notes.append(f"baseline schedule at the model's image size {dims.image_size}")
    tokens, mlp_tokens, notes = schedule.resolved(dims.depth)
    terms = [dims.blocks[i].macs(tokens[:, i], mlp_tokens[:, i]) for i in range(dims.depth)]
    per_block_terms = [{k: float(np.mean(v)) for k, v in t.items()} for t in terms]
    last_out = mlp_tokens[:, -1]
    return AnalyticCount(
        patch_embed=float(dims.patch_embed_macs(image_size)),
        per_block=[sum(t.values()) for t in per_block_terms],
        per_block_terms=per_block_terms,
        head=float(np.mean(dims.head_macs(last_out))),
        tokens_per_layer=tokens.mean(axis=0).tolist(),
        mlp_tokens_per_layer=mlp_tokens.mean(axis=0).tolist(),
        notes=notes + list(dims.notes) + (["mean over images of per-image costs"] if tokens.shape[0] > 1 else []),
    )


def ideal_speedup(
    schedule_baseline,
    schedule_pruned,
    model_or_dims,
    *,
    dims_pruned=None,
    image_size: Sequence[int] | None = None,
    include_head: bool = True,
) -> float:
    """Speedup if time were proportional to MACs: baseline MACs / pruned MACs.

    `dims_pruned`: the pruned model (or its VitDims) when structured pruning changed widths or depth.
    Reports divide a measured speedup by this to show efficiency.
    """
    base = analytic_macs(model_or_dims, schedule_baseline, image_size=image_size)
    pruned = analytic_macs(dims_pruned if dims_pruned is not None else model_or_dims, schedule_pruned,
                           image_size=image_size)
    pick = (lambda c: c.total_macs) if include_head else (lambda c: c.macs)
    return pick(base) / pick(pruned)


def schedule_from_stats(stats: dict[str, Any]) -> TokenSchedule:
    """The token schedule a strategy handle reports after a forward (`h.stats()`)."""
    return TokenSchedule.coerce(stats)
