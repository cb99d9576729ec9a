"""pitome: Protect Informative Tokens before Merging (Tran et al., NeurIPS 2024).

ToMe's bipartite matching merges whatever pairs are most similar, which in late blocks can fold a
small, unique object into the background. PiToMe first scores every patch token by an energy: its
mean similarity to all tokens, passed through an ELU with a margin (`margin`, `alpha`), so a token
inside a large cluster of look-alikes scores high and an isolated one low. Tokens are sorted by
energy; in the protecting blocks only the 2r highest-energy tokens may merge (alternately into A and
B, every A token into its most similar B token) and the rest are kept as they are.

As in the authors' code (hchautran/PiToMe, `algo/pitome`):
- `ratio` is the share of patch tokens each block keeps: r = floor(T - T * ratio) with T the patch
  tokens present (prefix tokens excluded), so r shrinks as tokens do;
- the first ceil(L / 2) blocks run bipartite matching over all tokens split alternately by energy
  order (no protection), the later blocks protect the low-energy ones;
- the margin falls linearly with depth, m_l = 0.75 - 0.75 * l / L, unless `margin` fixes it;
- the metric is the block's keys averaged over heads, merges are size-weighted averages, and
  attention gets no log-size bias (`prop_attn` False: their timm attention is called without size).
Output order follows theirs: prefix tokens, kept tokens (energy or edge order), merged B tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..registry import register_strategy
from .base import Merge, TokenStrategy
from .params import Bool, Float


def pitome_merge(metric: torch.Tensor, r: int, n_prefix: int, margin: float, alpha: float, protect: bool) -> Merge:
    """Plan merging r patch tokens of each image from `metric` (B, N, C); prefix tokens stay first."""
    with torch.no_grad():
        tokens = F.normalize(metric[:, n_prefix:], p=2, dim=-1)
        B, T, _ = tokens.shape
        sim = tokens @ tokens.transpose(1, 2)
        energy = F.elu(sim - margin, alpha=alpha).mean(dim=-1)
        order = energy.argsort(dim=-1, descending=True)
        if protect:  # only the 2r highest-energy tokens take part; every A token merges
            a, b, kept = order[:, : 2 * r : 2], order[:, 1 : 2 * r : 2], order[:, 2 * r :]
            merged_a = a
            _, into_b = _similarity(sim, a, b).max(dim=-1)
        else:  # bipartite soft matching over all tokens, split alternately in energy order
            a, b = order[:, ::2], order[:, 1::2]
            best, best_b = _similarity(sim, a, b).max(dim=-1)
            edges = best.argsort(dim=-1, descending=True)
            kept, merged_a = a.gather(1, edges[:, r:]), a.gather(1, edges[:, :r])
            into_b = best_b.gather(1, edges[:, :r])

    def apply(t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        C = t.shape[-1]
        body = t[:, n_prefix:]
        take = lambda index: body.gather(1, index[..., None].expand(-1, -1, C))  # noqa: E731
        dst = take(b).scatter_reduce(1, into_b[..., None].expand(-1, -1, C), take(merged_a), reduce=mode)
        return torch.cat([t[:, :n_prefix], take(kept), dst], dim=1)

    return Merge(apply)


def _similarity(sim: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """sim[rows][:, cols] per image: (B, len(rows), len(cols))."""
    B, T, _ = sim.shape
    picked = sim.gather(1, rows[..., None].expand(B, rows.shape[1], T))
    return picked.gather(2, cols[:, None, :].expand(B, rows.shape[1], cols.shape[1]))


@register_strategy("pitome")
class PiToMe(TokenStrategy):
    param_spec = {
        # at most half of the patch tokens can merge in one bipartite step
        "ratio": Float(0.9, "share of patch tokens each block keeps", low=0.5, high=1.0),
        "margin": Float(None, "energy margin m of every block; None: 0.75 - 0.75 l / L by depth", low=-1.0,
                        high=1.0, optional=True),
        "alpha": Float(1.0, "ELU slope below the margin in the energy score", low=0.0, high=math.inf,
                       low_open=True, high_open=True),
        "prop_attn": Bool(False, "proportional attention (log of token sizes added to the logits)"),
    }
    example_params = {"ratio": 0.8}
    keep_all_params = {"ratio": 1.0}
    compute_knob = "ratio"

    def merges(self, n_tokens: int, n_prefix: int) -> int:
        patches = n_tokens - n_prefix
        return math.floor(patches - patches * self.params["ratio"])

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        self._n_layers = n_layers  # the margin schedule and the protecting blocks depend on depth
        if self.params["ratio"] >= 1.0:
            return n_tokens, "ratio=1.0 keeps every token in every block; nothing is merged"
        return n_tokens - self.merges(n_tokens, n_prefix), None

    def margin_at(self, layer: int, n_layers: int) -> float:
        margin = self.params["margin"]
        return 0.75 - 0.75 * (layer / n_layers) if margin is None else margin

    def protects(self, layer: int, n_layers: int) -> bool:
        return layer >= math.ceil(n_layers * 0.5)

    def reduce(self, layer, x, probe, n_prefix, n_out):
        n_layers = self._n_layers
        return pitome_merge(probe.k.mean(dim=1), int(x.shape[1]) - n_out, n_prefix,
                            self.margin_at(layer, n_layers), self.params["alpha"], self.protects(layer, n_layers))

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        return (n_tokens - n_prefix) ** 2 * dims.head_dim  # every patch token's similarity to every other

    def uses_size_bias(self):
        return self.params["prop_attn"]
