"""Hugging Face `transformers` CLIP and SigLIP vision towers: `CLIPVisionModel`,
`CLIPVisionModelWithProjection`, `CLIPModel` (vision side only), `SiglipVisionModel`, `SiglipModel`.

The image path is `vision_model(pixel_values).pooler_output`, then `visual_projection` where the
model has one (CLIP's image embedding). CLIP pools its class token; SigLIP has no class token and
pools with an attention head over every token, which sees a merged token once, whatever its size.
"""
from __future__ import annotations

from torch import nn

from ..errors import UnsupportedModelError
from .attention import QkvAttentionView
from .base import BlockLayout, Family, ImageEncoder, linear_macs, pair, register_family
from .dims import BlockDims, VitDims
from .mlp import MlpView

HF_BLOCK = BlockLayout("layer_norm1", "self_attn", (), "layer_norm2", "mlp", ())


def _layer_classes():
    classes = []
    try:
        from transformers.models.clip.modeling_clip import CLIPEncoderLayer

        classes.append(CLIPEncoderLayer)
    except ImportError:
        pass
    try:
        from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

        classes.append(SiglipEncoderLayer)
    except ImportError:
        pass
    return tuple(classes)


def _encode(model: nn.Module, images):
    pooled = model.vision_model(pixel_values=images).pooler_output
    projection = getattr(model, "visual_projection", None)
    return projection(pooled) if isinstance(projection, nn.Module) else pooled


@register_family
class HfClipFamily(Family):
    name = "hf_clip"
    label = ("transformers CLIPVisionModel / CLIPVisionModelWithProjection / CLIPModel (vision side) / "
             "SiglipVisionModel / SiglipModel")

    @classmethod
    def locate(cls, model):
        core = getattr(model, "vision_model", None)
        core = core if isinstance(core, nn.Module) else model
        layers = getattr(getattr(core, "encoder", None), "layers", None)
        if not hasattr(core, "embeddings") or not isinstance(layers, nn.ModuleList) or not len(layers):
            return None
        classes = _layer_classes()
        if not classes or not isinstance(layers[0], classes):
            return None
        return cls(model, model, core)

    def __init__(self, model, tower, core):
        super().__init__(model, tower, core)
        self._encoder = None

    @property
    def encoder(self):
        if self._encoder is None:
            if self.core is self.model:
                self._encoder = ImageEncoder(self.model, lambda m, x: m(pixel_values=x).pooler_output)
            else:
                self._encoder = ImageEncoder(self.model, _encode)
        return self._encoder

    @property
    def blocks_owner(self):
        return self.core.encoder, "layers"

    @property
    def n_prefix(self) -> int:
        return 1 if getattr(self.core.embeddings, "class_embedding", None) is not None else 0

    @classmethod
    def block_layout(cls, block):
        if isinstance(block, _layer_classes()):
            return HF_BLOCK
        raise UnsupportedModelError(f"no token-reduction support for block type {type(block).__name__}; supported: {cls.label}")

    def attention_view(self, block):
        return QkvAttentionView(block.self_attn, out="out_proj", scale="scale", dropout="dropout")

    def mlp_view(self, block):
        return MlpView(block.mlp, ("fc1",), "fc2")

    saved_format = "transformers"

    def patch_grid(self):
        conv = self.core.embeddings.patch_embedding
        size = pair(self.core.config.image_size)
        return size[0] // conv.kernel_size[0], size[1] // conv.kernel_size[1]

    def dims(self):
        conv = self.core.embeddings.patch_embedding
        d = conv.out_channels
        blocks = tuple(self.block_dims(layer, d) for layer in self.core.encoder.layers)
        head_linear = linear_macs(getattr(self.model, "visual_projection", None)) if self.core is not self.model else 0
        attn_pool = None
        head = getattr(self.core, "head", None)
        if isinstance(head, nn.Module) and getattr(self.core, "use_head", True):
            attn_pool = BlockDims(d, head.attention.embed_dim, head.mlp.fc2.in_features)
        return VitDims(family=self.name, embed_dim=d, in_chans=conv.in_channels, patch_size=pair(conv.kernel_size),
                       image_size=pair(self.core.config.image_size), num_prefix_tokens=self.n_prefix, blocks=blocks,
                       head_linear_macs=head_linear, attn_pool=attn_pool)
