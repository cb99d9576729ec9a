"""What the `transformers` image encoders with a class token share (DINOv2, ViT, DeiT): the adapters
in `hf_dinov2.py`, `hf_vit.py` and `hf_deit.py` fill in their class names and block layout.

These towers project q, k and v with three Linears and concatenate the heads into `o_proj`, as the
attention view `QkvAttentionView` reads them; their own attention forward reshapes by head width,
so a head-sliced copy runs its own forward unchanged. The image feature is the pooled output when
the model has a pooler (ViT's dense + tanh on the class token), else the class token after the
final norm (DINOv2's `pooler_output` is that token); a classification wrapper adds its logits.
"""
from __future__ import annotations

import abc
import sys

import torch
from torch import nn

from ..errors import UnsupportedModelError
from .attention import QkvAttentionView
from .base import BlockLayout, Family, ImageEncoder, linear_macs, pair
from .dims import VitDims
from .mlp import MlpView


def _class(name: str) -> type | None:
    try:
        import transformers
    except ImportError:  # transformers is optional for timm / open_clip users
        return None
    return getattr(transformers, name, None)


class HfEncoderFamily(Family):
    """A transformers vision encoder (`core`), alone or inside a classification wrapper (`model`)."""

    core_class = "?"  # transformers class name of the encoder
    layer_class = "?"  # class name of its blocks, in the encoder's own modeling module
    layout: BlockLayout
    wrappers: dict[str, str] = {}  # wrapper class name -> attribute holding the encoder
    blocks_path: tuple[str, ...] = ("layers",)  # attributes from the encoder to the blocks container

    @classmethod
    def block_layout(cls, block):
        core = _class(cls.core_class)
        layer = getattr(sys.modules[core.__module__], cls.layer_class, None) if core is not None else None
        if layer is None or not isinstance(block, layer):
            raise UnsupportedModelError(f"no token-reduction support for block type {type(block).__name__}; "
                                        f"supported: {cls.label}")
        return cls.layout

    @classmethod
    def locate(cls, model):
        core_class = _class(cls.core_class)
        if core_class is None:
            return None
        if isinstance(model, core_class):
            return cls(model, model, model)
        for name, attribute in cls.wrappers.items():
            wrapper = _class(name)
            if wrapper is not None and isinstance(model, wrapper) and isinstance(getattr(model, attribute, None), core_class):
                return cls(model, model, getattr(model, attribute))
        return None

    def __init__(self, model, tower, core):
        super().__init__(model, tower, core)
        self._encoder = None

    @property
    def blocks_owner(self):
        owner = self.core
        for name in self.blocks_path[:-1]:
            owner = getattr(owner, name)
        return owner, self.blocks_path[-1]

    # ------------------------------------------------ layouts
    def attention_view(self, block):
        return QkvAttentionView(block.attention, out="o_proj", heads="num_attention_heads", scale="scaling",
                                dropout="attention_dropout")

    def mlp_view(self, block):
        return MlpView(block.mlp, ("fc1",), "fc2")

    # ------------------------------------------------ the image path
    @abc.abstractmethod
    def logits(self, sequence: torch.Tensor) -> torch.Tensor | None:
        """The wrapper's class logits from the encoder's final sequence (None for a bare encoder)."""

    def _run(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out = self.core(pixel_values=images)
        pooled = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 0]
        return pooled, (None if self.model is self.core else self.logits(out.last_hidden_state))

    def features(self, images):
        return self._run(images)

    @property
    def encoder(self):
        if self._encoder is None:
            def run(_model, images):
                features, logits = self._run(images)
                return features if logits is None else logits

            self._encoder = ImageEncoder(self.model, run)
        return self._encoder

    def classifier(self):
        head = getattr(self.model, "classifier", None) if self.model is not self.core else None
        return head if isinstance(head, nn.Linear) else None

    def reset_classifier(self, num_classes):
        heads = [n for n in ("classifier", "cls_classifier", "distillation_classifier") if hasattr(self.model, n)]
        if self.model is self.core or not heads:
            super().reset_classifier(num_classes)
        for name in heads:
            setattr(self.model, name, nn.Linear(self.core.config.hidden_size, num_classes))
        self.model.num_labels = self.model.config.num_labels = num_classes

    def head_modules(self) -> list[nn.Module]:
        """Linear maps applied to single pooled tokens (pooler, classifiers), for the MAC count."""
        return [getattr(self.core, "pooler", None)]

    saved_format = "transformers"

    def patch_grid(self):
        size, patch = pair(self.core.config.image_size), pair(self.core.config.patch_size)
        return size[0] // patch[0], size[1] // patch[1]

    def dims(self):
        conv = self.core.embeddings.patch_embeddings.projection
        d = conv.out_channels
        notes = []
        if conv.stride != conv.kernel_size:
            notes.append("patch embedding with overlapping windows: patch count assumes stride == kernel")
        return VitDims(family=self.name, embed_dim=d, in_chans=conv.in_channels, patch_size=pair(conv.kernel_size),
                       image_size=pair(self.core.config.image_size), num_prefix_tokens=self.n_prefix,
                       blocks=tuple(self.block_dims(b, d) for b in self.blocks),
                       head_linear_macs=sum(linear_macs(m) for m in self.head_modules()), notes=tuple(notes))
