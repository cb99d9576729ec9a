"""Where the transformer blocks of each supported model family live, and how a block is laid out.

Supported: timm `VisionTransformer`; open_clip `VisionTransformer`; an open_clip model (`CLIP`,
`CustomTextCLIP`, ...) whose `visual` tower is either of those or an open_clip `TimmModel` wrapping a
timm ViT. Only the image tower is ever touched.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

from ..errors import UnsupportedModelError

SUPPORTED = (
    "timm VisionTransformer; open_clip VisionTransformer; open_clip CLIP/CustomTextCLIP/CoCa whose visual "
    "tower is an open_clip VisionTransformer or a TimmModel wrapping a timm VisionTransformer"
)


@dataclass
class VitTarget:
    family: str  # "timm" or "open_clip"
    vit: nn.Module  # the module that owns the blocks and the pooling
    blocks: list
    n_prefix: int  # class token + register tokens: never pruned or merged
    blocks_container: nn.Module  # the Sequential / ModuleList holding the blocks


def locate_vit(model: nn.Module) -> VitTarget:
    """Find the vision transformer inside `model`, or raise `UnsupportedModelError`."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    try:
        from open_clip.transformer import VisionTransformer as OpenClipViT
        from open_clip.timm_model import TimmModel
    except ImportError:  # open_clip is a dependency, but stay usable for timm-only installs
        OpenClipViT = TimmModel = ()

    seen = model
    if OpenClipViT and not isinstance(model, (TimmViT, OpenClipViT)) and hasattr(model, "visual"):
        seen = model.visual
    if TimmModel and isinstance(seen, TimmModel):
        seen = seen.trunk
    if isinstance(seen, TimmViT):
        return VitTarget("timm", seen, list(seen.blocks), int(seen.num_prefix_tokens), seen.blocks)
    if OpenClipViT and isinstance(seen, OpenClipViT):
        if not seen.transformer.batch_first:
            raise UnsupportedModelError("open_clip VisionTransformer with batch_first=False is not supported")
        blocks = seen.transformer.resblocks
        return VitTarget("open_clip", seen, list(blocks), 1, blocks)
    raise UnsupportedModelError(f"cannot patch {type(model).__name__} (image tower {type(seen).__name__}); supported: {SUPPORTED}")


class BlockLayout:
    """Names of a pre-norm residual block's parts: x += post_attn(attn(norm1(x))); x += post_mlp(mlp(norm2(x)))."""

    def __init__(self, norm1, attn, post_attn, norm2, mlp, post_mlp):
        self.norm1, self.attn, self.norm2, self.mlp = norm1, attn, norm2, mlp
        self.post_attn, self.post_mlp = post_attn, post_mlp

    def parts(self, block):
        return (getattr(block, self.norm1), getattr(block, self.attn), getattr(block, self.norm2), getattr(block, self.mlp))

    def attn_residual(self, block, out):
        for name in self.post_attn:
            out = getattr(block, name)(out)
        return out

    def mlp_residual(self, block, out):
        for name in self.post_mlp:
            out = getattr(block, name)(out)
        return out


TIMM_BLOCK = BlockLayout("norm1", "attn", ("ls1", "drop_path1"), "norm2", "mlp", ("ls2", "drop_path2"))
OPEN_CLIP_BLOCK = BlockLayout("ln_1", "attn", ("ls_1",), "ln_2", "mlp", ("ls_2",))
OPEN_CLIP_CUSTOM_BLOCK = BlockLayout("ln_1", "attn", ("ln_attn", "ls_1"), "ln_2", "mlp", ("ls_2",))


def block_layout(block: nn.Module) -> BlockLayout:
    """The layout of `block`, checked against its actual attributes (a different block type is refused)."""
    from timm.models.vision_transformer import Block as TimmBlock

    if isinstance(block, TimmBlock):
        return TIMM_BLOCK
    try:
        from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock
    except ImportError:
        CustomResidualAttentionBlock = ResidualAttentionBlock = ()
    if CustomResidualAttentionBlock and isinstance(block, CustomResidualAttentionBlock):
        return OPEN_CLIP_CUSTOM_BLOCK
    if ResidualAttentionBlock and isinstance(block, ResidualAttentionBlock):
        return OPEN_CLIP_BLOCK
    raise UnsupportedModelError(f"no token-reduction support for block type {type(block).__name__}; supported: {SUPPORTED}")
