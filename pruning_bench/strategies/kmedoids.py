"""kmedoids: K-Medoids token clustering as compared by Haurum et al. (TokenReduction `models/kmedoids.py`).

Before each block of `prune_layers` (default 3, 6, 9), that is at the exit of the block before it, as the
authors reduce between blocks, K = ceil(keep_rate * P) medoids are chosen among the P patch-side tokens
and only the medoids are kept (a selection, nothing is averaged):
1. token weight w_i = the attention token i received in the block just run, summed over heads and
   queries (the reference's non-`equal_weight` mode, which needs no training and no random start);
2. the K tokens of largest weight start as medoids;
3. `cluster_iters` times (default 3): every token joins its nearest medoid (Euclidean distance on the
   features), then each cluster's new medoid is its member with the smallest w_i * sum_j d_ij.
   As in the reference, the sum runs over every token j, not only the cluster's members, and an
   empty cluster takes token 0 as its medoid.

Kept medoids stay in their original order (the reference lists them by cluster: the same tokens, and
the blocks after are indifferent to order); a medoid shared by two clusters is kept twice, as in the
reference. The cluster count follows keep_rate's rule (ceil(keep_rate * P)); the reference's single-rate
form keeps int(P0 * keep_rate ** (stage + 1)) of the P0 patches entering the model.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import AttentionProbe
from .params import Int
from .clustering import pairwise_distances
from .prune_once import KEEP_RATE, PRUNE_LAYERS, PruneOnceStrategy


def attention_received(probe: AttentionProbe, n_prefix: int) -> torch.Tensor:
    """(B, P) attention each patch-side token receives, summed over heads and over every query."""
    heads = probe.q.shape[1]
    return probe.attention_rows(slice(None)).sum(dim=1)[:, n_prefix:] * heads


def kmedoids_fit(x: torch.Tensor, weight: torch.Tensor, n_clusters: int, iterations: int) -> torch.Tensor:
    """Medoid positions (B, n_clusters) among the rows of `x` (B, P, C), started from the heaviest `weight` (B, P)."""
    B, P, _ = x.shape
    with torch.no_grad():
        dist = pairwise_distances(x.float())
        cost = (dist * weight[..., None].float()).sum(dim=-1)  # w_i * sum_j d_ij, fixed over iterations
        medoids = weight.topk(n_clusters, dim=1).indices
        clusters = torch.arange(n_clusters, device=x.device)[None, :, None]
        for _ in range(iterations):
            assign = dist.gather(2, medoids[:, None, :].expand(B, P, n_clusters)).argmin(dim=-1)
            member = assign[:, None, :] == clusters  # (B, K, P)
            medoids = torch.where(member, cost[:, None, :], torch.full_like(cost[:, None, :], 1e6 * P)).argmin(dim=-1)
        return medoids


@register_strategy("kmedoids")
class KMedoids(PruneOnceStrategy):
    param_spec = {"keep_rate": KEEP_RATE.with_default(0.7), "prune_layers": PRUNE_LAYERS.with_default([3, 6, 9]),
                  "cluster_iters": Int(3, "assignment / medoid-update rounds after the heaviest-token start", low=0)}
    needs_class_token = False
    placement = "exit"
    budget_params = ()
    compute_knob = "keep_rate"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}
    keep_all_params = {"prune_layers": [1, 2], "keep_rate": 1.0}

    def _check(self):
        self._check_start_layer()

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        patches = n_tokens - n_prefix
        # pairwise distances, plus the full attention map for the attention each token receives
        return patches * patches * (dims.width + 2) + n_tokens * n_tokens * dims.attn_dim

    def reduce(self, layer, x, probe, n_prefix, n_out):
        weight = attention_received(probe, n_prefix)
        medoids = kmedoids_fit(x[:, n_prefix:], weight, n_out - n_prefix, self.params["cluster_iters"])
        return self.selection(n_prefix, medoids + n_prefix)
