"""zero_tprune: Zero-TPrune (Wang, Dedhia & Jha, CVPR 2024, arXiv 2305.17328), training-free token pruning
by importance (a weighted PageRank over the attention graph) and by similarity.

A pruning block (every block but the last by default, or those of `prune_layers`) removes `r` patch-side tokens at its
exit (`placement = "exit"`: the paper's pruning layer sits between blocks and reads the attention of the
block before it, so that block's MLP still sees every token), in the paper's order I' -> S -> I:
- the attention graph: the block's softmax attention A_h (row = query) of every head h, recomputed from
  its queries and keys. Weighted PageRank (WPR) iterates s <- A_h^T s per head (s_i = sum_j A_h[j, i] s_j:
  a token is important when important tokens attend to it). A_h^T is column-stochastic, so a score vector
  summing to 1 keeps summing to 1 and the limit is its stationary distribution. The start is uniform
  (`init="uniform"`, the paper's Zero-TPrune-uni) or gives the class token sqrt(N) times the weight of
  any other token (`init="cls"`, the paper's default for classification), normalised to sum to 1.
- heads combined by the Variance-based Head Filter and Emphasizing Informative Region: a head whose
  score variance lies outside [v_min, v_max] (default [0.01, 0.7]) is left out, and the remaining heads
  are combined by the root mean square of their scores (EIR). The variance is taken of N x s (mean 1, a
  uniform distribution has variance 0; population variance); when every head is filtered out, all are used.
- I'-stage: one WPR iteration ranks the tokens, nothing is pruned.
- S-stage: patch-side tokens sorted by that rank; the less important half (floor(P/2)) is group A, the
  rest group B (the paper's Sequential-U partition). Each A token is matched to its most similar B token
  (cosine similarity of the keys averaged over heads); the `r_s` A tokens with the most similar matches
  are pruned (dropped, never merged). r_s = min(floor(s_fraction x r), floor(P/2)).
- I-stage: WPR runs `iterations` times on the graph of the tokens left (A restricted to them, each
  row renormalised to sum to 1), from the same start, and the r - r_s patch-side tokens with the lowest
  combined score are pruned. Kept tokens stay in their original order; prefix tokens (class token,
  registers) are always kept and vote in the graph.
`iterations` defaults to the paper's schedule: 30 in the first quarter of the blocks, 1 in the last
quarter, 5 between (ViT-B/16: blocks 0-2, 3-8, 9-11), the low ends of the ranges the paper reports
(30-50, 5-10, 1).

What could be checked against code and what follows the paper's text only: the authors' code is not
public. A third party's partial S-stage (MahdiarKhodabakhshi/Zero-TPrune) has the partition modes
(Sequential-U ordering) and a one-step head-averaged attention vote; everything else (WPR, VHF, EIR,
the I' -> S -> I order, matching on keys by cosine similarity, dropping the A side) follows the paper's
text. The paper's text we could read leaves open: the scale on which VHF's variance is taken, the
defaults for where pruning layers go and how many tokens each stage prunes (`r`, `s_fraction` here), and
whether rows are renormalised after the S-stage. Every image keeps the same count (the paper prunes a
fixed top-k). The third-party code scales attention by a temperature before its vote (exp(A / 0.1),
renormalised); the paper's WPR uses the attention as it is, as here.
"""
from __future__ import annotations

import math
import warnings

import torch

from ..registry import register_strategy
from .base import AttentionProbe, DecisionDims, Selection, TokenStrategy, check_choice, check_float, check_int
from .params import Blocks, check_layers, check_layers_fit, Choice, Float, Int

SCHEDULE = (30, 5, 1)  # WPR iterations in the first quarter, middle, last quarter of the blocks


def attention_graph(probe: AttentionProbe) -> torch.Tensor:
    """(B, H, N, N) softmax attention of every head, in at least float32 (row = query, rows sum to 1)."""
    logits = probe.logit_fn(probe.q, probe.k)
    return logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)


def initial_scores(B: int, N: int, cls_first: bool, dtype, device) -> torch.Tensor:
    """(B, N) start of WPR, summing to 1: uniform, or the first token weighted sqrt(N) times the others."""
    s = torch.ones(B, N, dtype=dtype, device=device)
    if cls_first:
        s[:, 0] = math.sqrt(N)
    return s / s.sum(dim=1, keepdim=True)


def weighted_page_rank(graph: torch.Tensor, start: torch.Tensor, iterations: int) -> torch.Tensor:
    """(B, H, N) per-head scores after `iterations` steps of s <- A^T s from `start` (B, N)."""
    s = start[:, None, None, :].expand(-1, graph.shape[1], -1, -1)
    for _ in range(iterations):
        s = s @ graph  # the row vector s^T A is (A^T s)^T: no transposed copy of the graph
    return s[:, :, 0]


