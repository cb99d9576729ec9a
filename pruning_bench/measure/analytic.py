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

from ..errors import UnsupportedModelError

SUPPORTED_FAMILIES = (
    "timm VisionTransformer, open_clip VisionTransformer, open_clip CLIP (model.visual), "
    "open_clip model with a timm ViT trunk"
)


# ------------------------------------------------------------------ locating the image tower


def image_tower(model: nn.Module) -> nn.Module:
    """The module that encodes images: `model.visual` for open_clip CLIP-like models, else `model`.

    Counting and timing go through this, so the text tower of a CLIP model is never touched.
    """
    visual = getattr(model, "visual", None)
    return visual if isinstance(visual, nn.Module) else model


def vit_core(tower: nn.Module) -> tuple[str, nn.Module, str]:
    """(prefix, core, family) for the transformer inside an image tower.

    `prefix` is the core's dotted name inside `tower` ('' or 'trunk'); family is 'timm' or 'open_clip'.
    """
    trunk = getattr(tower, "trunk", None)
    if isinstance(trunk, nn.Module) and _is_timm_vit(trunk):
        return "trunk", trunk, "timm"
    if _is_timm_vit(tower):
        return "", tower, "timm"
    if _is_open_clip_vit(tower):
        return "", tower, "open_clip"
    raise UnsupportedModelError(
        f"cannot find a ViT in {type(tower).__name__}; supported: {SUPPORTED_FAMILIES}"
    )


def _is_timm_vit(m: nn.Module) -> bool:
    return isinstance(getattr(m, "blocks", None), nn.Sequential | nn.ModuleList) and hasattr(m, "patch_embed")


def _is_open_clip_vit(m: nn.Module) -> bool:
    transformer = getattr(m, "transformer", None)
    return hasattr(m, "conv1") and isinstance(getattr(transformer, "resblocks", None), nn.ModuleList)


def find_blocks(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """(dotted name inside the image tower, blocks) of the transformer blocks, in order."""
    prefix, core, family = vit_core(image_tower(model))
    name = "blocks" if family == "timm" else "transformer.resblocks"
    blocks = core.blocks if family == "timm" else core.transformer.resblocks
    return (f"{prefix}.{name}" if prefix else name), list(blocks)


# ------------------------------------------------------------------ dimensions


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


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def _linear_macs(module: nn.Module) -> int:
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def _timm_block_dims(block: nn.Module, d: int) -> BlockDims:
    attn, mlp = block.attn, block.mlp
    if hasattr(attn, "qkv"):
        a = attn.qkv.out_features // 3
    else:  # separate q / k / v projections
        a = attn.q.out_features if hasattr(attn, "q") else attn.q_proj.out_features
    fc1, fc2 = mlp.fc1, mlp.fc2
    return BlockDims(d, a, fc2.in_features, fc1.out_features if fc1.out_features != fc2.in_features else None)


def _open_clip_block_dims(block: nn.Module, d: int) -> BlockDims:
    attn = block.attn
    if getattr(attn, "in_proj_weight", None) is not None:
        a = attn.in_proj_weight.shape[0] // 3
    else:
        a = attn.out_proj.in_features
    c_fc, c_proj = block.mlp.c_fc, block.mlp.c_proj
    return BlockDims(d, a, c_proj.in_features, c_fc.out_features if c_fc.out_features != c_proj.in_features else None)


def vit_dims(model: nn.Module) -> VitDims:
    """Read the dimensions of the ViT inside `model` (any supported family)."""
    tower = image_tower(model)
    prefix, core, family = vit_core(tower)
    notes = []
    if family == "timm":
        conv = core.patch_embed.proj
        d = conv.out_channels
        blocks = tuple(_timm_block_dims(b, d) for b in core.blocks)
        image_size = _pair(core.patch_embed.img_size)
        prefix_tokens = int(getattr(core, "num_prefix_tokens", 1))
        head_linear = _linear_macs(core.head) if isinstance(core.head, nn.Module) else 0
        attn_pool = None
        pool = getattr(core, "attn_pool", None)
        if pool is not None:
            attn_pool = BlockDims(d, pool.q.out_features, pool.mlp.fc2.in_features)
            if getattr(pool, "latent_len", 1) != 1:
                notes.append("attention pool with several latents counted as one")
        if tower is not core:  # open_clip TimmModel: projection head after the trunk
            head_linear += _linear_macs(getattr(tower, "head", nn.Identity()))
    else:
        conv = core.conv1
        d = conv.out_channels
        blocks = tuple(_open_clip_block_dims(b, d) for b in core.transformer.resblocks)
        image_size = _pair(core.image_size)
        prefix_tokens = 1 if getattr(core, "class_embedding", None) is not None else 0
        proj = getattr(core, "proj", None)
        head_linear = int(proj.shape[0] * proj.shape[1]) if isinstance(proj, torch.Tensor) else 0
        attn_pool = None
        if getattr(core, "attn_pool", None) is not None:
            notes.append("open_clip attentional pooler not included in the analytic head")
    if conv.stride != conv.kernel_size:
        notes.append("patch embedding with overlapping windows: patch count assumes stride == kernel")
    return VitDims(
        family=family,
        embed_dim=d,
        in_chans=conv.in_channels,
        patch_size=_pair(conv.kernel_size),
        image_size=image_size,
        num_prefix_tokens=prefix_tokens,
        blocks=blocks,
        head_linear_macs=int(head_linear),
        attn_pool=attn_pool,
        notes=tuple(notes),
    )


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
        """Accept a TokenSchedule, a `h.stats()` dict, a plain list of tokens per layer, or None."""
        if schedule is None or isinstance(schedule, TokenSchedule):
            return schedule
        if isinstance(schedule, dict):
            if "tokens_per_layer" not in schedule:
                raise ValueError("a schedule dict needs 'tokens_per_layer' (what h.stats() returns)")
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
