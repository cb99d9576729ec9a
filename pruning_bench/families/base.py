"""What a model family is, behind one small interface that every other module asks.

A `Family` is located on a model (`pruning_bench.families.locate`) and answers: where the blocks
live and how a block is laid out, each block's attention view (heads, head width, q/k/v and output
projections, head slicing: `attention.py`) and MLP view (hidden width, output Linear, neuron
slicing: `mlp.py`), how many prefix tokens never get pruned, how a block receives its rotary
embedding (if any), how the image path runs (for counting, timing and features), the patch grid,
and the dimensions the analytic MAC formula needs. Adding a family = one adapter module that
subclasses `Family` and registers itself, plus a builder in the tests.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .attention import AttentionView
from .dims import BlockDims
from .mlp import MlpView

ADAPTERS: list[type["Family"]] = []


def register_family(cls: type["Family"]) -> type["Family"]:
    """Class decorator: adapters are tried in registration order."""
    ADAPTERS.append(cls)
    return cls


class BlockLayout:
    """A pre-norm residual block: x += post_attn(attn(norm1(x))); x += post_mlp(mlp(norm2(x))).

    `post_attn` / `post_mlp` name what follows the branch: a module is called, a tensor (timm Eva's
    `gamma_1` layer scale) multiplies, a missing or None attribute is skipped."""

    def __init__(self, norm1: str, attn: str, post_attn: tuple, norm2: str, mlp: str, post_mlp: tuple):
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.post_attn, self.post_mlp = post_attn, post_mlp

    def parts(self, block):
        return (getattr(block, self.norm1), getattr(block, self.attn), getattr(block, self.norm2), getattr(block, self.mlp))

    @staticmethod
    def _post(block, names, out):
        for name in names:
            step = getattr(block, name, None)
            if step is None:
                continue
            out = step(out) if isinstance(step, nn.Module) else out * step
        return out

    def attn_residual(self, block, out):
        return self._post(block, self.post_attn, out)

    def mlp_residual(self, block, out):
        return self._post(block, self.post_mlp, out)


class ImageEncoder(nn.Module):
    """A module whose forward runs only a model's image path (for models whose own forward needs text)."""

    def __init__(self, model: nn.Module, run: Callable[[nn.Module, torch.Tensor], torch.Tensor]):
        super().__init__()
        self.model = model
        self._run = run

    def forward(self, images):
        return self._run(self.model, images)


def candidate_towers(model: nn.Module) -> Iterator[tuple[nn.Module, nn.Module]]:
    """(image tower, transformer core) pairs worth asking an adapter about.

    CLIP-like models keep the image tower in `.visual`; a tower wrapping a timm model keeps it in
    `.trunk`. The tower is what runs images (projection heads included), the core owns the blocks."""
    visual = getattr(model, "visual", None)
    tower = visual if isinstance(visual, nn.Module) else model
    trunk = getattr(tower, "trunk", None)
    if isinstance(trunk, nn.Module):
        yield tower, trunk
    yield tower, tower


