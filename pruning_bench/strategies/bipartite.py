"""ToMe's bipartite split, shared by tome and the methods that build on it (tofu, mctf, ppt).

Tokens alternate into sets A (even positions) and B (odd positions); a method scores every A-B
pair, each A token proposes its best B token, and the r strongest proposals move. This module only
holds the split and the bookkeeping (which A tokens stay, which move into which B token, where the
prefix tokens go); what "move" means (average, MLERP, drop, attention-weighted average) is up to the
method. Prefix tokens (class token, registers) never move; with registers, those that sat in B are put
back at the front, as tome does.
"""
from __future__ import annotations

import functools

import torch

from .constants import schedule_constant


def blocked_pairs(n_tokens: int, n_prefix: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Bool masks over A rows and B columns that are prefix tokens (never matched)."""
    n_a, n_b = (n_tokens + 1) // 2, n_tokens // 2
    rows = torch.arange(n_a, device=device) * 2 < n_prefix
    cols = torch.arange(n_b, device=device) * 2 + 1 < n_prefix
    return rows, cols


def cosine_scores(metric: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """(B, n_a, n_b) cosine similarity of A tokens to B tokens, -inf where a prefix token is involved."""
    metric = metric / metric.norm(dim=-1, keepdim=True)
    scores = metric[:, ::2] @ metric[:, 1::2].transpose(1, 2)
    return mask_prefix(scores, n_prefix, metric.shape[1])


def mask_prefix(scores: torch.Tensor, n_prefix: int, n_tokens: int) -> torch.Tensor:
    rows, cols = blocked_pairs(n_tokens, n_prefix, scores.device)
    return scores.masked_fill(rows[None, :, None] | cols[None, None, :], float("-inf"))


def max_moves(n_tokens: int, n_prefix: int) -> int:
    """The most tokens one bipartite step can remove."""
    return (n_tokens - n_prefix) // 2


def plan_moves(r_param, r: int, layer: int, n_tokens: int, n_prefix: int) -> tuple[int, str | None]:
    """(tokens leaving the block, clamp note) for `r` moves in block `layer`; `r_param` is the strategy's
    whole `r` (an int or a per-block list), to say when no block moves anything."""
    if r == 0:
        none_anywhere = not any(r_param) if isinstance(r_param, list) else r_param == 0
        return n_tokens, ("r=0 in every block merges nothing; the model runs unchanged" if none_anywhere else None)
    limit = max_moves(n_tokens, n_prefix)
    if r > limit:
        return n_tokens - limit, f"r={r} at block {layer} exceeds the {limit} merges possible with {n_tokens} tokens; clamped to {limit}"
    return n_tokens - r, None


class BipartitePlan:
    """Which A tokens stay (`kept_a`, in order), which move (`moved_a`) into which B token (`into_b`)."""

    def __init__(self, scores: torch.Tensor, r: int, n_prefix: int):
        best, best_b = scores.max(dim=-1)
        order = best.argsort(dim=-1, descending=True)[..., None]
        self.kept_a = order[:, r:].sort(dim=1).values
        self.moved_a = order[:, :r]
        self.into_b = best_b[..., None].gather(1, self.moved_a)
        n_a, n_b = int(scores.shape[1]), int(scores.shape[2])  # plain ints, also while fvcore traces
        # made once per device: a per-forward host-to-device copy would synchronise a GPU in every block
        self.front = schedule_constant(prefix_to_front, (int(n_a) - int(r), int(n_b), int(n_prefix)), scores.device)

    def split(self, t: torch.Tensor):
        """(A tokens that stay, A tokens that move, B tokens) of t (B, N, C)."""
        C = t.shape[-1]
        a, b = t[:, ::2], t[:, 1::2]
        return a.gather(1, self.kept_a.expand(-1, -1, C)), a.gather(1, self.moved_a.expand(-1, -1, C)), b

    def index(self, C: int) -> torch.Tensor:
        return self.into_b.expand(-1, -1, C)

    def join(self, kept: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = torch.cat([kept, b], dim=1)
        return out if self.front is None else out.index_select(1, self.front)


def prefix_to_front(n_kept_a: int, n_b: int, n_prefix: int) -> torch.Tensor | None:
    """Permutation moving prefix tokens that sat in B back to the front (None when there are none)."""
    return _prefix_to_front(int(n_kept_a), int(n_b), int(n_prefix))  # shapes are 0-d tensors while tracing


@functools.lru_cache(maxsize=256)
def _prefix_to_front(n_kept_a: int, n_b: int, n_prefix: int) -> torch.Tensor | None:
    if n_prefix // 2 == 0:
        return None
    head = [t // 2 if t % 2 == 0 else n_kept_a + t // 2 for t in range(n_prefix)]
    taken = set(head)
    return torch.tensor(head + [i for i in range(n_kept_a + n_b) if i not in taken])
