"""Pieces shared by the clustering reductions (dpc_knn, kmedoids): distances and cluster merging.

Distances are computed as one matrix product (the way `torch.cdist` does for more than 25 points), so
the reduction's work is visible to the FLOP counter, which refuses `cdist` rather than undercount it.
"""
from __future__ import annotations

import torch


def pairwise_distances(x: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (B, P, P) between the rows of `x` (B, P, C), as `torch.cdist(x, x)` computes them."""
    squared = x.pow(2).sum(dim=-1, keepdim=True)
    ones = torch.ones_like(squared)
    left = torch.cat([-2 * x, squared, ones], dim=-1)
    right = torch.cat([x, ones, squared], dim=-1)
    return (left @ right.transpose(1, 2)).clamp_min(0).sqrt()


def gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows `index` (B, M) of `t` (B, N, C)."""
    return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))


class ClusterMerge:
    """Prefix tokens, then one token per cluster: the plain mean of the patch-side tokens assigned to it.

    `assign` (B, P) holds each patch-side token's cluster in [0, n_clusters). The mean is unweighted,
    as in the reference (`equal_weight`), and a cluster's size is the sum of its members' sizes."""

    def __init__(self, assign: torch.Tensor, n_clusters: int, n_prefix: int):
        self.assign, self.n_clusters, self.n_prefix = assign, n_clusters, n_prefix

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        B, _, C = t.shape
        rest = t[:, self.n_prefix:]
        out = rest.new_zeros(B, self.n_clusters, C)
        out = out.scatter_reduce(1, self.assign[..., None].expand(-1, -1, C), rest, reduce=mode, include_self=False)
        return torch.cat([t[:, : self.n_prefix], out], dim=1)

    def reduce_features(self, x, size):
        if size is None:
            size = torch.ones_like(x[..., :1])
        return self.apply(x, "mean"), self.apply(size, "sum")
