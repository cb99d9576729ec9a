"""tome: Token Merging (Bolya et al., ICLR 2023), r tokens merged in every block.

Bipartite soft matching on the block's keys (mean over heads): tokens alternate into sets A and B,
each A token proposes its most cosine-similar B token, the r strongest proposals merge by a
size-weighted average. Prefix tokens are never merged. The block output lists the unmerged A tokens
(in order) and then B, as in the paper's implementation, so schedules and results line up with it.

`match_fraction` < 1 lets only a seeded random share of the tokens take part in matching (the same
share for every image, so a run is reproducible and batch-size invariant); r is then also capped by
the participating A tokens; `on_short_match` (`cap` or `raise`, see `tome_cap.py`) says what happens
when that share cannot supply r merges, and `h.stats()["merges_per_layer"]` holds the merges done.
"""
from __future__ import annotations

import warnings

import torch

from ..registry import register_strategy
from .base import Merge, TokenStrategy, bipartite_macs
from .bipartite import BipartitePlan, cosine_scores
from .params import Bool, check_r_entries, Choice, Float, Int, r_range, seed_param
from .tome_cap import SHORT_MATCH, _merge_limit, _participants, short_match_note


def bipartite_soft_matching(metric: torch.Tensor, r: int, n_prefix: int, participants: torch.Tensor | None = None) -> Merge:
    """Plan merging r tokens of each image from `metric` (B, N, C); returns the `Merge` to apply.

    The split and the plan are `bipartite.py`'s; ToMe's "move" is a size-weighted sum into the B token
    (the caller divides by the summed sizes)."""
    with torch.no_grad():
        scores = cosine_scores(metric, n_prefix)
        if participants is not None:  # tokens outside the matching share are never proposed nor chosen
            participants = participants.to(metric.device)
            scores = scores.masked_fill(~participants[::2][None, :, None] | ~participants[1::2][None, None, :],
                                        float("-inf"))
        plan = BipartitePlan(scores, r, n_prefix)

    def apply(t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        unmerged, moving, b = plan.split(t)
        return plan.join(unmerged, b.scatter_reduce(1, plan.index(t.shape[-1]), moving, reduce=mode))

    return Merge(apply)


@register_strategy("tome")
class ToMe(TokenStrategy):
    compute_knob = "r"
    example_params = {"r": 8}
    keep_all_params = {"r": 0}
    param_spec = {
        "r": Int(8, "tokens merged in each block", low=0, per_block=True),
        "prop_attn": Bool(True, "proportional attention (log of token sizes added to the logits)"),
        "match_fraction": Float(1.0, "share of tokens taking part in matching (the seeds' p)", low=0.0, high=1.0,
                                low_open=True),
        "seed": seed_param("draws the matching tokens when match_fraction < 1"),
        "on_short_match": Choice("cap", "what a block that cannot merge r tokens does", choices=SHORT_MATCH),
    }

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return r_range(knob, patches) or super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        r = self.params["r"]
        check_r_entries(r, n_layers, self.name)
        if isinstance(r, list) and len(r) < n_layers:
            warnings.warn(f"{self.name}: r has {len(r)} entries for a {n_layers}-block model; blocks "
                          f"{len(r)}-{n_layers - 1} merge nothing (r=0)", UserWarning, stacklevel=4)
        if not any(self.r_at(layer) for layer in range(n_layers)):
            warnings.warn(f"{self.name}: r=0 in every block merges nothing; the model runs unchanged", UserWarning, stacklevel=4)

    def r_at(self, layer: int) -> int:
        r = self.params["r"]
        if isinstance(r, list):
            return r[layer] if layer < len(r) else 0
        return r

    def _participants(self, layer, n_tokens, n_prefix, device):
        return _participants(n_tokens, n_prefix, self.params["match_fraction"], self.params["seed"], layer, device)

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        note = short_match_note(self, n_tokens, n_prefix, n_layers) if layer == 0 else None
        r = self.r_at(layer)
        if r == 0:
            return n_tokens, note
        limit = _merge_limit(n_tokens, n_prefix, self.params["match_fraction"], self.params["seed"], layer)
        return n_tokens - min(r, limit), note

    def extend_stats(self, stats):
        """Merges really done per block (fewer than r where the match share or the tokens left capped them)."""
        stats["merges_per_layer"] = [a - b for a, b in zip(stats["tokens_per_layer"], stats["mlp_tokens_per_layer"])]
        return stats

    def reduce(self, layer, x, probe, n_prefix, n_out):
        N = int(x.shape[1])
        metric = probe.k.mean(dim=1)
        return bipartite_soft_matching(metric, N - n_out, n_prefix, self._participants(layer, N, n_prefix, x.device))

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        return bipartite_macs(n_tokens, n_prefix, dims.head_dim)

    def uses_size_bias(self):
        return self.params["prop_attn"]
