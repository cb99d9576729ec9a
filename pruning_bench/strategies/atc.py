"""atc: Agglomerative Token Clustering (Haurum et al., ECCV 2024; JoakimHaurum/ATC).

ToMe merges in one bipartite step, so a token can only join a partner from the other half, and a
merged token is never merged again within a block. ATC instead builds the clusters bottom-up: in each
block of `prune_layers` (default 3, 6, 9: the 4th, 7th and 10th block), after the attention residual
and before the MLP, as the authors' `Block_ATC` does:
1. the metric is the block's keys averaged over heads; distances are cosine distances 1 - cos between
   the patch-side tokens (prefix tokens never merge);
2. starting from one cluster per token, the two closest clusters are merged, and the merged cluster's
   distance to every other one is updated by the `linkage`: "single" (the smaller of the two
   distances), "complete" (the larger), "average" (their mean weighted by cluster sizes, i.e. the mean
   of all pairwise token distances, the authors' default);
3. this repeats until K clusters are left; each becomes the size-weighted mean of its tokens (sizes add
   up), and later blocks add log(size) to their attention logits (`prop_attn`, on in the authors'
   commands and their off-the-shelf patch).

K at the s-th listed block (s = 0, 1, ...) is int(P * keep_rate ** (s + 1)), P the patch count of the
input: the authors' rule (ViT-B/16 at keep_rate 0.7: 137, 96, 67 patch tokens), at least one.

The authors hand each image's distance matrix to scikit-learn (scipy's linkage); here every image of the
batch runs the same greedy merge loop at once, one merge per step as tensor operations, in float64 as
scipy computes (the distances themselves in the metric's dtype, as theirs). Greedy merging of the closest
pair gives the partition of the scipy dendrogram cut at K clusters for these three linkages (a tie goes to
the pair first in row-major order). Clusters are listed in the order of their first token (the
reference's order is scikit-learn's label order: the same tokens, which the blocks after are
indifferent to). Departures from the code: every prefix token is protected (the reference knows only
the class token); with `prop_attn` off, sizes still weight later merges (the reference then forgets them
after each block, so later means are unweighted; the paper's merge is size-weighted).
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from ..registry import register_strategy
from .base import Merge, TokenStrategy
from .clustering import ClusterMerge
from .params import Blocks, Bool, check_layers_fit, Choice, Float, keep_rate_range

LINKAGES = ("single", "complete", "average")


def cosine_distances(metric: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity (B, P, P) between the rows of `metric` (B, P, C)."""
    normed = F.normalize(metric, dim=-1)
    return 1 - normed @ normed.transpose(1, 2)


def agglomerate(distance: torch.Tensor, n_clusters: int, linkage: str) -> torch.Tensor:
    """Cluster of each token (B, P) in [0, n_clusters) after greedy agglomerative merging on `distance`
    (B, P, P); clusters numbered in the order of their first token.

    A cluster lives on in the row of its first token; rows and columns of absorbed clusters become inf."""
    B, P, _ = distance.shape
    position = torch.arange(P, device=distance.device)
    d = distance.masked_fill(position[:, None] == position[None, :], float("inf"))
    size = torch.ones(B, P, dtype=distance.dtype, device=distance.device)
    owner = position.expand(B, P)
    for _ in range(P - n_clusters):
        closest = d.flatten(1).argmin(dim=1)  # first in row-major order: row < column, d being symmetric
        keep, gone = closest // P, closest % P
        rows = d.gather(1, torch.stack([keep, gone], dim=1)[..., None].expand(B, 2, P))  # (B, 2, P)
        if linkage == "single":
            merged = rows.amin(dim=1)
        elif linkage == "complete":
            merged = rows.amax(dim=1)
        else:  # the size-weighted mean of the two rows (Lance-Williams, as scipy), as one small product
            pair = size.gather(1, torch.stack([keep, gone], dim=1))  # (B, 2)
            merged = (pair[:, None, :] @ rows.masked_fill(rows.isinf(), 0))[:, 0] / pair.sum(dim=1, keepdim=True)
            merged = merged.masked_fill(rows.isinf().any(dim=1), float("inf"))
        is_keep, is_gone = position == keep[:, None], position == gone[:, None]
        merged = merged.masked_fill(is_keep | is_gone, float("inf"))
        # only two rows and two columns change: written in place, so a step reads the matrix once (argmin)
        absorbed = torch.full_like(merged, float("inf"))
        for row, values in ((keep, merged), (gone, absorbed)):
            d.scatter_(1, row[:, None, None].expand(B, 1, P), values[:, None, :])
            d.scatter_(2, row[:, None, None].expand(B, P, 1), values[:, :, None])
        size = size + torch.where(is_keep, size.gather(1, gone[:, None]), torch.zeros_like(size))
        owner = torch.where(owner == gone[:, None], keep[:, None], owner)
    first = owner == position  # a cluster's first token
    number = first.long().cumsum(dim=1) - 1
    return number.gather(1, owner)


