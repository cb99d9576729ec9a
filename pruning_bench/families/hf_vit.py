"""transformers `ViTModel` (and `ViTForImageClassification`, logits from the class token): pre-norm
blocks whose residual branches end in dropout, one class token, an optional pooler (dense + tanh)."""
from __future__ import annotations

from .base import BlockLayout, register_family
from .hf_encoder import HfEncoderFamily


@register_family
class HfVitFamily(HfEncoderFamily):
    name = "hf_vit"
    label = "transformers ViTModel / ViTForImageClassification"
    core_class, layer_class = "ViTModel", "ViTLayer"
    layout = BlockLayout("layernorm_before", "attention", ("dropout",), "layernorm_after", "mlp", ("dropout",))
    wrappers = {"ViTForImageClassification": "vit"}

    @property
    def n_prefix(self) -> int:
        return 1

    def logits(self, sequence):
        return self.model.classifier(sequence[:, 0])

    def head_modules(self):
        return [getattr(self.core, "pooler", None), getattr(self.model, "classifier", None)]
