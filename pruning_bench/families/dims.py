"""Dimensions a tower's analytic MAC count depends on, as each family adapter reads them."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class BlockDims:
    """What a block's cost depends on: width d, attention width a = heads*head_dim, MLP hidden width h."""

    embed_dim: int
    attn_dim: int
    mlp_hidden: int
    mlp_fc1_out: int | None = None  # differs from mlp_hidden only for gated MLPs (fc1 emits 2h)

    def macs(self, n_tokens, mlp_tokens):
        """MAC terms of one block for N entering tokens and M tokens reaching the MLP."""
        d, a, h = self.embed_dim, self.attn_dim, self.mlp_hidden
        fc1 = self.mlp_fc1_out or h
        return {
            "attn_linear": 4 * n_tokens * d * a,
            "attn_matmul": 2 * n_tokens**2 * a,
            "mlp": mlp_tokens * d * (fc1 + h),
        }


@dataclass(frozen=True)
class VitDims:
    """The dimensions of one ViT image tower, read from its modules (so sliced heads/MLPs show up)."""

    family: str
    embed_dim: int
    in_chans: int
    patch_size: tuple[int, int]
    image_size: tuple[int, int]
    num_prefix_tokens: int
    blocks: tuple[BlockDims, ...]
    head_linear_macs: int = 0  # linear maps applied to the single pooled token
    attn_pool: BlockDims | None = None  # attention-pooling head (SigLIP), one latent query
    notes: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def num_patches(self, image_size: Sequence[int] | None = None) -> int:
        h, w = image_size or self.image_size
        return (h // self.patch_size[0]) * (w // self.patch_size[1])

    def num_tokens(self, image_size: Sequence[int] | None = None) -> int:
        return self.num_patches(image_size) + self.num_prefix_tokens

    def patch_embed_macs(self, image_size: Sequence[int] | None = None) -> int:
        p0, p1 = self.patch_size
        return self.num_patches(image_size) * self.in_chans * p0 * p1 * self.embed_dim

    def head_macs(self, n_tokens_out) -> float:
        """Pooling head on the tokens leaving the last block (an attention pool reads all of them)."""
        macs = self.head_linear_macs
        if self.attn_pool is not None:
            d, a, h = self.attn_pool.embed_dim, self.attn_pool.attn_dim, self.attn_pool.mlp_hidden
            # q and proj on one latent, k and v on every token, QK^T and AV for one query, MLP on one token
            macs = macs + 2 * d * a + 2 * n_tokens_out * d * a + 2 * n_tokens_out * a + 2 * d * h
        return macs

    def with_overrides(self, attn_dims=None, mlp_hidden=None) -> "VitDims":
        """Same tower with per-block attention widths / MLP widths replaced (what structured pruning does)."""
        blocks = list(self.blocks)
        for name, values in (("attn_dim", attn_dims), ("mlp_hidden", mlp_hidden)):
            if values is None:
                continue
            values = _per_block(values, len(blocks), name)
            blocks = [replace(b, **{name: int(v)}, **({"mlp_fc1_out": None} if name == "mlp_hidden" else {}))
                      for b, v in zip(blocks, values)]
        return replace(self, blocks=tuple(blocks))


def _per_block(values, depth: int, name: str) -> list:
    if np.isscalar(values):
        return [values] * depth
    values = list(values)
    if len(values) != depth:
        raise ValueError(f"{name} has {len(values)} entries but the model has {depth} blocks")
    return values
