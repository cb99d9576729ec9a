"""What ToMe does when the share of tokens in matching cannot supply r merges in a block.

With `match_fraction` p < 1 only a seeded share of the tokens may match, so a block can merge at most
as many tokens as there are participating A tokens (and as many as half the patch tokens in any case).
The schedule of a whole forward follows from the tokens entering block 0, so it is worked out there,
before anything is merged: `cap` merges what is possible and says per block what was done against what
was asked, and how many more tokens then flow through the blocks (which is where MACs grow as p falls);
`raise` refuses the run instead. Kept apart from `tome.py` so the algorithm there stays one screen;
the seeded share of participating tokens and the merge limit it implies live here, so `tome.py` imports
this module and never the other way round.
"""
from __future__ import annotations

import torch

from .bipartite import max_moves
from .constants import schedule_constant

SHORT_MATCH = ("cap", "raise")


def _participants(n_tokens: int, n_prefix: int, fraction: float, seed: int, layer: int, device="cpu") -> torch.Tensor | None:
    """Bool mask (N,) of tokens allowed to match, or None when all are; drawn once per device."""
    return schedule_constant(_draw_participants, (n_tokens, n_prefix, fraction, seed, layer), device)


def _draw_participants(n_tokens: int, n_prefix: int, fraction: float, seed: int, layer: int) -> torch.Tensor | None:
    if fraction >= 1.0:
        return None
    patches = n_tokens - n_prefix
    count = max(1, round(fraction * patches))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    chosen = torch.randperm(patches, generator=generator)[:count] + n_prefix
    mask = torch.zeros(n_tokens, dtype=torch.bool)
    mask[chosen] = True
    return mask


def max_merges(n_tokens: int, n_prefix: int, participants: torch.Tensor | None) -> int:
    """The most tokens one bipartite step can remove."""
    limit = max_moves(n_tokens, n_prefix)
    if participants is None:
        return limit
    in_a, in_b = int(participants[::2].sum()), int(participants[1::2].sum())
    return min(limit, in_a) if in_b else 0


@torch.compiler.assume_constant_result
def _merge_limit(n_tokens: int, n_prefix: int, fraction: float, seed: int, layer: int) -> int:
    """`max_merges` as a plain int the planner branches on: read on the CPU, a constant when compiled."""
    return max_merges(n_tokens, n_prefix, _participants(n_tokens, n_prefix, fraction, seed, layer))


def merge_schedule(strategy, n_tokens: int, n_prefix: int, n_layers: int) -> tuple[list[int], list[int]]:
    """(merges asked, merges possible) per block when `n_tokens` enter block 0; cached per shape."""
    cache = strategy.__dict__.setdefault("_merge_schedules", {})
    key = (n_tokens, n_prefix, n_layers)
    if key not in cache:
        p = strategy.params
        asked, done, n = [], [], n_tokens
        for layer in range(n_layers):
            r = strategy.r_at(layer)
            merges = min(r, _merge_limit(n, n_prefix, p["match_fraction"], p["seed"], layer)) if r else 0
            asked.append(r)
            done.append(merges)
            n -= merges
        cache[key] = (asked, done)
    return cache[key]


def short_match_note(strategy, n_tokens: int, n_prefix: int, n_layers: int) -> str | None:
    """None when every asked merge is possible; else the cap warning, or a ValueError with `raise`."""
    asked, done = merge_schedule(strategy, n_tokens, n_prefix, n_layers)
    if asked == done:
        return None
    short = [i for i, (a, d) in enumerate(zip(asked, done)) if d < a]
    p = strategy.params
    why = f"r={p['r']} with match_fraction={p['match_fraction']} and {n_tokens} tokens entering block 0"
    if p["on_short_match"] == "raise":
        raise ValueError(f"{strategy.name}: on_short_match='raise': {why} cannot supply the merges asked in "
                         f"block(s) {short}: possible {done} vs asked {asked} per block (use on_short_match='cap', "
                         "a smaller r or a larger match_fraction)")
    kept = wanted = 0
    n = m = n_tokens
    for a, d in zip(asked, done):
        kept, wanted = kept + n, wanted + max(m, n_prefix + 1)
        n, m = n - d, m - a
    return (f"{why}: merges clamped in block(s) {short}: done {done} vs asked {asked} per block "
            f"({sum(done)} of {sum(asked)}); tokens summed over the blocks {kept} instead of {wanted} "
            f"({100 * (kept / wanted - 1):+.1f}%), " + ("so MACs rise above those of the schedule asked" if kept > wanted
                                                         else "so MACs are those of the schedule asked (only the "
                                                              "tokens leaving the last block differ)"))
