"""gtp: Graph-based Token Propagation (Xu et al., "GTP-ViT", WACV 2024), training-free.

Pruned tokens lose what they carried; GTP hands it on. Once per forward a sparse token graph is
built over the patch tokens entering the first block: each patch linked to its 8 grid neighbours
(spatial) and to its `num_neighbours` most cosine-similar patches (semantic), the union (`Mixed`)
symmetrically normalised, D^-1/2 A D^-1/2. In every block, after the attention residual, the
`num_prop` patch tokens with the lowest score max_h A_h[j, j] * max_h sum_i A_h[i, j] (the paper's
regeneration difficulty times broadcasting ability, the authors' `MixedAttnMax`) are removed and
propagated over the graph to the kept ones: X_kept += alpha * A[kept, prop] @ X_prop. The graph of the
next block is A[kept, kept], not renormalised. With `token_scale` every token carries a scale (1 at
the start, propagated like the features, s_kept += alpha * A[kept, prop] @ s_prop) whose log is added
to the attention logits (proportional attention).

As in the authors' code (Ackesnal/GTP-ViT, `models_v3.py`): the same `num_prop` in every block, the
selection from the block's own attention (proportional bias included, the class token's query row
counted in the column sums), prefix tokens never propagated, and their attention sparsification:
with `sparsity` theta < 1 every block (reducing or not) zeroes, per image and head, the attention
weights below the int(N^2 (1 - theta))-th smallest before A @ V (no renormalisation), and selects from
that map. Its default is their code's 1 (none; their README tunes it between 0.5 and 1 per `num_prop`).
Kept tokens stay in their original order (theirs are ordered by score; no result changes).
"""
from __future__ import annotations

import math
import warnings

import torch

from ..registry import register_strategy
from .base import Selection, TokenStrategy
from .params import Bool, Choice, Float, Int

GRAPHS = ("Mixed", "Spatial", "Semantic")


def spatial_graph(rows: int, cols: int, device=None, dtype=None) -> torch.Tensor:
    """(P, P) 0/1 adjacency of the patch grid: the 8 neighbours of each patch, itself excluded."""
    cells = torch.arange(rows * cols, device=device)
    r, c = cells.div(cols, rounding_mode="floor"), cells % cols
    near = ((r[:, None] - r[None, :]).abs() <= 1) & ((c[:, None] - c[None, :]).abs() <= 1)
    return near.to(dtype) - torch.eye(rows * cols, device=device, dtype=dtype)


def token_graph(patches: torch.Tensor, grid: tuple[int, int], num_neighbours: int, graph_type: str) -> torch.Tensor:
    """(B, P, P) normalised graph over the patch tokens `patches` (B, P, C), as the authors build it."""
    B, P, _ = patches.shape
    eye = torch.eye(P, device=patches.device, dtype=patches.dtype)
    graph = None
    if graph_type != "Spatial":
        unit = patches / patches.norm(dim=-1, keepdim=True)
        similarity = unit @ unit.transpose(1, 2)
        # the num_neighbours + 1 largest similarities of each row (the token itself among them), then minus itself
        threshold = similarity.kthvalue(P - num_neighbours, dim=-1, keepdim=True).values
        graph = (similarity >= threshold).to(patches.dtype) - eye
    if graph_type != "Semantic":
        spatial = spatial_graph(*grid, device=patches.device, dtype=patches.dtype).expand(B, P, P)
        graph = spatial if graph is None else torch.bitwise_or(graph.int(), spatial.int()).to(patches.dtype)
    scale = graph.sum(dim=-1) ** -0.5
    return scale[:, :, None] * graph * scale[:, None, :]


