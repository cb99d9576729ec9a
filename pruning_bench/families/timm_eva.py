"""timm `Eva` (EVA02: rotary position embeddings, SwiGLU MLP, optional layer scale), alone or as the
trunk of an open_clip tower (open_clip's `EVA02-*` configs).

Token reduction keeps the rotary embedding with the tokens: the hook holds a per-image copy of the
(cos, sin) table, reduced exactly like the features. A kept token keeps its own rotation; a merged
token gets the size-weighted mean of its patches' (cos, sin) entries. Rotation is linear in q and k,
so that mean rotation applied to the merged query equals the mean of the patches' rotated queries
whenever the merged tokens are equal, which is what merging assumes; it is no longer a pure
rotation, and says so by its smaller norm.
"""
from __future__ import annotations

from ..errors import UnsupportedModelError
from .attention import QkvAttentionView
from .base import BlockLayout, register_family
from .timm_vit import TimmFamily

EVA_BLOCK = BlockLayout("norm1", "attn", ("gamma_1", "drop_path1"), "norm2", "mlp", ("gamma_2", "drop_path2"))


def _pruned_forward(self, x, rope=None, attn_mask=None, is_causal=False):
    """EvaAttention with fewer heads than the block is wide (its own forward reshapes to the width)."""
    from timm.layers.pos_embed_sincos import apply_rot_embed_cat

    if attn_mask is not None or is_causal:
        raise ValueError("a head-pruned EvaAttention does not take an attention mask")
    rotate = None if rope is None else (lambda t: apply_rot_embed_cat(t, rope, half=getattr(self, "rotate_half", False)))
    fused = getattr(self, "qkv", None) is not None
    view = QkvAttentionView(self, qkv="qkv", out="proj") if fused else QkvAttentionView(self, out="proj")
    return view.attend(x, None, rotate, self.num_prefix_tokens).out


@register_family
class EvaFamily(TimmFamily):
    name = "eva"
    label = "timm Eva (EVA02, rotary embeddings), also as an open_clip timm trunk (EVA02-*)"
    rope = True

    @classmethod
    def _core_class(cls):
        from timm.models.eva import Eva

        return Eva

    @classmethod
    def block_layout(cls, block):
        from timm.models.eva import EvaBlock

        if not isinstance(block, EvaBlock):
            raise UnsupportedModelError(f"no token-reduction support for block type {type(block).__name__} "
                                        f"(post-norm Eva blocks are not supported); supported: {cls.label}")
        return EVA_BLOCK

    def attention_view(self, block):
        attn = block.attn
        if getattr(attn, "qkv", None) is not None:
            return QkvAttentionView(attn, qkv="qkv", out="proj", pruned_forward=_pruned_forward)
        return QkvAttentionView(attn, q="q_proj", k="k_proj", v="v_proj", out="proj", pruned_forward=_pruned_forward)

    def check_tokens(self):
        if getattr(self.core, "rope_mixed", False):
            raise UnsupportedModelError("token reduction on Eva with depth-dependent ('mixed') rotary embeddings is not supported")

    def split_block_args(self, args, kwargs):
        kwargs = dict(kwargs)
        if "rope" in kwargs:
            return kwargs.pop("rope"), tuple(args) + tuple(kwargs.values())
        return (args[0] if args else None), tuple(args[1:]) + tuple(kwargs.values())

    def block_call(self, rope):
        return {"rope": rope}

    def rotate(self, t, rope):
        from timm.layers.pos_embed_sincos import apply_rot_embed_cat

        half = getattr(self.blocks[0].attn, "rotate_half", False)
        return apply_rot_embed_cat(t, rope, half=half)