def combine_heads(scores: torch.Tensor, v_min: float, v_max: float) -> torch.Tensor:
    """(B, N) from per-head scores (B, H, N): VHF drops heads whose variance of N x s is outside
    [v_min, v_max] (all heads kept when none passes), EIR takes the root mean square of the rest."""
    N = scores.shape[-1]
    variance = (scores * N).var(dim=-1, unbiased=False)
    passes = (variance >= v_min) & (variance <= v_max)
    passes = passes | ~passes.any(dim=1, keepdim=True)
    weight = passes.to(scores.dtype)[..., None]
    return ((scores.square() * weight).sum(dim=1) / weight.sum(dim=1)).sqrt()


def restricted_graph(graph: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The attention graph among the tokens `index` (B, M), each row renormalised to sum to 1."""
    B, H, N, _ = graph.shape
    M = index.shape[1]
    rows = graph.gather(2, index[:, None, :, None].expand(B, H, M, N))
    sub = rows.gather(3, index[:, None, None, :].expand(B, H, M, M))
    return sub / sub.sum(dim=-1, keepdim=True)


def similarity_prune(metric: torch.Tensor, rank: torch.Tensor, n_prefix: int, r_s: int) -> torch.Tensor:
    """S-stage: (B, N - r_s) positions kept, ascending. `rank` (B, N) orders the tokens (higher = more
    important); the less important half of the patch-side tokens (A) is matched to the rest (B) by
    cosine similarity of `metric` (B, N, C), and the r_s A tokens with the most similar matches dropped."""
    B, N = rank.shape
    P = N - n_prefix
    order = rank[:, n_prefix:].argsort(dim=1, stable=True) + n_prefix  # ascending importance
    group_a, group_b = order[:, : P // 2], order[:, P // 2:]
    unit = metric / metric.norm(dim=-1, keepdim=True)
    channels = unit.shape[-1]
    a = unit.gather(1, group_a[..., None].expand(-1, -1, channels))
    b = unit.gather(1, group_b[..., None].expand(-1, -1, channels))
    best = (a @ b.transpose(1, 2)).amax(dim=-1)  # (B, |A|)
    staying = best.argsort(dim=1, descending=True, stable=True)[:, r_s:]  # past the r_s most similar
    stay_a = group_a.gather(1, staying)
    prefix = torch.arange(n_prefix, device=rank.device).expand(B, n_prefix)
    return torch.cat([prefix, stay_a, group_b], dim=1).sort(dim=1).values


def zero_tprune_selection(graph: torch.Tensor, metric: torch.Tensor, n_prefix: int, r_s: int, r_i: int,
                          iterations: int, cls_first: bool, v_min: float, v_max: float) -> Selection:
    """One pruning layer, I' -> S -> I, on the attention graph (B, H, N, N) and key metric (B, N, C)."""
    B, H, N, _ = graph.shape
    index = torch.arange(N, device=graph.device).expand(B, N)
    if r_s > 0:
        start = initial_scores(B, N, cls_first, graph.dtype, graph.device)
        rank = combine_heads(weighted_page_rank(graph, start, 1), v_min, v_max)
        index = similarity_prune(metric, rank, n_prefix, r_s)
        graph = restricted_graph(graph, index)
    M = index.shape[1]
    start = initial_scores(B, M, cls_first, graph.dtype, graph.device)
    score = combine_heads(weighted_page_rank(graph, start, iterations), v_min, v_max)
    top = score[:, n_prefix:].topk(M - n_prefix - r_i, dim=1).indices + n_prefix
    prefix = torch.arange(n_prefix, device=graph.device).expand(B, n_prefix)
    kept = torch.cat([prefix, top], dim=1).sort(dim=1).values
    return Selection(index.gather(1, kept))


@register_strategy("zero_tprune")
class ZeroTPrune(TokenStrategy):
    param_spec = {
        "r": Int(8, "patch-side tokens each pruning block removes (S-stage and I-stage together)", low=0),
        "prune_layers": Blocks(None, "the blocks a pruning layer follows (None: every block but the last)",
                               optional=True),
        "s_fraction": Float(0.5, "share of r the S-stage prunes (floor, at most half the patch tokens); the I-stage "
                                 "prunes the rest"),
        "iterations": Int(None, "WPR iterations of the I-stage (None: the paper's schedule, 30 / 5 / 1 in the first "
                                "quarter / middle / last quarter of the blocks)", low=1, optional=True),
        "init": Choice("cls", "cls: the class token starts with sqrt(N) times any other token's weight; uniform",
                       choices=("cls", "uniform")),
        "v_min": Float(0.01, "heads whose score variance (of N x s) is below it are left out (VHF)", low=0.0,
                       high=float("inf")),
        "v_max": Float(0.7, "heads whose score variance is above it are left out (VHF); must be >= v_min", low=0.0,
                       high=float("inf")),
    }
    compute_knob = "r"
    placement = "exit"  # the paper's pruning layer: between blocks, from the preceding block's attention
    example_params = {"r": 8, "prune_layers": [1, 2], "iterations": 3}
    keep_all_params = {"r": 0, "prune_layers": [1, 2]}

    def _check(self):
        p = self.params
        p["r"] = check_int("r", p["r"], 0, None, self.name)
        if p["prune_layers"] is not None:
            p["prune_layers"] = check_layers("prune_layers", p["prune_layers"], self.name)
        p["s_fraction"] = check_float("s_fraction", p["s_fraction"], 0.0, 1.0, owner=self.name)
        if p["iterations"] is not None:
            p["iterations"] = check_int("iterations", p["iterations"], 1, None, self.name)
        p["init"] = check_choice("init", p["init"], ("cls", "uniform"), self.name)
        p["v_min"] = check_float("v_min", p["v_min"], 0.0, float("inf"), owner=self.name)
        p["v_max"] = check_float("v_max", p["v_max"], p["v_min"], float("inf"), owner=self.name)  # >= v_min
        self.n_layers: int | None = None

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        """r up to the share of the patches each pruning block could remove (one patch-side token always stays)."""
        if knob != "r":
            return super().knob_range(knob, params, patches, depth)
        layers = params.get("prune_layers")
        blocks = len(layers) if layers is not None else max(depth - 1, 1)
        return 0, max((patches - 1) // blocks, 1)

    def check_model(self, n_layers, n_prefix):
        layers = self.params["prune_layers"]
        check_layers_fit("prune_layers", layers, n_layers, self.name)
        if self.params["r"] == 0:
            warnings.warn(f"{self.name}: r=0 removes nothing; the model runs unchanged", UserWarning, stacklevel=4)
        self.n_layers = n_layers

    def prunes_at(self, layer: int) -> bool:
        """Whether a pruning layer follows block `layer`; by default one between every two blocks (none after
        the last: nothing would read what it kept but the output pooling)."""
        layers = self.params["prune_layers"]
        last = (self.n_layers or 12) - 1
        return self.params["r"] > 0 and (layer < last if layers is None else layer in layers)

    def iterations_at(self, layer: int) -> int:
        """WPR iterations of the I-stage in block `layer` (the paper's schedule unless given)."""
        if self.params["iterations"] is not None:
            return self.params["iterations"]
        quarter = (self.n_layers or 12) / 4
        return SCHEDULE[0] if layer < quarter else SCHEDULE[2] if layer >= 3 * quarter else SCHEDULE[1]

    def split(self, removed: int, patches: int) -> tuple[int, int]:
        """(tokens the S-stage prunes, tokens the I-stage prunes) out of `removed`."""
        r_s = min(int(removed * self.params["s_fraction"]), patches // 2)
        return r_s, removed - r_s

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        self.n_layers = n_layers
        if not self.prunes_at(layer):
            return n_tokens, None
        r, limit = self.params["r"], n_tokens - n_prefix - 1  # one patch-side token always stays
        if r > limit:
            return n_tokens - max(limit, 0), (f"r={r} at block {layer} exceeds the {max(limit, 0)} tokens it can "
                                              f"remove; clamped to {max(limit, 0)}")
        return n_tokens - r, None

    def reduce(self, layer, x, probe, n_prefix, n_out):
        N = int(x.shape[1])
        r_s, r_i = self.split(N - n_out, N - n_prefix)
        p = self.params
        return zero_tprune_selection(attention_graph(probe), probe.k.mean(dim=1), n_prefix, r_s, r_i,
                                     self.iterations_at(layer), p["init"] == "cls" and n_prefix > 0,
                                     p["v_min"], p["v_max"])

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims: DecisionDims):
        heads = dims.attn_dim // dims.head_dim
        patches = n_tokens - n_prefix
        r_s, _ = self.split(n_tokens - n_out, patches)
        macs = n_tokens * n_tokens * dims.attn_dim  # the attention logits of every head, recomputed
        if r_s > 0:  # I'-stage (one WPR step) and the A-B key similarity
            macs += heads * n_tokens * n_tokens + (patches // 2) * (patches - patches // 2) * dims.head_dim
        left = n_tokens - r_s
        return macs + self.iterations_at(layer) * heads * left * left
