"""DiffRate's search forward: every token stays in the sequence, pruned and merged ones are masked out of attention.

Used only while the rates are searched (evaluation removes the tokens, `patches/tokens.py`). Each block, as
the authors' training path (`DiffRate/patch/deit.py`, `self.training`): attention with the log-size bias and
their masked softmax (a masked key gets no attention, except from itself, plus their eps), the attention
residual, the tokens sorted by the class token's attention, then the pruning mask (tokens past the kept
count) and the merge (the tokens past the merge count are averaged into their most similar kept token and
stay behind, masked; their sizes are scaled by that similarity and floored at 1), the MLP on every token.
The masks are straight-through: 0/1 forward, the kept-count probabilities' gradient backward.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch

from ..families import Family
from .attention import attention_probe

EPS = 1e-6  # the authors' masked-softmax guard


def softmax_with_policy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The authors' masked softmax: keys with mask 0 are ignored, except by themselves (logits (B, H, N, N))."""
    N = logits.shape[-1]
    policy = mask[:, None, None, :].to(logits.dtype)
    eye = torch.eye(N, dtype=logits.dtype, device=logits.device)[None, None]
    policy = policy + (1.0 - policy) * eye
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp() * policy
    return (weights + EPS / N) / (weights.sum(dim=-1, keepdim=True) + EPS)


class SearchRun:
    """State of one search forward: sizes and masks, and each block's kept-count proxies and their values."""

    def __init__(self, family: Family, proxies):
        self.family, self.proxies, self.n_prefix = family, proxies, family.n_prefix
        self.begin()

    def begin(self):
        self.size = self.mask = None
        self.kept: list[tuple[torch.Tensor, torch.Tensor]] = []

    def block_forward(self, layer: int, block, x: torch.Tensor, args, kwargs) -> torch.Tensor:
        if layer == 0:
            self.begin()
        rope, extra = self.family.split_block_args(args, kwargs)
        if rope is not None or any(a is not None and a is not False for a in extra):
            raise ValueError("diffrate: the rate search supports no rotary embedding or attention mask; give "
                             "prune_kept_num and merge_kept_num")
        B, N, _ = x.shape
        if self.size is None:
            self.size = x.new_ones(B, N, 1)
            self.mask = x.new_ones(B, N)
        layout = self.family.block_layout(block)
        norm1, _, norm2, mlp = layout.parts(block)
        view = self.family.attention_view(block)
        h = norm1(x)
        probe = attention_probe(view, h, self.size.log()[:, None, None, :, 0], None, self.n_prefix)
        attention = softmax_with_policy(probe.logit_fn(probe.q, probe.k), self.mask)
        x = x + layout.attn_residual(block, view.from_weights(h, attention))
        order = _order(attention[:, :, 0, self.n_prefix:].mean(dim=1), self.n_prefix)
        x = x.gather(1, order[..., None].expand_as(x))
        self.size = self.size.gather(1, order[..., None])
        self.mask = self.mask.gather(1, order)
        x = self._compress(layer, x)
        return x + layout.mlp_residual(block, mlp(norm2(x)))

    def _compress(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        prune, merge = self.proxies[layer]
        last = int(self.mask[0].sum())
        prune_kept = prune.kept_number()
        if prune_kept < last:
            self.mask = self.mask * prune.token_mask(last).to(x.dtype)
        mid = min(last, int(prune_kept))
        merge_kept = merge.kept_number()
        self.kept.append((prune_kept, merge_kept))
        if merge_kept < mid:
            kept = int(merge_kept)
            merge_mask = merge.token_mask(mid).to(x.dtype)
            into, node_max = _match(x[:, :mid].detach(), kept, self.n_prefix)
            rest, rest_size = x[:, mid:], self.size[:, mid:]
            x = _merge(x[:, :mid], into, kept, "mean")
            size = self.size[:, :mid]
            size = torch.cat([size[:, :kept], size[:, kept:] * node_max[..., None]], dim=1).clamp(1)
            self.size = torch.cat([_merge(size, into, kept, "sum"), rest_size], dim=1)
            x = torch.cat([x, rest], dim=1)
            self.mask = self.mask * merge_mask
        return x


def _order(cls_attention: torch.Tensor, n_prefix: int) -> torch.Tensor:
    B = cls_attention.shape[0]
    prefix = torch.arange(n_prefix, device=cls_attention.device).expand(B, n_prefix)
    return torch.cat([prefix, cls_attention.argsort(dim=1, descending=True) + n_prefix], dim=1)


def _match(metric: torch.Tensor, kept: int, n_prefix: int):
    metric = metric / metric.norm(dim=-1, keepdim=True)
    similarity = metric[:, kept:] @ metric[:, :kept].transpose(1, 2)
    similarity[..., :n_prefix] = -math.inf
    node_max, into = similarity.max(dim=-1)
    return into[..., None], node_max


def _merge(t: torch.Tensor, into: torch.Tensor, kept: int, mode: str) -> torch.Tensor:
    """The kept tokens with the later ones reduced into them, followed by the later ones (left masked)."""
    dst, src = t[:, :kept], t[:, kept:]
    return torch.cat([dst.scatter_reduce(1, into.expand(-1, -1, t.shape[-1]), src, reduce=mode), src], dim=1)


@contextmanager
def searching(family: Family, run: SearchRun):
    """Blocks run `run.block_forward` inside the block (instance attributes, removed on the way out)."""
    blocks = list(family.blocks)
    for block in blocks:
        family.block_layout(block)  # refuse an unknown block before touching anything
    try:
        for layer, block in enumerate(blocks):
            block.forward = (lambda b, i: lambda x, *a, **k: run.block_forward(i, b, x, a, k))(block, layer)
        yield run
    finally:
        for block in blocks:
            block.__dict__.pop("forward", None)
