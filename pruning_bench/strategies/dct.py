"""dct: frequency-domain token reduction, as in the Fourier Transformer (He et al., Findings of ACL 2023).

Neighbouring patch tokens are strongly correlated, so along the token axis most of a sequence's energy
sits in its low frequencies. At the exit of each block the patch tokens are taken to the frequency
domain with an orthonormal DCT-II over the token axis (each channel separately), the r highest
frequencies are dropped, and an orthonormal inverse DCT of the shorter length brings back T - r
tokens: a smooth resampling of the sequence that removes tokens without deciding which ones. No
attention is read and no token is ranked; the reduction is the same fixed linear map for every image.

As in the timm patch of Westlake-AI/OpenToMe (`opentome/timm/dct.py`, `opentome/tome/dct.py`):
- every block with r > 0 reduces, after its MLP (placement "exit": the block's output is what is
  reduced, so the last block's reduction only shortens the final sequence);
- the class token is set aside and never transformed; r is capped at T // 2 of the T patch tokens;
- `r` is an int or a per-block list; an int is spread over the blocks by ToMe's `parse_r` with
  `inflect` (OpenToMe's evaluation uses inflect -0.5 and, for its default of 98 tokens removed on
  196 patches, r=9 with the first block's 13 lowered to 8; r=[8, 12, 11, 10, 10, 9, 8, 7, 7, 6, 5, 5]
  reproduces it exactly).
Departures: the DCT pair is one (T - r, T) matrix built once per token count (theirs runs two FFTs),
computed in the tokens' dtype or float32 if narrower (theirs always casts to float32): the same result to
rounding. The others only matter on models their patch does not handle: every prefix token (class token,
registers, distillation token) is set aside, where theirs sets aside the class token only; the block keeps
its layer scale, which their block forward drops; on rotary-position families (EVA) each resampled token
takes the rotary row of the patch token under its centre. Token sizes are not tracked (a resampled token
is not a count of patches), so average pooling weighs every token alike, as theirs does.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from ..registry import register_strategy
from .base import TokenStrategy
from .constants import schedule_constant
from .params import check_r_entries, Float, Int, r_range


def parse_r(r: int | list[int], inflect: float, n_layers: int) -> list[int]:
    """Tokens removed per block: a list is padded with zeros; an int runs linearly from r (1 - inflect)
    down (or up) to r (1 + inflect), truncated to ints, so inflect 0 is a constant r (ToMe's schedule)."""
    if isinstance(r, list):
        return list(r) + [0] * (n_layers - len(r))
    first = int(r * (1.0 - inflect))
    if n_layers == 1:
        return [first]
    step = (2 * r - 2 * first) / (n_layers - 1)
    return [int(first + step * i) for i in range(n_layers)]


def truncation_matrix(tokens: int, kept: int) -> torch.Tensor:
    """(kept, tokens) float64: inverse orthonormal DCT of length `kept` after the first `kept` coefficients
    of the orthonormal DCT-II of length `tokens`. Built in numpy: a constant of the shapes, so a MAC count
    (fvcore traces torch ops) sees only the transform each forward applies, cached or not."""
    def dct_matrix(n: int) -> np.ndarray:  # row k: frequency k sampled at the n token centres
        k = np.arange(n, dtype=np.float64)[:, None]
        i = np.arange(n, dtype=np.float64)[None, :]
        basis = np.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
        basis[0] /= math.sqrt(2.0)
        return basis

    return torch.from_numpy(dct_matrix(kept).T @ dct_matrix(tokens)[:kept])


def _matrix_in(tokens: int, kept: int, dtype_name: str) -> torch.Tensor:
    return truncation_matrix(tokens, kept).to(getattr(torch, dtype_name))


def _sample_positions(tokens: int, kept: int, n_prefix: int) -> torch.Tensor:
    """Prefix positions, then the patch token under each resampled token's centre."""
    centres = (torch.arange(kept, dtype=torch.float64) + 0.5) * tokens / kept
    return torch.cat([torch.arange(n_prefix), n_prefix + centres.floor().long()])


class LowPassResample:
    """The reduction: prefix tokens unchanged, the patch tokens resampled by the cached truncation matrix.

    Linear, so features and source maps go through the same `apply`; rotary rows are placed (`rotary_rows`)."""

    def __init__(self, tokens: int, kept: int, n_prefix: int):
        self.tokens, self.kept, self.n_prefix = tokens, kept, n_prefix

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        work = torch.promote_types(t.dtype, torch.float32)
        matrix = schedule_constant(_matrix_in, (self.tokens, self.kept, str(work).removeprefix("torch.")), t.device)
        body = torch.matmul(matrix, t[:, self.n_prefix:].to(work)).to(t.dtype)
        return torch.cat([t[:, :self.n_prefix], body], dim=1)

    def reduce_features(self, x, size):
        return self.apply(x), None

    def rotary_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rotary rows (B, N, R) of the resampled tokens: output token i samples the band-limited sequence at
        (i + 1/2) T / (T - r) on the token axis, so it takes the row of the patch token found there (a blend
        of (cos, sin) rows would not be a rotation)."""
        index = schedule_constant(_sample_positions, (self.tokens, self.kept, self.n_prefix), rows.device)
        return rows.index_select(1, index)


@register_strategy("dct")
class Dct(TokenStrategy):
    param_spec = {
        "r": Int(9, "highest-frequency tokens removed at each block's exit", low=0, per_block=True),
        "inflect": Float(-0.5, "how an int r is spread over the blocks: -1 decreasing, 0 constant, +1 increasing",
                         low=-1.0, high=1.0),
    }
    placement = "exit"
    example_params = {"r": 6}
    keep_all_params = {"r": 0}
    compute_knob = "r"

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return r_range(knob, patches) or super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        r = self.params["r"]
        check_r_entries(r, n_layers, self.name)
        if not any(parse_r(r, self.params["inflect"], n_layers)):
            warnings.warn(f"{self.name}: r={r} removes no token in any block; the model runs unchanged",
                          UserWarning, stacklevel=4)

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        r = parse_r(self.params["r"], self.params["inflect"], n_layers)[layer]
        patches = n_tokens - n_prefix
        if r <= patches // 2:
            return n_tokens - r, None
        return n_tokens - patches // 2, (f"r={r} at block {layer} is more than half of the {patches} patch tokens "
                                         f"present; capped to {patches // 2}")

    def reduce(self, layer, x, probe, n_prefix, n_out):
        return LowPassResample(int(x.shape[1]) - n_prefix, n_out - n_prefix, n_prefix)

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        return (n_out - n_prefix) * (n_tokens - n_prefix) * dims.width  # the (T - r, T) matrix on every channel
