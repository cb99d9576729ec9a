"""ats: Adaptive Token Sampling (Fayyaz et al., ECCV 2022), parameter-free, a different token count per image.

In each block of `prune_layers` (default 3, 6, 9: the 4th, 7th and 10th block, Haurum et al.'s placement
and reference, JoakimHaurum/TokenReduction `models/ats.py`), after attention and before the MLP (the reference
samples inside its attention module, keeping only the sampled rows of the attention output and of the
residual: the `attention` placement): every patch token gets the
significance score sum over heads of (class-token attention x norm of its value vector), normalised to
sum to 1 (plus 1e-6 in the denominator, as the reference); its cumulative sum is a CDF over the tokens.
K fixed points 1/(2K), 3/(2K), ... (`torch.arange` as the reference builds them) are each mapped to the
token whose CDF value is nearest (inverse transform sampling); the distinct tokens sampled are kept, in
their original order, with the class token and any register tokens. Tokens sampled twice are kept once,
so an image whose attention is peaked keeps fewer tokens than one whose attention is spread: the count
differs per image, at most K. K at the s-th listed block (s = 0, 1, ...) is
`int(keep_rate ** (s + 1) * P) + 1`, P the patch count of the input (the reference's rule). ViT-B/16
with the defaults: at most 137, 96, 67 patch tokens after blocks 3, 6, 9.

Padding tokens of earlier stages have zero attention and their CDF values are pushed past 1 (+0.1, as
the reference), so they are never the nearest. Departures, none of which changes a result beyond float
rounding at the reference's settings: the distance |step - CDF| is taken directly where the reference
calls `torch.cdist` (which may go through a matrix product and round differently on exact ties); a
stage whose K is at least the number of patch tokens that can reach it keeps every token (the contract's
no-op, with a warning) where the reference would still sample; a sampled padding position (possible only
if every score is ~0) is dropped rather than kept.
"""
from __future__ import annotations

import warnings

import torch

from ..registry import register_strategy
from .base import AttentionProbe
from .params import Blocks, check_layers_fit, Float, keep_rate_range
from .per_image import PaddedSelection, PerImageStrategy, packed

EPS = 1e-6  # the reference's normaliser guard
PADDING_SHIFT = 0.1  # the reference pushes the CDF of padding tokens this far


def sample_steps(k: int, dtype: torch.dtype, device=None) -> torch.Tensor:
    """The reference's fixed sampling points for a sample count `k` (their exact arange, so K-1 or K points)."""
    return torch.arange(1 / (2 * k), (2 * k - 1) / (2 * k), 2 / (2 * k), dtype=dtype, device=device)


def significance(probe: AttentionProbe, n_prefix: int) -> torch.Tensor:
    """(B, P) class-attention x value-norm scores of the patch-side tokens, summed over heads."""
    logits = probe.logit_fn(probe.q[:, :, :1], probe.k)
    attention = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)[:, :, 0]
    value_norms = probe.v.norm(dim=-1).to(attention.dtype)
    return (attention[..., n_prefix:] * value_norms[..., n_prefix:]).sum(dim=1)


def ats_selection(score: torch.Tensor, steps: torch.Tensor, n_prefix: int, padding: torch.Tensor | None,
                  width: int) -> PaddedSelection:
    """Sample patch tokens by the inverse CDF of `score` (B, P) at `steps` (K,); keep each distinct one.

    `padding` (B, P) marks padding tokens (or None); `width` caps the padded selection (static)."""
    normed = score / (score.sum(dim=-1, keepdim=True) + EPS)
    cdf = normed.cumsum(dim=1)
    if padding is not None:
        cdf = cdf + PADDING_SHIFT * padding.to(cdf.dtype)
    nearest = (steps.to(cdf.dtype)[None, :, None] - cdf[:, None, :]).abs().argmin(dim=-1)  # (B, K)
    nearest = nearest.sort(dim=1).values
    first = torch.ones_like(nearest[:, :1], dtype=torch.bool)
    distinct = torch.cat([first, nearest[:, 1:] != nearest[:, :-1]], dim=1)
    chosen = packed(nearest + n_prefix, distinct)
    B = score.shape[0]
    prefix = torch.arange(n_prefix, device=score.device).expand(B, n_prefix)
    index = torch.cat([prefix, chosen.index[:, :width]], dim=1)
    valid = torch.cat([torch.ones_like(prefix, dtype=torch.bool), chosen.valid[:, :width]], dim=1)
    return PaddedSelection(index, valid)


@register_strategy("ats")
class ATS(PerImageStrategy):
    param_spec = {
        "prune_layers": Blocks([3, 6, 9], "the blocks that sample"),
        "keep_rate": Float(0.7, "at the s-th listed block at most int(keep_rate^(s+1) x P) + 1 samples, P the "
                                "input's patch count", low=0.0, high=1.0, low_open=True),
    }
    needs_class_token = True
    compute_knob = "keep_rate"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}
    keep_all_params = {"prune_layers": [1, 2], "keep_rate": 1.0}

    def _check(self):
        self._patches = None

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        if knob == "keep_rate":
            return keep_rate_range(patches)
        return super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        layers = self.params["prune_layers"]
        check_layers_fit("prune_layers", layers, n_layers, self.name)
        if self.params["keep_rate"] >= 1.0:
            warnings.warn(f"{self.name}: keep_rate=1.0 samples at least every token; the model runs unchanged",
                          UserWarning, stacklevel=4)

    # ------------------------------------------------------------ schedule (static: never the batch's padding)

    def sample_count(self, stage: int) -> int:
        return int(self.params["keep_rate"] ** (stage + 1) * self._patches) + 1

    def widths(self) -> dict[int, int | None]:
        """Per listed block: the most patch tokens it keeps (its number of sampling points), or None when that
        is at least what can reach it (the block keeps every token)."""
        out, reaching = {}, self._patches
        for stage, layer in enumerate(self.params["prune_layers"]):
            points = len(sample_steps(self.sample_count(stage), torch.float64))
            out[layer] = points if points < reaching else None
            reaching = min(reaching, points)
        return out

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        if layer == 0:
            self._patches = n_tokens - n_prefix
        if layer not in self.params["prune_layers"]:
            return n_tokens, None
        width = self.widths()[layer]
        if width is None:
            return n_tokens, (f"keep_rate={self.params['keep_rate']} samples at least every patch token that can "
                              f"reach block {layer}; nothing is pruned there")
        return n_prefix + min(width, n_tokens - n_prefix), None

    def reduces_at(self, layer):
        return layer in self.params["prune_layers"] and self.widths()[layer] is not None

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        return n_tokens * dims.attn_dim  # the class token's attention logits, per head

    def reduce(self, layer, x, probe, n_prefix, n_out, mask=None):
        stage = self.params["prune_layers"].index(layer)
        score = significance(probe, n_prefix)
        steps = sample_steps(self.sample_count(stage), score.dtype, score.device)
        padding = None if mask is None else ~mask[:, n_prefix:]
        return ats_selection(score, steps, n_prefix, padding, x.shape[1] - n_prefix)
