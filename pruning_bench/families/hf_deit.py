"""transformers `DeiTModel`, `DeiTForImageClassification` and the distilled
`DeiTForImageClassificationWithTeacher` (logits: the mean of the class-token and distillation-token
heads). The layout is ViT's; the distillation token follows the class token and both are prefix
tokens, never pruned or merged."""
from __future__ import annotations

from .base import register_family
from .hf_encoder import HfEncoderFamily
from .hf_vit import HfVitFamily


@register_family
class HfDeitFamily(HfEncoderFamily):
    name = "hf_deit"
    label = "transformers DeiTModel / DeiTForImageClassification / DeiTForImageClassificationWithTeacher"
    core_class, layer_class = "DeiTModel", "DeiTLayer"
    layout = HfVitFamily.layout
    wrappers = {"DeiTForImageClassification": "deit", "DeiTForImageClassificationWithTeacher": "deit"}

    @property
    def n_prefix(self) -> int:
        return 2

    def logits(self, sequence):
        if hasattr(self.model, "distillation_classifier"):  # the distilled variant: both heads, averaged
            return (self.model.cls_classifier(sequence[:, 0]) + self.model.distillation_classifier(sequence[:, 1])) / 2
        return self.model.classifier(sequence[:, 0])

    def head_modules(self):
        model = self.model
        return [getattr(self.core, "pooler", None)] + [getattr(model, n, None) for n in
                                                        ("classifier", "cls_classifier", "distillation_classifier")]
