"""Views of a block's attention and MLP as head- and neuron-sliceable weights, and new, smaller
modules built from kept rows and columns: how each family's modules are read and cut.

Nothing is masked. A pruned block gets new modules holding copies of the kept rows and columns
(fused qkv: q/k/v rows of `qkv` and columns of `proj`; separate q/k/v projections: rows of each;
open_clip `Attention` and `nn.MultiheadAttention`: rows of `in_proj_weight`, columns of `out_proj`,
replaced by an equivalent in-projection attention with fewer heads; MLPs: rows of fc1 / `c_fc`,
columns of fc2 / `c_proj`). The originals are only referenced, never modified.

A norm that spans the whole attention or MLP width (timm `scale_norm`, open_clip `ln_inner` and
`scale_fc`) is sliced too; its statistics then cover the kept channels only, which is part of what
pruning changes.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError

# ---------------------------------------------------------------- new modules from kept rows / columns


def _shell(module: nn.Module) -> nn.Module:
    """A new module of the same class sharing the original's submodules and attributes.

    Its own registries (parameters, modules, hooks) are fresh dicts, so replacing a submodule on
    the shell never reaches the original."""
    new = type(module).__new__(type(module))
    new.__dict__ = {k: (v.copy() if isinstance(v, (dict, set, list)) else v) for k, v in module.__dict__.items()}
    return new


def _parameter(like: torch.Tensor, data: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(data.detach().contiguous(), requires_grad=like.requires_grad)


def sliced_linear(linear: nn.Module, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new `nn.Linear` with the given output rows / input columns of `linear`."""
    if not isinstance(linear, nn.Linear):
        raise UnsupportedModelError(f"cannot slice {type(linear).__name__}; only nn.Linear projections are supported")
    weight, bias = linear.weight, linear.bias
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
        bias = None if bias is None else bias.index_select(0, rows.to(bias.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    new.weight = _parameter(linear.weight, weight)
    if bias is not None:
        new.bias = _parameter(linear.bias, bias)
    new.train(linear.training)
    return new


def sliced_norm(norm: nn.Module, channels: torch.Tensor) -> nn.Module:
    """A LayerNorm over the kept channels only (Identity passes through)."""
    if isinstance(norm, nn.Identity):
        return norm
    if not isinstance(norm, nn.LayerNorm):
        raise UnsupportedModelError(f"cannot slice a {type(norm).__name__} over pruned channels")
    new = _shell(norm)
    new.normalized_shape = (len(channels),)
    if norm.weight is not None:
        new.weight = _parameter(norm.weight, norm.weight.index_select(0, channels.to(norm.weight.device)))
    if norm.bias is not None:
        new.bias = _parameter(norm.bias, norm.bias.index_select(0, channels.to(norm.bias.device)))
    return new


def head_channels(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Channel indices of the given heads inside one of q, k, v (or the concatenated head outputs)."""
    return (heads[:, None] * head_dim + torch.arange(head_dim, device=heads.device)).flatten()


# ---------------------------------------------------------------- attention


def attention_kind(attn: nn.Module) -> str:
    """'timm' (fused qkv Linear), 'mha' (nn.MultiheadAttention), 'in_proj' (open_clip Attention or ours)."""
    if isinstance(attn, nn.MultiheadAttention):
        if not attn._qkv_same_embed_dim or attn.bias_k is not None or attn.add_zero_attn:
            raise UnsupportedModelError("nn.MultiheadAttention with kdim/vdim, bias_k or add_zero_attn is not supported")
        if not attn.batch_first:
            raise UnsupportedModelError("sequence-first nn.MultiheadAttention is not supported")
        return "mha"
    if isinstance(getattr(attn, "qkv", None), nn.Linear) and isinstance(getattr(attn, "proj", None), nn.Linear):
        return "timm"
    if all(isinstance(getattr(attn, n, None), nn.Linear) for n in ("q_proj", "k_proj", "v_proj")) and isinstance(
        getattr(attn, "proj", None) or getattr(attn, "out_proj", None), nn.Linear
    ):
        return "separate"
    if getattr(attn, "in_proj_weight", None) is not None and isinstance(getattr(attn, "out_proj", None), nn.Linear):
        return "in_proj"
    raise UnsupportedModelError(
        f"no head pruning for attention module {type(attn).__name__}; supported: fused qkv (timm Attention, "
        "EvaAttention), separate q/k/v projections (EvaAttention, transformers CLIP/SigLIP), open_clip Attention, "
        "nn.MultiheadAttention"
    )


@dataclass
class HeadWeights:
    """A block's attention as head-sliceable weights: q/k/v each (A, D), out (D, A), A = heads * head_dim."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    num_heads: int
    head_dim: int


def head_weights(attn: nn.Module) -> HeadWeights:
    kind = attention_kind(attn)
    heads = int(attn.num_heads)
    if kind == "timm":
        q, k, v = attn.qkv.weight.chunk(3, dim=0)
        return HeadWeights(q, k, v, attn.proj.weight, heads, q.shape[0] // heads)
    if kind == "separate":
        q, k, v = attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight
        return HeadWeights(q, k, v, _out_linear(attn).weight, heads, q.shape[0] // heads)
    q, k, v = attn.in_proj_weight.chunk(3, dim=0)
    return HeadWeights(q, k, v, attn.out_proj.weight, heads, q.shape[0] // heads)


def _out_linear(attn: nn.Module) -> nn.Linear:
    return attn.proj if isinstance(getattr(attn, "proj", None), nn.Linear) else attn.out_proj


def attention_output_linear(attn: nn.Module) -> nn.Linear:
    """The projection whose input is the concatenated head outputs (B, N, heads*head_dim)."""
    return _out_linear(attn) if attention_kind(attn) in ("timm", "separate") else attn.out_proj


def _slice_timm_attention(attn: nn.Module, heads: torch.Tensor) -> nn.Module:
    """Fused qkv (timm Attention, EvaAttention) or separate q/k/v projections, sliced to `heads`."""
    w = head_weights(attn)
    hd, width = w.head_dim, w.num_heads * w.head_dim
    ch = head_channels(heads, hd)
    new = _shell(attn)
    if getattr(attn, "qkv", None) is not None:
        new.qkv = sliced_linear(attn.qkv, rows=torch.cat([ch, ch + width, ch + 2 * width]))
    else:
        for name in ("q_proj", "k_proj", "v_proj"):
            setattr(new, name, sliced_linear(getattr(attn, name), rows=ch))
    for name in ("q_bias", "v_bias"):  # EvaAttention keeps the fused projection's biases apart
        if isinstance(getattr(attn, name, None), torch.Tensor):
            setattr(new, name, _parameter(getattr(attn, name), getattr(attn, name).index_select(0, ch)))
    if isinstance(getattr(attn, "k_bias", None), torch.Tensor):
        new._buffers["k_bias"] = attn.k_bias.index_select(0, ch)
    out_name = "proj" if isinstance(getattr(attn, "proj", None), nn.Linear) else "out_proj"
    setattr(new, out_name, sliced_linear(getattr(attn, out_name), cols=ch))
    if getattr(attn, "gate", None) is not None:
        new.gate = sliced_linear(attn.gate, rows=ch)
    if hasattr(attn, "norm"):
        new.norm = sliced_norm(attn.norm, ch)
    new.num_heads = len(heads)
    if hasattr(attn, "attn_dim"):
        new.attn_dim = len(heads) * hd
    return new


class InProjAttention(nn.Module):
    """Self-attention with a fused in-projection and any number of heads (open_clip layout).

    Built from an open_clip `Attention` or an `nn.MultiheadAttention`, keeping the heads given (all
    of them shares the source's parameters; a subset copies the kept rows and columns). It exposes
    the attributes the token patches read (`in_proj_weight`, `in_proj_bias`, `out_proj`,
    `num_heads`, `batch_first`, ...), so token strategies run on a pruned block unchanged."""

    batch_first = True

    def __init__(self, source: nn.Module, heads: torch.Tensor | None = None):
        super().__init__()
        kind = attention_kind(source)
        if kind == "timm":
            raise UnsupportedModelError("timm attention is sliced in place of an InProjAttention")
        w = head_weights(source)
        self.source_heads, self.head_dim = w.num_heads, w.head_dim
        share = heads is None
        heads = torch.arange(w.num_heads) if share else heads.cpu()
        self.num_heads = len(heads)
        self.register_buffer("head_index", heads.clone(), persistent=False)
        ch = head_channels(heads, w.head_dim)
        width = w.num_heads * w.head_dim
        rows = torch.cat([ch, ch + width, ch + 2 * width])
        if share:
            self.in_proj_weight, self.in_proj_bias, self.out_proj = source.in_proj_weight, source.in_proj_bias, source.out_proj
        else:
            weight = source.in_proj_weight
            self.in_proj_weight = _parameter(weight, weight.index_select(0, rows.to(weight.device)))
            bias = source.in_proj_bias
            self.in_proj_bias = None if bias is None else _parameter(bias, bias.index_select(0, rows.to(bias.device)))
            self.out_proj = sliced_linear(source.out_proj, cols=ch)
        self.ln_q = getattr(source, "ln_q", nn.Identity())
        self.ln_k = getattr(source, "ln_k", nn.Identity())
        self.logit_scale = self._per_head(getattr(source, "logit_scale", None), heads, share)
        self.logit_scale_max = getattr(source, "logit_scale_max", None)
        self.head_scale = self._per_head(getattr(source, "head_scale", None), heads, share)
        inner = getattr(source, "ln_inner", nn.Identity())
        self.ln_inner = inner if share else sliced_norm(inner, ch)
        drop = getattr(source, "attn_drop", None)
        self.attn_drop = drop if isinstance(drop, nn.Dropout) else nn.Dropout(float(getattr(source, "dropout", 0.0)))
        self.out_drop = getattr(source, "out_drop", nn.Identity())
        self.train(source.training)

    @staticmethod
    def _per_head(value, heads, share):
        if value is None or share:
            return value
        return _parameter(value, value.index_select(0, heads.to(value.device)))

    def _mask(self, attn_mask, key_padding_mask, B, L, S, dtype):
        bias = None
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn_mask = torch.zeros(attn_mask.shape, dtype=dtype, device=attn_mask.device).masked_fill(attn_mask, float("-inf"))
            attn_mask = attn_mask.to(dtype)
            if attn_mask.ndim == 3:  # (B * source heads, L, S): keep the rows of the kept heads
                attn_mask = attn_mask.reshape(B, self.source_heads, L, S).index_select(1, self.head_index)
            bias = attn_mask
        if key_padding_mask is not None:
            pad = key_padding_mask
            if pad.dtype == torch.bool:
                pad = torch.zeros(pad.shape, dtype=dtype, device=pad.device).masked_fill(pad, float("-inf"))
            pad = pad.to(dtype)[:, None, None, :]
            bias = pad if bias is None else bias + pad
        return bias

    def attend(self, q_x, k_x=None, v_x=None, attn_mask=None, key_padding_mask=None):
        B, L, _ = q_x.shape
        if (k_x is None or k_x is q_x) and (v_x is None or v_x is q_x):
            q, k, v = F.linear(q_x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        else:
            w, b = self.in_proj_weight.chunk(3), (self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3)
            k_x = q_x if k_x is None else k_x
            v_x = k_x if v_x is None else v_x
            q, k, v = F.linear(q_x, w[0], b[0]), F.linear(k_x, w[1], b[1]), F.linear(v_x, w[2], b[2])
        S = k.shape[1]
        q, k, v = (t.reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        bias = self._mask(attn_mask, key_padding_mask, B, L, S, q.dtype)
        dropout = self.attn_drop.p if self.training else 0.0
        if self.logit_scale is not None:  # scaled cosine attention
            scale = torch.clamp(self.logit_scale, max=self.logit_scale_max).exp()
            logits = (F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * scale
            if bias is not None:
                logits = logits + bias
            out = F.dropout(logits.softmax(dim=-1), dropout, self.training) @ v
        else:
            q, k = self.ln_q(q), self.ln_k(k)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        if self.head_scale is not None:
            out = out * self.head_scale
        out = out.transpose(1, 2).reshape(B, L, self.num_heads * self.head_dim)
        return self.out_drop(self.out_proj(self.ln_inner(out)))


class PrunedAttention(InProjAttention):
    """Stands in for open_clip's `Attention`: `forward(x, attn_mask=None)` returns a tensor."""

    def forward(self, x, attn_mask=None):
        return self.attend(x, attn_mask=attn_mask)


class PrunedMultiheadAttention(InProjAttention):
    """Stands in for `nn.MultiheadAttention` (batch first): returns `(output, None)`."""

    def forward(self, query, key=None, value=None, key_padding_mask=None, need_weights=False, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        if need_weights:
            raise ValueError("a head-pruned attention does not return attention weights; call it with need_weights=False")
        if is_causal and attn_mask is None:
            raise ValueError("is_causal needs an explicit attn_mask on a head-pruned attention")
        return self.attend(query, key, value, attn_mask, key_padding_mask), None


def equivalent_attention(attn: nn.Module, heads: torch.Tensor | None = None) -> nn.Module:
    """An attention module keeping `heads` (all of them, sharing parameters, when None)."""
    kind = attention_kind(attn)
    if kind in ("timm", "separate"):
        if heads is None:
            return attn
        new = _slice_timm_attention(attn, heads)
        forward = pruned_attention_forward(attn)
        if forward is not None:  # the module's own forward assumes its width equals the block's
            new.__class__ = _with_forward(type(attn), forward)
        return new
    if isinstance(attn, InProjAttention):  # pruned again: keep the calling convention it stands in for
        return type(attn)(attn, heads)
    cls = PrunedMultiheadAttention if kind == "mha" else PrunedAttention
    return cls(attn, heads)


_FORWARD_CLASSES: dict[type, type] = {}


def _with_forward(cls: type, forward) -> type:
    if cls not in _FORWARD_CLASSES:
        _FORWARD_CLASSES[cls] = type(f"HeadPruned{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _FORWARD_CLASSES[cls]


def pruned_attention_forward(attn: nn.Module):
    """The forward a head-sliced copy of `attn` needs, from its family's adapter (None: its own works)."""
    from . import ADAPTERS

    for adapter in ADAPTERS:
        forward = adapter.pruned_attention_forward(attn)
        if forward is not None:
            return forward
    return None


# ---------------------------------------------------------------- MLP


def mlp_kind(mlp: nn.Module) -> str:
    """'timm' (fc1 -> fc2), 'glu' (fc1 emits value and gate halves), 'swiglu' (fc1_g, fc1_x), 'open_clip' (c_fc, c_proj)."""
    if isinstance(getattr(mlp, "c_fc", None), nn.Linear) and isinstance(getattr(mlp, "c_proj", None), nn.Linear):
        return "open_clip"
    fc2 = getattr(mlp, "fc2", None)
    if isinstance(fc2, nn.Linear):
        if isinstance(getattr(mlp, "fc1_g", None), nn.Linear) and isinstance(getattr(mlp, "fc1_x", None), nn.Linear):
            return "swiglu"
        fc1 = getattr(mlp, "fc1", None)
        if isinstance(fc1, nn.Linear) and fc1.out_features == fc2.in_features:
            return "timm"
        if isinstance(fc1, nn.Linear) and fc1.out_features == 2 * fc2.in_features and getattr(mlp, "chunk_dim", -1) == -1:
            return "glu"
    raise UnsupportedModelError(
        f"no neuron pruning for MLP module {type(mlp).__name__}; supported: timm Mlp/GluMlp/SwiGLU, open_clip c_fc/c_proj"
    )


def mlp_output_linear(mlp: nn.Module) -> nn.Linear:
    """The projection whose input is the hidden activations (B, N, hidden)."""
    return mlp.c_proj if mlp_kind(mlp) == "open_clip" else mlp.fc2


def mlp_weights(mlp: nn.Module) -> tuple[list[torch.Tensor], torch.Tensor]:
    """([(hidden, D) input weights...], (D, hidden) output weight) of an MLP."""
    kind = mlp_kind(mlp)
    if kind == "open_clip":
        return [mlp.c_fc.weight], mlp.c_proj.weight
    if kind == "swiglu":
        return [mlp.fc1_g.weight, mlp.fc1_x.weight], mlp.fc2.weight
    if kind == "glu":
        return list(mlp.fc1.weight.chunk(2, dim=0)), mlp.fc2.weight
    return [mlp.fc1.weight], mlp.fc2.weight


def sliced_mlp(mlp: nn.Module, neurons: torch.Tensor) -> nn.Module:
    """A new MLP keeping the hidden `neurons` (sorted indices)."""
    kind = mlp_kind(mlp)
    if kind == "open_clip":
        parts = OrderedDict(mlp.named_children())
        parts["c_fc"] = sliced_linear(mlp.c_fc, rows=neurons)
        parts["c_proj"] = sliced_linear(mlp.c_proj, cols=neurons)
        if "ln" in parts:
            parts["ln"] = sliced_norm(parts["ln"], neurons)
        new = nn.Sequential(parts)
        new.train(mlp.training)
        return new
    new = _shell(mlp)
    if kind == "swiglu":
        new.fc1_g = sliced_linear(mlp.fc1_g, rows=neurons)
        new.fc1_x = sliced_linear(mlp.fc1_x, rows=neurons)
    elif kind == "glu":
        new.fc1 = sliced_linear(mlp.fc1, rows=torch.cat([neurons, neurons + mlp.fc2.in_features]))
    else:
        new.fc1 = sliced_linear(mlp.fc1, rows=neurons)
    new.fc2 = sliced_linear(mlp.fc2, cols=neurons)
    if hasattr(mlp, "norm"):
        new.norm = sliced_norm(mlp.norm, neurons)
    return new