def mixed_attention_score(attention: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """(B, P) score of each patch token from the attention (B, H, N, N): the largest self-attention over
    heads times the largest received attention (column sum over every query) over heads."""
    diagonal = attention.diagonal(dim1=-2, dim2=-1)[:, :, n_prefix:].amax(dim=1)
    received = attention[:, :, :, n_prefix:].sum(dim=-2).amax(dim=1)
    return diagonal * received


class Propagation(Selection):
    """Keep `index` (B, M) (prefix first, then the kept patch tokens in order); each kept patch token also
    receives alpha times its graph weights `to_kept` (B, M - prefix, R) applied to the R propagated tokens
    `removed` (B, R). `carry` is the graph among the kept patch tokens, for the next block."""

    def __init__(self, index, removed, to_kept, carry, alpha: float, n_prefix: int, token_scale: bool):
        super().__init__(index)
        self.removed, self.to_kept, self.carry = removed, to_kept, carry
        self.alpha, self.n_prefix, self.token_scale = alpha, n_prefix, token_scale

    def _propagated(self, t: torch.Tensor) -> torch.Tensor:
        kept = self.apply(t)
        gone = t.gather(1, self.removed[..., None].expand(-1, -1, t.shape[-1]))
        message = self.to_kept.to(t.dtype) @ gone
        return torch.cat([kept[:, :self.n_prefix], kept[:, self.n_prefix:] + self.alpha * message], dim=1)

    def reduce_features(self, x, size):
        if not self.token_scale:
            return self._propagated(x), (None if size is None else self.apply(size))
        return self._propagated(x), self._propagated(torch.ones_like(x[..., :1]) if size is None else size)


def gtp_propagation(x, attention, graph, n_prefix: int, r: int, alpha: float, token_scale: bool) -> Propagation:
    """Plan one GTP step on `x` (B, N, C) from the block's attention (B, H, N, N) and the graph (B, P, P)."""
    B, N, _ = x.shape
    P = N - n_prefix
    with torch.no_grad():
        order = mixed_attention_score(attention, n_prefix).argsort(dim=1, descending=True)
        kept, removed = order[:, :P - r].sort(dim=1).values, order[:, P - r:]
    rows = graph.gather(1, kept[..., None].expand(-1, -1, P))
    to_kept = rows.gather(2, removed[:, None, :].expand(-1, P - r, -1))
    carry = rows.gather(2, kept[:, None, :].expand(-1, P - r, -1))
    prefix = torch.arange(n_prefix, device=x.device).expand(B, n_prefix)
    index = torch.cat([prefix, kept + n_prefix], dim=1)
    return Propagation(index, removed + n_prefix, to_kept, carry, alpha, n_prefix, token_scale)


@register_strategy("gtp")
class GTP(TokenStrategy):
    param_spec = {
        "num_prop": Int(8, "patch tokens propagated (removed) in each block", low=0, per_block=True),
        "num_neighbours": Int(8, "semantic neighbours of each patch in the token graph", low=1),
        "alpha": Float(0.1, "magnitude of the propagated features", low=0.0, high=math.inf, high_open=True),
        "token_scale": Bool(True, "token scales propagated too, their log added to the attention logits"),
        "graph_type": Choice("Mixed", "token graph: grid neighbours, similar patches, or both", choices=GRAPHS),
        "sparsity": Float(1.0, "share of each head's attention weights kept in every block (the smallest set to 0)",
                          low=0.0, high=1.0, low_open=True),
    }
    compute_knob = "num_prop"
    example_params = {"num_prop": 6, "sparsity": 0.9}  # the sparsified attention path too
    keep_all_params = {"num_prop": 0}
    carries_state = True

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        if knob == "num_prop":  # beyond this, the last blocks run out of patch tokens
            return 0, max(1, (patches - 1) // depth)
        return super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        r = self.params["num_prop"]
        if isinstance(r, list) and len(r) > n_layers:
            raise ValueError(f"{self.name}: num_prop has {len(r)} entries but the model has {n_layers} blocks")
        if not any(self.r_at(layer) for layer in range(n_layers)) and not self.reshapes_attention:
            warnings.warn(f"{self.name}: num_prop=0 in every block propagates nothing; the model runs unchanged",
                          UserWarning, stacklevel=4)

    def r_at(self, layer: int) -> int:
        r = self.params["num_prop"]
        return (r[layer] if layer < len(r) else 0) if isinstance(r, list) else r

    def first_reducing(self) -> int | None:
        r = self.params["num_prop"]
        if not isinstance(r, list):
            return 0 if r else None
        return next((i for i, v in enumerate(r) if v), None)

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        r, patches = self.r_at(layer), n_tokens - n_prefix
        if r == 0:
            return n_tokens, None
        if r >= patches:  # the authors' code breaks here; one patch token is kept
            capped = max(0, patches - 1)
            return n_tokens - capped, (f"num_prop={r} at block {layer} would propagate all {patches} patch tokens; "
                                       f"capped to {capped}")
        return n_tokens - r, None

    def start(self, x, n_prefix, grid):
        if self.first_reducing() is None:
            return None
        P = int(x.shape[1]) - n_prefix
        rows, cols = grid
        if rows * cols != P:
            side = math.isqrt(P)
            if side * side != P:
                raise ValueError(f"{self.name}: {P} patch tokens do not form the model's {rows}x{cols} grid")
            rows = cols = side
        if self.params["graph_type"] != "Spatial" and self.params["num_neighbours"] >= P:
            raise ValueError(f"{self.name}: num_neighbours={self.params['num_neighbours']} is out of range "
                             f"[1, {P - 1}] for {P} patch tokens")
        return token_graph(x[:, n_prefix:].detach(), (rows, cols), self.params["num_neighbours"],
                           self.params["graph_type"])

    def reduce(self, layer, x, probe, n_prefix, n_out, carry=None):
        if carry is None:
            raise RuntimeError(f"{self.name}: no token graph was built for this forward")
        p = self.params
        return gtp_propagation(x, probe.attention_map(), carry, n_prefix, int(x.shape[1]) - n_out, p["alpha"],
                               p["token_scale"])

    @property
    def reshapes_attention(self):
        return self.params["sparsity"] < 1.0

    def reshape_attention(self, weights):
        """The authors' sparsification: per image and head, weights below the k-th smallest set to 0."""
        B, H, N, _ = weights.shape
        k = int(N * N * (1 - self.params["sparsity"]))
        if k == 0:
            return weights
        threshold = weights.reshape(B, H, -1).kthvalue(k, dim=-1, keepdim=True).values[..., None]
        return torch.where(weights < threshold, torch.zeros_like(weights), weights)

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        """The attention map (unless sparsification already formed it: the fused kernel does not return it),
        the propagated features (and scales) to the kept tokens and, once, the graph's patch similarities."""
        kept, removed = n_out - n_prefix, n_tokens - n_out
        macs = kept * removed * (dims.width + self.params["token_scale"])
        if not self.reshapes_attention:
            macs += n_tokens * n_tokens * dims.attn_dim
        if layer == self.first_reducing() and self.params["graph_type"] != "Spatial":
            patches = n_tokens - n_prefix
            macs += patches * patches * dims.width
        return macs

    def uses_size_bias(self):
        return self.params["token_scale"]
