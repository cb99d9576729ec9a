"""open_clip `VisionTransformer`, alone or as the `visual` tower of a CLIP / CustomTextCLIP / CoCa."""
from __future__ import annotations

import torch

from ..errors import UnsupportedModelError
from .attention import InProjAttentionView
from .base import BlockLayout, Family, candidate_towers, pair, register_family
from .dims import VitDims
from .mlp import MlpView
from .timm_vit import is_open_clip_model, uses_quick_gelu, weighted_mean

OPEN_CLIP_BLOCK = BlockLayout("ln_1", "attn", ("ls_1",), "ln_2", "mlp", ("ls_2",))
OPEN_CLIP_CUSTOM_BLOCK = BlockLayout("ln_1", "attn", ("ln_attn", "ls_1"), "ln_2", "mlp", ("ls_2",))


@register_family
class OpenClipVitFamily(Family):
    name = "open_clip"
    label = "open_clip VisionTransformer (alone or as the visual tower of CLIP / CustomTextCLIP / CoCa)"

    @classmethod
    def locate(cls, model):
        try:
            from open_clip.transformer import VisionTransformer
        except ImportError:  # open_clip is a dependency, but stay usable for timm-only installs
            return None
        for tower, core in candidate_towers(model):
            if isinstance(core, VisionTransformer):
                if not core.transformer.batch_first:
                    raise UnsupportedModelError("open_clip VisionTransformer with batch_first=False is not supported")
                return cls(model, core, core)
        return None

    @property
    def blocks_owner(self):
        return self.core.transformer, "resblocks"

    @property
    def n_prefix(self) -> int:
        return 1 if getattr(self.core, "class_embedding", None) is not None else 0

    @classmethod
    def block_layout(cls, block):
        from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock

        if isinstance(block, CustomResidualAttentionBlock):
            return OPEN_CLIP_CUSTOM_BLOCK
        if isinstance(block, ResidualAttentionBlock):
            return OPEN_CLIP_BLOCK
        raise UnsupportedModelError(f"no token-reduction support for block type {type(block).__name__}; supported: {cls.label}")

    def attention_view(self, block):
        return InProjAttentionView(block.attn)

    def mlp_view(self, block):
        return MlpView(block.mlp, ("c_fc",), "c_proj", norm="ln")

    @property
    def saved_format(self):
        return "open_clip" if is_open_clip_model(self.model) else None

    def uses_quick_gelu(self):
        return uses_quick_gelu(self.model)

    def normalisation(self):
        mean, std = getattr(self.core, "image_mean", None), getattr(self.core, "image_std", None)
        return None if mean is None or std is None else (tuple(mean), tuple(std))

    def pools_patch_tokens(self):
        return self.n_prefix == 0 or self.core.pool_type == "avg"

    def pooling_methods(self, cls):
        def _global_pool(vit, x):
            size = vit._pb_run.token_weights()  # patches per token, 0 for padding
            if size is None or vit.pool_type != "avg":
                return cls._global_pool(vit, x)
            return weighted_mean(x[:, 1:], size[:, 1:]), x[:, 1:]

        return {"_global_pool": _global_pool}

    def patch_grid(self):
        return pair(self.core.grid_size)

    def dims(self):
        core = self.core
        conv = core.conv1
        d = conv.out_channels
        blocks = []
        for block in core.transformer.resblocks:
            blocks.append(self.block_dims(block, d))
        proj = getattr(core, "proj", None)
        notes = []
        if getattr(core, "attn_pool", None) is not None:
            notes.append("open_clip attentional pooler not included in the analytic head")
        if conv.stride != conv.kernel_size:
            notes.append("patch embedding with overlapping windows: patch count assumes stride == kernel")
        return VitDims(family=self.name, embed_dim=d, in_chans=conv.in_channels, patch_size=pair(conv.kernel_size),
                       image_size=pair(core.image_size), num_prefix_tokens=self.n_prefix, blocks=tuple(blocks),
                       head_linear_macs=int(proj.shape[0] * proj.shape[1]) if isinstance(proj, torch.Tensor) else 0,
                       notes=tuple(notes))
