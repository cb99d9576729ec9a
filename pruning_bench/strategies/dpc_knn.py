"""dpc_knn: density-peaks clustering with k nearest neighbours (TCFormer's CTM, as compared by Haurum et al.).

Before each block of `prune_layers` (default 3, 6, 9, the reduction locations of Haurum et al.), that is
at the exit of the block before it, as the authors reduce between blocks, the patch-side tokens are
clustered into ceil(keep_rate * P) clusters and each cluster becomes the plain mean of its tokens
(`equal_weight`: the training-free variant, no learned token score):
1. distances d_ij = ||x_i - x_j|| / sqrt(C) between the patch-side tokens;
2. density rho_i = exp(-mean of d_ij^2 over i's `k_neighbors` nearest tokens, itself included);
3. delta_i = distance to the nearest token of higher density (the largest distance for the densest);
4. the tokens with the largest rho_i * delta_i are the cluster centres; every token joins its nearest
   centre, and each centre its own cluster.

Where this differs from the reference (TokenReduction `models/dpcknn.py`): the reference breaks density
ties with random noise of 1e-6 and divides a cluster's sum by its count + 1e-6; here a tie goes to the
earlier token and the mean is exact (the paper's), so results are deterministic. The cluster count
follows keep_rate's rule here (ceil(keep_rate * P) of the P tokens present); the reference's single-rate
form keeps int(P0 * keep_rate ** (stage + 1)) of the P0 patches entering the model (137, 96, 67 against
138, 97, 68 at 0.7 on 196 patches). Clusters are listed in the order of their centres' positions.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .params import Int
from .clustering import ClusterMerge, pairwise_distances
from .prune_once import KEEP_RATE, PRUNE_LAYERS, PruneOnceStrategy


def dpc_knn_assign(x: torch.Tensor, n_clusters: int, k_neighbors: int) -> torch.Tensor:
    """Cluster of each token (B, P) in [0, n_clusters), clusters numbered by their centres' positions."""
    B, P, C = x.shape
    with torch.no_grad():
        dist = pairwise_distances(x.float()) / C**0.5
        nearest = dist.topk(min(k_neighbors, P), dim=-1, largest=False).values
        density = (-(nearest**2).mean(dim=-1)).exp()
        position = torch.arange(P, device=x.device)
        denser = (density[:, None, :] > density[:, :, None]) | (
            (density[:, None, :] == density[:, :, None]) & (position[None, :] < position[:, None])
        )  # denser[b, i, j]: token j outranks token i
        farthest = dist.flatten(1).amax(dim=-1)[:, None, None]
        delta = torch.where(denser, dist, farthest).amin(dim=-1)
        centres = (delta * density).topk(n_clusters, dim=-1).indices.sort(dim=-1).values
        assign = dist.gather(2, centres[:, None, :].expand(B, P, n_clusters)).argmin(dim=-1)
        numbers = torch.arange(n_clusters, device=x.device).expand(B, n_clusters)
        return assign.scatter(1, centres, numbers)


@register_strategy("dpc_knn")
class DpcKnn(PruneOnceStrategy):
    param_spec = {"keep_rate": KEEP_RATE.with_default(0.7), "prune_layers": PRUNE_LAYERS.with_default([3, 6, 9]),
                  "k_neighbors": Int(5, "nearest tokens (itself included) whose distances give a token's density",
                                     low=1)}
    placement = "exit"
    budget_params = ()
    compute_knob = "keep_rate"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}
    keep_all_params = {"prune_layers": [1, 2], "keep_rate": 1.0}

    def _check(self):
        self._check_start_layer()

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        patches = n_tokens - n_prefix
        return patches * patches * (dims.width + 2)  # pairwise distances as one matrix product

    def reduce(self, layer, x, probe, n_prefix, n_out):
        n_clusters = n_out - n_prefix
        assign = dpc_knn_assign(x[:, n_prefix:], n_clusters, self.params["k_neighbors"])
        return ClusterMerge(assign, n_clusters, n_prefix)
