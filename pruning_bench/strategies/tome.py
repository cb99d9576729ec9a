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
from .params import Bool, Choice, Float, Int, seed_param
from .constants import schedule_constant
from .tome_cap import SHORT_MATCH, _merge_limit, _participants, short_match_note


def bipartite_soft_matching(metric: torch.Tensor, r: int, n_prefix: int, participants: torch.Tensor | None = None) -> Merge:
    """Plan merging r tokens of each image from `metric` (B, N, C); returns the `Merge` to apply."""
    B, N, _ = metric.shape
    with torch.no_grad():
        metric = metric / metric.norm(dim=-1, keepdim=True)
        scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
        n_a, n_b = scores.shape[1], scores.shape[2]
        blocked_a = torch.arange(n_a, device=metric.device) * 2 < n_prefix
        blocked_b = torch.arange(n_b, device=metric.device) * 2 + 1 < n_prefix
        if participants is not None:
            participants = participants.to(metric.device)
            blocked_a = blocked_a | ~participants[::2]
            blocked_b = blocked_b | ~participants[1::2]
        scores = scores.masked_fill(blocked_a[None, :, None] | blocked_b[None, None, :], float("-inf"))
        best, best_b = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]
        kept_a = order[:, r:].sort(dim=1).values
        merged_a = order[:, :r]
        into_b = best_b[..., None].gather(1, merged_a)
    front = schedule_constant(_prefix_to_front, (int(n_a) - int(r), int(n_b), int(n_prefix)), metric.device)

    def apply(t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        C = t.shape[-1]
        a, b = t[:, ::2], t[:, 1::2]
        unmerged = a.gather(1, kept_a.expand(-1, -1, C))
        moving = a.gather(1, merged_a.expand(-1, -1, C))
        b = b.scatter_reduce(1, into_b.expand(-1, -1, C), moving, reduce=mode)
        out = torch.cat([unmerged, b], dim=1)
        return out if front is None else out.index_select(1, front)

    return Merge(apply)


def _prefix_to_front(n_unmerged_a: int, n_b: int, n_prefix: int) -> torch.Tensor | None:
    """Permutation moving prefix tokens that sat in set B back to the front (None when there are none).

    With one prefix token (the class token) it sits first in A and stays first, as in the paper.
    Sizes are made plain ints: while fvcore traces, shapes arrive as 0-d tensors, and a set of tensors
    would never contain the positions it holds (the permutation then kept extra tokens)."""
    n_unmerged_a, n_b, n_prefix = int(n_unmerged_a), int(n_b), int(n_prefix)
    b_prefix = n_prefix // 2
    if b_prefix == 0:
        return None
    # prefix token t sits in A at output position t // 2, or in B at position n_unmerged_a + t // 2
    head = [t // 2 if t % 2 == 0 else n_unmerged_a + t // 2 for t in range(n_prefix)]
    taken = set(head)
    rest = [i for i in range(n_unmerged_a + n_b) if i not in taken]
    return torch.tensor(head + rest)


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
        return (0, patches // 2) if knob == "r" else super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        r = self.params["r"]
        if isinstance(r, list) and len(r) > n_layers:
            raise ValueError(f"{self.name}: r has {len(r)} entries but the model has {n_layers} blocks")
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
