"""Attention views: how one block's attention is laid out, as its family's adapter declares it.

A view answers what everything outside the adapters needs to know about an attention module: the
number of heads and their width, the q/k/v and output projections as head-sliceable weights, the
linear whose input is the concatenated head outputs (where head importances hook in), a forward
that also hands back q and k (what token strategies read), and a copy keeping only some heads.

Two layouts cover the supported families, each told the attribute names by its adapter:
- `QkvAttentionView`: q/k/v from one fused `qkv` Linear (timm `Attention`, `EvaAttention`, which
  keeps its q/v biases apart) or from three Linears (transformers CLIP / SigLIP / DINOv2 / ViT /
  DeiT, unfused `EvaAttention`), then an output Linear; timm's optional `q_norm`/`k_norm`, `norm`,
  `gate` and `proj_drop` are applied when the module has them.
- `InProjAttentionView`: a fused `in_proj_weight` and an `out_proj` (open_clip `Attention`,
  `nn.MultiheadAttention`, and the head-sliced stand-ins of `slicing`), with open_clip's optional
  `ln_q`/`ln_k`, scaled-cosine `logit_scale`, `head_scale` and `ln_inner`.
Both run fused SDPA unless the module uses scaled-cosine logits. `bias` is an additive (B, 1, 1, N)
key bias (ToMe's log-size term) or None; `rotate` applies a rotary embedding to the patch rows of q
and k (the first `n_prefix` rows are never rotated), or is None.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedModelError
from . import slicing


@dataclass
class HeadWeights:
    """A block's attention as head-sliceable weights: q/k/v each (A, D), out (D, A), A = heads * head_dim."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    out: torch.Tensor
    num_heads: int
    head_dim: int


@dataclass
class Attended:
    """One attention forward with its queries, keys and values: q, k (B, heads, N, head_dim) after any q/k
    normalisation, before scaling; `logit_fn(q_rows, k)` gives the logits the softmax saw; v as attended.
    `out` is None for a probe (q and k only, the output left to `from_weights`)."""

    out: torch.Tensor | None
    q: torch.Tensor
    k: torch.Tensor
    logit_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    v: torch.Tensor | None = None