class Family(abc.ABC):
    """One located vision transformer. Subclasses fill in the family-specific answers."""

    name = "?"  # short id recorded in results ("timm", "open_clip", "eva", "hf_clip", ...)
    label = "?"  # what it supports, for error messages
    rope = False  # blocks take a rotary embedding that must follow the tokens

    def __init__(self, model: nn.Module, tower: nn.Module, core: nn.Module):
        self.model, self.tower, self.core = model, tower, core

    # ------------------------------------------------ finding it
    @classmethod
    @abc.abstractmethod
    def locate(cls, model: nn.Module) -> "Family | None":
        """This family's view of `model`, or None when the model is not of this family."""

    # ------------------------------------------------ blocks
    @property
    @abc.abstractmethod
    def blocks_owner(self) -> tuple[nn.Module, str]:
        """(module, attribute) holding the blocks container, so layer dropping can swap it."""

    @property
    def blocks_container(self) -> nn.Module:
        owner, attr = self.blocks_owner
        return getattr(owner, attr)

    @property
    def blocks(self) -> list[nn.Module]:
        return list(self.blocks_container)

    @property
    def vit(self) -> nn.Module:
        return self.core

    @property
    def family(self) -> str:
        return self.name

    @property
    @abc.abstractmethod
    def n_prefix(self) -> int:
        """Class and register tokens at the front: never pruned or merged."""

    @classmethod
    @abc.abstractmethod
    def block_layout(cls, block: nn.Module) -> BlockLayout:
        """The block's layout; raises `UnsupportedModelError` for a block this adapter does not know."""

    @abc.abstractmethod
    def attention_view(self, block: nn.Module) -> AttentionView:
        """The block's attention seen through this family's layout (`attention.py`)."""

    @abc.abstractmethod
    def mlp_view(self, block: nn.Module) -> MlpView:
        """The block's MLP seen through this family's layout (`mlp.py`)."""

    def replace_part(self, block: nn.Module, part: str, module: nn.Module) -> nn.Module:
        """Put `module` in the block's 'attn' or 'mlp' slot; returns what was there."""
        name = getattr(self.block_layout(block), part)
        old = getattr(block, name)
        setattr(block, name, module)
        return old

    def part(self, block: nn.Module, part: str) -> nn.Module:
        """The module in the block's 'attn' or 'mlp' slot."""
        return getattr(block, getattr(self.block_layout(block), part))

    def block_dims(self, block: nn.Module, embed_dim: int) -> BlockDims:
        """What the block's MAC count depends on, read from its views (sliced heads and neurons show up)."""
        mlp = self.mlp_view(block)
        return BlockDims(embed_dim, self.attention_view(block).width, mlp.hidden, mlp.fc1_out)

    def block_widths(self, blocks=None) -> tuple[list[int], list[int]]:
        """(heads, MLP hidden width) of each block (the current blocks by default)."""
        blocks = self.blocks if blocks is None else blocks
        return ([self.attention_view(b).num_heads for b in blocks], [self.mlp_view(b).hidden for b in blocks])

    @property
    def saved_format(self) -> str | None:
        """How `pb.save_pruned` writes and rebuilds this model: the name of a `pruning_bench.saved` format
        ("timm", "open_clip", "transformers"), or None when it cannot be saved."""
        return None

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the model's classifier with a fresh linear one for `num_classes` (fine-tuning)."""
        raise UnsupportedModelError(f"{self.label}: no classifier head to replace")

    def classifier(self) -> nn.Linear | None:
        """The Linear mapping pooled features to class logits, or None when the model has none."""
        return None

    def uses_quick_gelu(self) -> bool:
        """Whether the model's MLPs use open_clip's QuickGELU (an open_clip config records it as `quick_gelu`)."""
        return False

    def normalisation(self) -> tuple | None:
        """(mean, std) of the input normalisation the model itself records, or None when it records none."""
        return None

    def pools_patch_tokens(self) -> bool:
        """Whether the output is pooled from patch tokens only (so a budget keeping none would be NaN)."""
        return self.n_prefix == 0

    def check_tokens(self) -> None:
        """Raise `UnsupportedModelError` when token reduction cannot follow this model's tokens."""

    def split_block_args(self, args: tuple, kwargs: dict) -> tuple[Any, tuple]:
        """(rotary embedding or None, the remaining arguments) of one block call."""
        return None, tuple(args) + tuple(kwargs.values())

    def block_call(self, rope) -> dict:
        """Keyword arguments that hand a (reduced, per-image) rotary embedding to a block's own forward."""
        return {}

    def rotate(self, t: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
        """Apply a rotary embedding to q or k patch rows (B, heads, N, head_dim)."""
        raise UnsupportedModelError(f"{self.name} has no rotary embedding")

    # ------------------------------------------------ the image path
    @property
    def encoder(self) -> nn.Module:
        """The module whose forward(images) runs the image path only (count, time, memory)."""
        return self.tower

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(pooled image features before any classifier, class logits or None)."""
        out = self.encoder(images)
        return (out[0] if isinstance(out, (tuple, list)) else out), None

    def pooling_methods(self, cls: type) -> dict[str, Callable]:
        """Methods overriding the core's pooling so an average weights merged tokens by size."""
        return {}

    @abc.abstractmethod
    def patch_grid(self) -> tuple[int, int]:
        """(rows, columns) of patches at the model's image size."""

    @abc.abstractmethod
    def dims(self):
        """The `measure.analytic.VitDims` of this tower, read from its modules."""

    def image_size(self) -> tuple[int, int]:
        return self.dims().image_size


def pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) or getattr(v, "ndim", 1) == 0 else (int(v[0]), int(v[1]))


def linear_macs(module: nn.Module | None) -> int:
    if not isinstance(module, nn.Module):
        return 0
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))