@register_strategy("atc")
class ATC(TokenStrategy):
    param_spec = {
        "prune_layers": Blocks([3, 6, 9], "the blocks that cluster, after their attention (the authors' "
                                          "reduction_loc)"),
        "keep_rate": Float(0.7, "the s-th listed block leaves int(P x keep_rate^(s+1)) patch-side clusters, P the "
                                "input's patch count (the authors' reduction_ratio)", low=0.0, high=1.0,
                           low_open=True),
        "linkage": Choice("average", "distance between clusters: single (closest pair), complete (farthest "
                                     "pair), average (mean over pairs)", choices=LINKAGES),
        "prop_attn": Bool(True, "proportional attention (log of token sizes added to the logits)"),
    }
    compute_knob = "keep_rate"
    example_params = {"prune_layers": [1, 2], "keep_rate": 0.5}
    keep_all_params = {"prune_layers": [1, 2], "keep_rate": 1.0}

    def _check(self):
        self._patches = None

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        if knob == "keep_rate":
            return keep_rate_range(patches)
        return super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        layers = self.params["prune_layers"]
        check_layers_fit("prune_layers", layers, n_layers, self.name)
        if self.params["keep_rate"] >= 1.0:
            warnings.warn(f"{self.name}: keep_rate=1.0 keeps every token; the model runs unchanged",
                          UserWarning, stacklevel=4)

    def clusters_at(self, layer: int) -> int | None:
        """Patch-side clusters block `layer` leaves (the authors' rule), or None when it does not cluster."""
        layers = self.params["prune_layers"]
        if layer not in layers:
            return None
        return max(1, int(self._patches * self.params["keep_rate"] ** (layers.index(layer) + 1)))

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        if layer == 0:
            self._patches = n_tokens - n_prefix
        clusters, patches = self.clusters_at(layer), n_tokens - n_prefix
        if clusters is None:
            return n_tokens, None
        if clusters >= patches:
            return n_tokens, (f"keep_rate={self.params['keep_rate']} leaves {clusters} clusters of the {patches} "
                              f"patch tokens present at block {layer}; nothing is merged there")
        return n_prefix + clusters, None

    def reduce(self, layer, x, probe, n_prefix, n_out):
        n_clusters = n_out - n_prefix
        with torch.no_grad():
            metric = probe.k.mean(dim=1)[:, n_prefix:]
            # distances in the metric's dtype, merging in float64, as scikit-learn / scipy do
            exact = torch.float32 if metric.device.type == "mps" else torch.float64
            distance = cosine_distances(metric).to(exact)
            assign = agglomerate(distance, n_clusters, self.params["linkage"])
        return Merge(ClusterMerge(assign, n_clusters, n_prefix).apply)

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        """The cosine similarity of every patch-side pair; average linkage adds one size-weighted mean of two
        distance rows per merge. The merge loop's scans for the closest pair are comparisons, not MACs."""
        patches = n_tokens - n_prefix
        similarity = patches * patches * dims.head_dim
        if self.params["linkage"] != "average":
            return similarity
        return similarity + 2 * patches * (n_tokens - n_out)

    def uses_size_bias(self):
        return self.params["prop_attn"]
