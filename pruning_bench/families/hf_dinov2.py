"""transformers `Dinov2Model` and `Dinov2WithRegistersModel`: pre-norm blocks with layer scale, a
two-layer or SwiGLU MLP; the register tokens sit after the class token and, like it, are never
pruned or merged (prefix tokens)."""
from __future__ import annotations

from .base import BlockLayout, register_family
from .hf_encoder import HfEncoderFamily
from .mlp import MlpView


@register_family
class HfDinov2Family(HfEncoderFamily):
    name = "hf_dinov2"
    label = "transformers Dinov2Model"
    core_class, layer_class = "Dinov2Model", "Dinov2Layer"
    layout = BlockLayout("norm1", "attention", ("layer_scale1", "drop_path"), "norm2", "mlp", ("layer_scale2", "drop_path"))
    blocks_path = ("encoder", "layer")

    @property
    def n_prefix(self) -> int:
        return 1 + int(getattr(self.core.config, "num_register_tokens", 0) or 0)

    def mlp_view(self, block):
        if self.core.config.use_swiglu_ffn:  # SwiGLU: gate and value Linears
            return MlpView(block.mlp, ("gate_proj", "up_proj"), "down_proj")
        return MlpView(block.mlp, ("fc1",), "fc2")

    def logits(self, sequence):
        return None


@register_family
class HfDinov2RegistersFamily(HfDinov2Family):
    name = "hf_dinov2_registers"
    label = "transformers Dinov2WithRegistersModel (registers are prefix tokens)"
    core_class, layer_class = "Dinov2WithRegistersModel", "Dinov2WithRegistersLayer"
