"""timm `VisionTransformer` (DeiT distilled included: two prefix tokens), alone or as the trunk of
an open_clip tower (`TimmModel`)."""
from __future__ import annotations

import abc
from dataclasses import replace

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .attention import QkvAttentionView
from .base import BlockLayout, Family, candidate_towers, linear_macs, pair, register_family
from .mlp import MlpView
from .dims import BlockDims, VitDims

TIMM_BLOCK = BlockLayout("norm1", "attn", ("ls1", "drop_path1"), "norm2", "mlp", ("ls2", "drop_path2"))


def weighted_mean(tokens: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """Mean over tokens, each weighted by the patches it holds (a merged token counts for all of them)."""
    size = size.to(tokens.dtype)
    return (tokens * size).sum(dim=1) / size.sum(dim=1)


def timm_mlp_view(mlp: nn.Module) -> MlpView:
    """timm `Mlp` (fc1 -> fc2), `GluMlp` (fc1 emits value and gate halves), `SwiGLU` (fc1_g, fc1_x)."""
    if isinstance(getattr(mlp, "fc1_g", None), nn.Linear):
        return MlpView(mlp, ("fc1_g", "fc1_x"), "fc2")
    fc1, fc2 = getattr(mlp, "fc1", None), getattr(mlp, "fc2", None)
    glu = isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear) and fc1.out_features == 2 * fc2.in_features
    return MlpView(mlp, ("fc1",), "fc2", glu=glu)


def is_open_clip_model(model: nn.Module) -> bool:
    """Whether `model` is a whole open_clip model (CLIP, CustomTextCLIP, CoCa), text tower included."""
    try:
        from open_clip.coca_model import CoCa
        from open_clip.model import CLIP, CustomTextCLIP
    except ImportError:  # open_clip is a dependency, but stay usable for timm-only installs
        return False
    return isinstance(model, (CLIP, CustomTextCLIP, CoCa))


def uses_quick_gelu(model: nn.Module) -> bool:
    """Whether any module of an open_clip model (text tower included) is open_clip's QuickGELU."""
    try:
        from open_clip.transformer import QuickGELU
    except ImportError:
        return False
    return any(isinstance(m, QuickGELU) for m in model.modules())


class TimmFamily(Family):
    """Shared by timm towers: the tower may be the timm model itself or an open_clip TimmModel."""

    @property
    def saved_format(self):
        return "open_clip" if is_open_clip_model(self.model) else None

    def normalisation(self):
        if self.tower is self.core:  # a timm model records none on itself (its pretrained_cfg is timm's default)
            return None
        mean, std = getattr(self.tower, "image_mean", None), getattr(self.tower, "image_std", None)  # open_clip's
        return None if mean is None or std is None else (tuple(mean), tuple(std))

    def uses_quick_gelu(self):
        return uses_quick_gelu(self.model)

    def classifier(self):
        head = self.core.get_classifier()
        return head if isinstance(head, nn.Linear) else None

    def reset_classifier(self, num_classes):
        if self.model is not self.core:
            super().reset_classifier(num_classes)
        self.core.reset_classifier(num_classes)

    @classmethod
    @abc.abstractmethod
    def _core_class(cls) -> type:
        """The timm model class this adapter handles."""

    @classmethod
    def locate(cls, model):
        core_class = cls._core_class()
        for tower, core in candidate_towers(model):
            if isinstance(core, core_class):
                return cls(model, tower, core)
        return None

    @property
    def blocks_owner(self):
        return self.core, "blocks"

    @property
    def n_prefix(self) -> int:
        return int(self.core.num_prefix_tokens)

    def features(self, images):
        if self.tower is not self.core:  # open_clip TimmModel: its forward is the image embedding
            return self.tower(images), None
        core = self.core
        features = core.forward_head(core.forward_features(images), pre_logits=True)
        head = core.get_classifier() if hasattr(core, "get_classifier") else None
        has_head = isinstance(head, nn.Module) and not isinstance(head, nn.Identity)
        return features, (head(features) if has_head else None)

    def patch_grid(self):
        return pair(self.core.patch_embed.grid_size)

    def _head_linear(self) -> int:
        head = getattr(self.core, "head", None)
        macs = linear_macs(head)
        if self.tower is not self.core:  # open_clip TimmModel: projection head after the trunk
            macs += linear_macs(getattr(self.tower, "head", None))
        return macs

    def _dims(self, blocks, attn_pool=None, notes=()):
        conv = self.core.patch_embed.proj
        notes = list(notes)
        if conv.stride != conv.kernel_size:
            notes.append("patch embedding with overlapping windows: patch count assumes stride == kernel")
        return VitDims(family=self.name, embed_dim=conv.out_channels, in_chans=conv.in_channels,
                       patch_size=pair(conv.kernel_size), image_size=pair(self.core.patch_embed.img_size),
                       num_prefix_tokens=self.n_prefix, blocks=tuple(blocks), head_linear_macs=self._head_linear(),
                       attn_pool=attn_pool, notes=tuple(notes))

    def attention_view(self, block):
        return QkvAttentionView(block.attn, qkv="qkv", out="proj")

    def mlp_view(self, block):
        return timm_mlp_view(block.mlp)

    def pools_patch_tokens(self):
        core = self.core
        return self.n_prefix == 0 or (core.global_pool in ("avg", "max", "avgmax") and core.attn_pool is None
                                      and not getattr(core, "pool_include_prefix", False))

    def pooling_methods(self, cls):
        def pool(vit, x, pool_type=None):
            size = vit._pb_run.token_weights()  # patches per token, 0 for padding
            kind = vit.global_pool if pool_type is None else pool_type
            if size is None or kind != "avg" or vit.attn_pool is not None or getattr(vit, "pool_include_prefix", False):
                if vit._pb_run.mask is not None and (kind not in ("token", "") or vit.attn_pool is not None):
                    raise UnsupportedModelError(f"{kind!r} pooling cannot leave out the padding of per-image token counts")
                return cls.pool(vit, x, pool_type)
            p = vit.num_prefix_tokens
            return weighted_mean(x[:, p:], size[:, p:])

        return {"pool": pool}

    def dims(self):
        d = self.core.patch_embed.proj.out_channels
        blocks = [self.block_dims(b, d) for b in self.core.blocks]
        attn_pool, notes = None, []
        pool = getattr(self.core, "attn_pool", None)
        if pool is not None:
            attn_pool = BlockDims(d, pool.q.out_features, pool.mlp.fc2.in_features)
            if getattr(pool, "latent_len", 1) != 1:
                notes.append("attention pool with several latents counted as one")
        head_dist = getattr(self.core, "head_dist", None)  # DeiT distilled: a second classifier
        dims = self._dims(blocks, attn_pool, notes)
        if isinstance(head_dist, nn.Module):
            dims = replace(dims, head_linear_macs=dims.head_linear_macs + linear_macs(head_dist))
        return dims


@register_family
class TimmVitFamily(TimmFamily):
    name = "timm"
    label = "timm VisionTransformer (incl. DeiT distilled, registers), also as an open_clip timm trunk"

    @property
    def saved_format(self):
        return "timm" if self.model is self.core else super().saved_format

    @classmethod
    def _core_class(cls):
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer

    @classmethod
    def block_layout(cls, block):
        from timm.models.vision_transformer import Block

        if isinstance(block, Block):
            return TIMM_BLOCK
        raise UnsupportedModelError(f"no token-reduction support for block type {type(block).__name__}; supported: {cls.label}")