class AttentionView(abc.ABC):
    """One attention module seen through its family's declared layout."""

    calls_out_linear = True  # whether the module's own forward calls `out_linear` as a module (hooks fire)

    def __init__(self, module: nn.Module):
        self.module = module

    @property
    @abc.abstractmethod
    def num_heads(self) -> int: ...

    @property
    @abc.abstractmethod
    def width(self) -> int:
        """heads * head_dim: the width of q, k, v and of the concatenated head outputs."""

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads

    @abc.abstractmethod
    def weights(self) -> HeadWeights: ...

    @abc.abstractmethod
    def out_linear(self) -> nn.Linear:
        """The projection whose input is the concatenated head outputs (B, N, heads*head_dim)."""

    @abc.abstractmethod
    def attend(self, h: torch.Tensor, bias=None, rotate=None, n_prefix: int = 0) -> Attended: ...

    # The attention split at its softmax weights, for a strategy that decides from a block's attention map
    # before the block's output is formed (MCTF's one-step-ahead attention): `probe` computes q and k
    # only; `from_weights` then forms the output from given softmax weights and the values of (possibly
    # merged) tokens.
    @abc.abstractmethod
    def probe(self, h: torch.Tensor, bias=None, rotate=None, n_prefix: int = 0) -> Attended:
        """q, k and the logit function of the attention on normed tokens `h` (B, N, d); `out` and `v` are None."""

    @abc.abstractmethod
    def from_weights(self, h: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The attention output for tokens `h` (B, N, d) given softmax weights (B, heads, N, N)."""

    @abc.abstractmethod
    def sliced(self, heads: torch.Tensor | None) -> nn.Module:
        """A module keeping `heads` (sorted indices); None: an equivalent module whose forward calls
        `out_linear` (the module itself when its forward already does)."""

    @abc.abstractmethod
    def head_entries(self, heads: torch.Tensor) -> list:
        """(tensor, 'rows'|'cols', indices, is_weight) of every parameter entry the `heads` own: their q/k/v
        rows (weights and biases) and their output-projection columns."""


def _dropout_p(module, drop) -> float:
    p = drop.p if isinstance(drop, nn.Dropout) else float(drop or 0.0)
    return p if module.training else 0.0


def _scaled_logits(scale: float, bias):
    def logit_fn(q, k):
        logits = (q * scale) @ k.transpose(-2, -1)
        return logits if bias is None else logits + bias

    return logit_fn


def _rotated(t: torch.Tensor, rotate, n_prefix: int) -> torch.Tensor:
    if rotate is None:
        return t
    return torch.cat([t[:, :, :n_prefix], rotate(t[:, :, n_prefix:])], dim=2).type_as(t)


_FORWARD_CLASSES: dict[type, type] = {}


def _linear_rows(linear: nn.Linear, rows: torch.Tensor) -> list:
    out = [(linear.weight, "rows", rows, True)]
    if linear.bias is not None:
        out.append((linear.bias, "rows", rows, False))
    return out


def _fused_rows(heads: torch.Tensor, head_dim: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(channels of `heads` in q, k or v; their rows in a fused (3 * width) projection)."""
    ch = slicing.head_channels(heads, head_dim)
    return ch, torch.cat([ch, ch + width, ch + 2 * width])


def _with_forward(cls: type, forward) -> type:
    if cls not in _FORWARD_CLASSES:
        _FORWARD_CLASSES[cls] = type(f"HeadPruned{cls.__name__}", (cls,), {"forward": forward, "__module__": __name__})
    return _FORWARD_CLASSES[cls]


class QkvAttentionView(AttentionView):
    """q/k/v from a fused `qkv` Linear or three Linears, heads concatenated, then an output Linear.

    `qkv` names the fused projection, or `q`, `k`, `v` name the three; `out` the output Linear;
    `heads`, `scale` and `dropout` the attributes holding the head count, the logit scale (absent:
    head_dim ** -0.5) and the attention dropout (an `nn.Dropout` or a float). `pruned_forward`, when
    given, replaces the forward of a head-sliced copy whose own forward assumes the full width."""

    def __init__(self, module, *, qkv: str | None = None, q: str = "q_proj", k: str = "k_proj", v: str = "v_proj",
                 out: str = "proj", heads: str = "num_heads", scale: str = "scale", dropout: str = "attn_drop",
                 pruned_forward=None):
        super().__init__(module)
        self.qkv, self.qkv_names, self.out = qkv, (q, k, v), out
        self.heads_attr, self.scale_attr, self.dropout_attr = heads, scale, dropout
        self.pruned_forward = pruned_forward
        for name in ((qkv,) if qkv else (q, k, v)) + (out,):
            if not isinstance(getattr(module, name, None), nn.Linear):
                raise UnsupportedModelError(f"{type(module).__name__}.{name} is not an nn.Linear")

    @property
    def num_heads(self) -> int:
        return int(getattr(self.module, self.heads_attr))

    @property
    def width(self) -> int:
        if self.qkv:
            return getattr(self.module, self.qkv).out_features // 3
        return getattr(self.module, self.qkv_names[0]).out_features

    def out_linear(self):
        return getattr(self.module, self.out)

    def weights(self):
        m = self.module
        if self.qkv:
            q, k, v = getattr(m, self.qkv).weight.chunk(3, dim=0)
        else:
            q, k, v = (getattr(m, n).weight for n in self.qkv_names)
        return HeadWeights(q, k, v, self.out_linear().weight, self.num_heads, q.shape[0] // self.num_heads)

    def _fused_bias(self):
        """The fused projection's bias: timm Eva keeps it apart (q, k and v biases, k's a zero buffer)."""
        m = self.module
        q_bias = getattr(m, "q_bias", None)
        return torch.cat((q_bias, m.k_bias, m.v_bias)) if q_bias is not None else getattr(m, self.qkv).bias

    def _project(self, h, heads):
        """q, k, v as (B, heads, N, head_dim)."""
        m = self.module
        B, N, _ = h.shape
        if self.qkv:
            fused = getattr(m, self.qkv)
            if getattr(m, "q_bias", None) is not None:
                qkv = F.linear(h, fused.weight, self._fused_bias())
            else:
                qkv = fused(h)
            return qkv.reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        return tuple(getattr(m, n)(h).reshape(B, N, heads, -1).transpose(1, 2) for n in self.qkv_names)

    def _projection(self, h, which: int) -> torch.Tensor:
        """Projection `which` (0 q, 1 k, 2 v) of `h` alone, as (B, heads, N, head_dim)."""
        B, N, _ = h.shape
        if self.qkv:
            weight, bias = getattr(self.module, self.qkv).weight, self._fused_bias()
            rows = weight.shape[0] // 3
            part = slice(which * rows, (which + 1) * rows)
            out = F.linear(h, weight[part], None if bias is None else bias[part])
        else:
            out = getattr(self.module, self.qkv_names[which])(h)
        return out.reshape(B, N, self.num_heads, -1).transpose(1, 2)

    def _qk(self, q, k, rotate, n_prefix):
        m = self.module
        if getattr(m, "q_norm", None) is not None:
            q, k = m.q_norm(q), m.k_norm(k)
        return _rotated(q, rotate, n_prefix), _rotated(k, rotate, n_prefix)

    def _scale(self, head_dim: int) -> float:
        return float(getattr(self.module, self.scale_attr, head_dim ** -0.5))

    def _dropout(self) -> float:
        return _dropout_p(self.module, getattr(self.module, self.dropout_attr, None))

    def _output(self, heads_out, h):
        """The output Linear (with timm's optional inner norm, gate and dropout) on concatenated head outputs."""
        m = self.module
        out = m.norm(heads_out) if getattr(m, "norm", None) is not None else heads_out
        if getattr(m, "gate", None) is not None:
            out = out * m.gate(h).sigmoid()
        out = self.out_linear()(out)
        return m.proj_drop(out) if getattr(m, "proj_drop", None) is not None else out

    def attend(self, h, bias=None, rotate=None, n_prefix=0):
        B, N, _ = h.shape
        heads = self.num_heads
        q, k, v = self._project(h, heads)
        head_dim = q.shape[-1]
        q, k = self._qk(q, k, rotate, n_prefix)
        if bias is not None:
            bias = bias.to(q.dtype)
        scale = self._scale(head_dim)
        # SDPA's own default scale unless the module uses another: the same rounding as the module's forward
        custom = None if scale == head_dim ** -0.5 else scale
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self._dropout(), scale=custom)
        out = self._output(out.transpose(1, 2).reshape(B, N, heads * head_dim), h)
        return Attended(out, q, k, _scaled_logits(scale, bias), v)

    def probe(self, h, bias=None, rotate=None, n_prefix=0):
        q, k = self._qk(self._projection(h, 0), self._projection(h, 1), rotate, n_prefix)
        if bias is not None:
            bias = bias.to(q.dtype)
        return Attended(None, q, k, _scaled_logits(self._scale(q.shape[-1]), bias))

    def from_weights(self, h, weights):
        B, N, _ = h.shape
        v = self._projection(h, 2)
        out = F.dropout(weights.to(v.dtype), self._dropout()) @ v
        return self._output(out.transpose(1, 2).reshape(B, N, -1), h)

    def head_entries(self, heads):
        m = self.module
        ch, fused = _fused_rows(heads, self.head_dim, self.width)
        entries = []
        if self.qkv:
            entries += _linear_rows(getattr(m, self.qkv), fused)
            for name in ("q_bias", "v_bias"):  # timm Eva keeps the fused biases apart
                if isinstance(getattr(m, name, None), nn.Parameter):
                    entries.append((getattr(m, name), "rows", ch, False))
        else:
            for name in self.qkv_names:
                entries += _linear_rows(getattr(m, name), ch)
        return entries + [(self.out_linear().weight, "cols", ch, True)]

    def sliced(self, heads):
        if heads is None:
            return self.module
        m = self.module
        hd, width = self.head_dim, self.width
        ch = slicing.head_channels(heads, hd)
        new = slicing.shell(m)
        if self.qkv:
            setattr(new, self.qkv, slicing.sliced_linear(getattr(m, self.qkv), rows=torch.cat([ch, ch + width, ch + 2 * width])))
        else:
            for name in self.qkv_names:
                setattr(new, name, slicing.sliced_linear(getattr(m, name), rows=ch))
        for name in ("q_bias", "v_bias"):  # EvaAttention keeps the fused projection's biases apart
            if isinstance(getattr(m, name, None), torch.Tensor):
                setattr(new, name, slicing.parameter(getattr(m, name), getattr(m, name).index_select(0, ch)))
        if isinstance(getattr(m, "k_bias", None), torch.Tensor):
            new._buffers["k_bias"] = m.k_bias.index_select(0, ch)
        setattr(new, self.out, slicing.sliced_linear(self.out_linear(), cols=ch))
        if getattr(m, "gate", None) is not None:
            new.gate = slicing.sliced_linear(m.gate, rows=ch)
        if hasattr(m, "norm"):
            new.norm = slicing.sliced_norm(m.norm, ch)
        setattr(new, self.heads_attr, len(heads))
        if hasattr(m, "attn_dim"):
            new.attn_dim = len(heads) * hd
        if self.pruned_forward is not None:  # the module's own forward assumes its width equals the block's
            new.__class__ = _with_forward(type(m), self.pruned_forward)
        return new


class InProjAttentionView(AttentionView):
    """A fused `in_proj_weight` (3A, D) and an `out_proj` Linear: open_clip `Attention`,
    `nn.MultiheadAttention` (batch first, no kdim/vdim, bias_k or add_zero_attn) and the sliced stand-ins."""

    def __init__(self, module):
        super().__init__(module)
        if isinstance(module, nn.MultiheadAttention):
            if not module._qkv_same_embed_dim or module.bias_k is not None or module.add_zero_attn:
                raise UnsupportedModelError("nn.MultiheadAttention with kdim/vdim, bias_k or add_zero_attn is not supported")
            if not module.batch_first:
                raise UnsupportedModelError("sequence-first nn.MultiheadAttention is not supported; use batch_first=True")
            self.calls_out_linear = False  # its fused forward reads out_proj's weight without calling it
        if getattr(module, "in_proj_weight", None) is None or not isinstance(getattr(module, "out_proj", None), nn.Linear):
            raise UnsupportedModelError(f"{type(module).__name__} has no in_proj_weight / out_proj")

    @property
    def num_heads(self):
        return int(self.module.num_heads)

    @property
    def width(self):
        return self.module.in_proj_weight.shape[0] // 3

    def out_linear(self):
        return self.module.out_proj

    def weights(self):
        q, k, v = self.module.in_proj_weight.chunk(3, dim=0)
        return HeadWeights(q, k, v, self.module.out_proj.weight, self.num_heads, q.shape[0] // self.num_heads)

    def _projection(self, h, which: int) -> torch.Tensor:
        """Projection `which` (0 q, 1 k, 2 v) of `h` alone, as (B, heads, N, head_dim)."""
        B, N, _ = h.shape
        weight, bias = self.module.in_proj_weight, self.module.in_proj_bias
        rows = weight.shape[0] // 3
        part = slice(which * rows, (which + 1) * rows)
        out = F.linear(h, weight[part], None if bias is None else bias[part])
        return out.reshape(B, N, self.num_heads, -1).transpose(1, 2)

    def _dropout(self) -> float:
        attn = self.module
        drop = getattr(attn, "attn_drop", None)
        return _dropout_p(attn, drop if isinstance(drop, nn.Dropout) else getattr(attn, "dropout", 0.0))

    def _no_rotary(self, rotate) -> None:
        if rotate is not None:
            raise UnsupportedModelError(f"rotary embeddings with attention module {type(self.module).__name__} are not supported")

    def _logits(self, q, k, bias):
        """(q, k, logit_fn): open_clip's scaled cosine attention normalises q and k, `ln_q`/`ln_k` norm them."""
        attn = self.module
        logit_scale = getattr(attn, "logit_scale", None)
        if logit_scale is not None:  # scaled cosine attention (open_clip `scale_cosine_attn`)
            scale = torch.clamp(logit_scale, max=attn.logit_scale_max).exp()
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)

            def logit_fn(qq, kk):
                logits = (qq @ kk.transpose(-2, -1)) * scale
                return logits if bias is None else logits + bias

            return q, k, logit_fn
        if hasattr(attn, "ln_q"):
            q, k = attn.ln_q(q), attn.ln_k(k)
        return q, k, _scaled_logits(q.shape[-1] ** -0.5, bias)

    def _output(self, heads_out):
        """open_clip's optional head scale and inner norm, then the output projection, on (B, heads, N, head_dim)."""
        attn = self.module
        B, _, N, _ = heads_out.shape
        if getattr(attn, "head_scale", None) is not None:
            heads_out = heads_out * attn.head_scale
        out = heads_out.transpose(1, 2).reshape(B, N, -1)
        if hasattr(attn, "ln_inner"):
            out = attn.ln_inner(out)
        out = attn.out_proj(out)
        return attn.out_drop(out) if hasattr(attn, "out_drop") else out

    def attend(self, h, bias=None, rotate=None, n_prefix=0):
        self._no_rotary(rotate)
        attn = self.module
        B, N, _ = h.shape
        heads = self.num_heads
        q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, N, heads, -1).transpose(1, 2) for t in (q, k, v))
        if bias is not None:
            bias = bias.to(q.dtype)
        q, k, logit_fn = self._logits(q, k, bias)
        dropout = self._dropout()
        if getattr(attn, "logit_scale", None) is not None:
            out = F.dropout(logit_fn(q, k).softmax(dim=-1), dropout) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        return Attended(self._output(out), q, k, logit_fn, v)

    def probe(self, h, bias=None, rotate=None, n_prefix=0):
        self._no_rotary(rotate)
        q, k = self._projection(h, 0), self._projection(h, 1)
        if bias is not None:
            bias = bias.to(q.dtype)
        return Attended(None, *self._logits(q, k, bias))

    def from_weights(self, h, weights):
        v = self._projection(h, 2)
        return self._output(F.dropout(weights.to(v.dtype), self._dropout()) @ v)

    def head_entries(self, heads):
        attn = self.module
        ch, fused = _fused_rows(heads, self.head_dim, self.width)
        entries = [(attn.in_proj_weight, "rows", fused, True)]
        if attn.in_proj_bias is not None:
            entries.append((attn.in_proj_bias, "rows", fused, False))
        return entries + [(attn.out_proj.weight, "cols", ch, True)]

    def sliced(self, heads):
        if isinstance(self.module, slicing.InProjAttention):  # pruned again: keep the calling convention it stands in for
            return type(self.module)(self, heads)
        cls = slicing.PrunedMultiheadAttention if isinstance(self.module, nn.MultiheadAttention) else slicing.PrunedAttention
        return cls(self, heads)
