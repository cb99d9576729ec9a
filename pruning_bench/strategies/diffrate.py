"""diffrate: Differentiable Compression Rate (Chen et al., ICCV 2023; OpenGVLab/DiffRate), prune then merge.

In every block, after its attention residual, the patch tokens are sorted by the class token's attention
(averaged over heads, descending; prefix tokens stay in front). The block keeps the first
`prune_kept_num[l]` tokens (prefix included) and drops the rest; of those, the first `merge_kept_num[l]`
stay and each later one is merged into its most cosine-similar kept token (similarity of the block's
features, never into a prefix token). A merged token is the plain mean of the tokens it absorbs (the
authors' `scatter_reduce(mean)`), and its size grows by each absorbed size times that similarity (their
"proportional attention considering similarity"); later blocks add log(size) to the attention logits.
Then the MLP runs on the survivors. This is the authors' inference path (`DiffRate/patch/deit.py`).

Which counts? Given (`prune_kept_num`, `merge_kept_num`, as in their `compression_rate.json`) they are
used as they are. Otherwise they are searched on `calibration` images with the model's weights frozen
(`diffrate_search.py`): per block, a softmax over candidate kept counts (every `granularity` tokens;
block 0 has the single candidate "all", as the authors) is learned by gradient descent so that the
expected MACs reach `target_ratio` of the unpruned model while the output stays close to the unpruned
model's (the authors use the labels' cross-entropy; calibration batches carry no labels here, so the
unpruned model's own output is the target: its softmax for a classifier, its features for an encoder).
The searched counts are in `h.stats()` (`prune_kept_num`, `merge_kept_num`, `search`).
"""
from __future__ import annotations

import math
import warnings

import torch

from ..families import locate
from ..registry import register_strategy
from .base import TokenStrategy
from .params import Calibration, Custom, Float, Int, check_int

MISSED_TARGET = 0.01  # a searched schedule further than this from target_ratio (share of the MACs) is noted


def class_attention(probe, n_prefix: int) -> torch.Tensor:
    """(B, P) the class token's softmax attention on the patch tokens, mean over heads, in at least float32."""
    logits = probe.logit_fn(probe.q[:, :, :1], probe.k)
    attention = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)[:, :, 0]
    return attention[..., n_prefix:].mean(dim=1)


def importance_order(cls_attention: torch.Tensor, n_prefix: int) -> torch.Tensor:
    """(B, N) token positions: the prefix tokens, then the patch tokens by class attention, highest first."""
    B = cls_attention.shape[0]
    ranked = cls_attention.argsort(dim=1, descending=True) + n_prefix
    prefix = torch.arange(n_prefix, device=ranked.device).expand(B, n_prefix)
    return torch.cat([prefix, ranked], dim=1)


class SortPruneMerge:
    """One DiffRate step on a block's tokens: sort by importance, keep `n_mid`, merge the last `n_mid - n_out`
    of those into the first `n_out` (their most similar one, never a prefix token)."""

    def __init__(self, x: torch.Tensor, order: torch.Tensor, n_mid: int, n_out: int, n_prefix: int):
        self.order, self.n_out = order[:, :n_mid], n_out
        self.node_max = self.into = None
        if n_out < n_mid:
            with torch.no_grad():
                kept = x.detach().gather(1, self.order[..., None].expand(-1, -1, x.shape[-1]))
                metric = kept / kept.norm(dim=-1, keepdim=True)
                similarity = metric[:, n_out:] @ metric[:, :n_out].transpose(1, 2)
                similarity[..., :n_prefix] = -math.inf
                self.node_max, into = similarity.max(dim=-1)
                self.into = into[..., None]

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        t = t.gather(1, self.order[..., None].expand(-1, -1, t.shape[-1]))
        if self.into is None:
            return t
        dst, src = t[:, :self.n_out], t[:, self.n_out:]
        return dst.scatter_reduce(1, self.into.expand(-1, -1, t.shape[-1]), src, reduce=mode)

    def reduce_features(self, x, size):
        """Features: plain mean of the merged tokens; sizes: the kept size plus each absorbed size x similarity."""
        if size is None:
            size = torch.ones_like(x[..., :1])
        if self.into is None:
            return self.apply(x, "mean"), self.apply(size, "sum")
        size = size.gather(1, self.order[..., None])
        absorbed = size[:, self.n_out:] * self.node_max[..., None].to(size.dtype)
        size = size[:, :self.n_out].scatter_reduce(1, self.into, absorbed, reduce="sum")
        return self.apply(x, "mean"), size


def _kept_list(name, value, owner):
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"{owner}: {name} must be a non-empty list of per-block token counts, got {value!r}")
    return [check_int(f"{name}[{i}]", v, 1, None, owner) for i, v in enumerate(value)]


def _kept(help_):
    return Custom(None, help_, text="list of ints >= 1, one per block", checker=_kept_list, optional=True)


@register_strategy("diffrate")
class DiffRate(TokenStrategy):
    param_spec = {
        "target_ratio": Float(0.6, "share of the unpruned model's MACs the rate search aims at", low=0.0, high=1.0,
                              low_open=True),
        "prune_kept_num": _kept("tokens kept after pruning in each block, prefix included (None: searched)"),
        "merge_kept_num": _kept("tokens kept after merging in each block, prefix included (None: searched)"),
        "granularity": Int(4, "gap in tokens between the candidate kept counts of the search", low=1),
        "epochs": Int(30, "passes of the rate search over the calibration batches", low=1),
        "arch_lr": Float(0.1, "AdamW learning rate of the rate logits (cosine-decayed to arch_min_lr)", low=0.0,
                         high=float("inf"), low_open=True, high_open=True),
        "arch_min_lr": Float(0.01, "final learning rate of the rate search", low=0.0, high=float("inf"),
                             high_open=True),
        "lamb": Float(100.0, "weight of (MAC ratio - target_ratio)^2 against the output distance", low=0.0,
                      high=float("inf"), high_open=True),
        "calibration": Calibration(None, "images the rates are searched on (needed unless both counts are given)",
                                   optional=True),
    }
    needs_class_token = True
    compute_knob = None  # the search reaches its own MAC target (target_ratio); pb.match_macs is not needed
    example_params = {"prune_kept_num": [1000, 50, 40, 30], "merge_kept_num": [1000, 44, 33, 20]}
    keep_all_params = {"prune_kept_num": [1_000_000], "merge_kept_num": [1_000_000]}

    def _check(self):
        p = self.params
        given = (p["prune_kept_num"] is not None, p["merge_kept_num"] is not None)
        if given[0] != given[1]:
            raise ValueError(f"{self.name}: give both prune_kept_num and merge_kept_num, or neither (then they are "
                             "searched)")
        if not given[0] and p["calibration"] is None:
            raise ValueError(f"{self.name}: searching the rates needs calibration=<iterable of image batches> (no "
                             "labels needed: the unpruned model's own outputs are the target), or give "
                             "prune_kept_num and merge_kept_num")
        if p["arch_min_lr"] > p["arch_lr"]:
            raise ValueError(f"{self.name}: arch_min_lr={p['arch_min_lr']} is out of range [0, arch_lr={p['arch_lr']}]")
        self.schedule = None if not given[0] else (list(p["prune_kept_num"]), list(p["merge_kept_num"]))
        self.search_record = None

    def resolved_params(self):
        """After a search, the counts it found stand in for None: the record (and a saved model re-applied
        from it) reproduces the schedule without calibration images."""
        params = dict(self.params)
        if params["calibration"] is not None:
            params["calibration"] = None if self.search_record is None else self.search_record["calibration"]
        if self.search_record is not None:
            params["prune_kept_num"], params["merge_kept_num"] = (list(c) for c in self.schedule)
        return params

    def attach(self, model):
        """Search the rates on the calibration batches if they were not given, then hook the fixed schedule."""
        from ..patches.tokens import attach_token_strategy  # the patches import the strategies package
        from .diffrate_search import search_rates

        family = locate(model)
        if self.needs_class_token and family.n_prefix == 0:
            raise ValueError(f"{self.name} ranks tokens by the class token's attention; this model has no class token")
        if self.schedule is None:
            p = self.params
            prune, merge, self.search_record = search_rates(
                model, family, p["calibration"], target_ratio=p["target_ratio"], granularity=p["granularity"],
                epochs=p["epochs"], lr=p["arch_lr"], min_lr=p["arch_min_lr"], lamb=p["lamb"])
            self.schedule = (prune, merge)
            achieved = self.search_record["analytic_mac_ratio"]
            if abs(achieved - p["target_ratio"]) > MISSED_TARGET:
                warnings.warn(f"{self.name}: the rate search ended at {achieved:.3f} of the MACs for target_ratio="
                              f"{p['target_ratio']}; more epochs (or calibration batches) or a larger arch_lr get "
                              "closer", UserWarning, stacklevel=3)
        self.check_pooling(family.pools_patch_tokens())
        return attach_token_strategy(model, self, family)

    # ------------------------------------------------------------ the fixed schedule

    def kept_at(self, layer: int) -> tuple[float, float]:
        prune, merge = self.schedule
        at = lambda counts: counts[layer] if layer < len(counts) else math.inf  # noqa: E731
        return at(prune), at(merge)

    def check_model(self, n_layers, n_prefix):
        for name, counts in zip(("prune_kept_num", "merge_kept_num"), self.schedule):
            if len(counts) > n_layers:
                raise ValueError(f"{self.name}: {name} has {len(counts)} entries but the model has {n_layers} blocks")

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        note = None
        if layer == 0 and all(v >= n_tokens for counts in self.schedule for v in counts):
            note = f"every kept count is at least the {n_tokens} tokens; the model runs unchanged"
        prune, merge = self.kept_at(layer)
        n_out = int(min(n_tokens, prune, merge))
        if n_out <= n_prefix:
            n_out = min(n_tokens, n_prefix + 1)
            note = (f"block {layer} would keep no patch token beside the {n_prefix} prefix token(s); it keeps "
                    f"{n_out - n_prefix}")
        return n_out, note

    def reduce(self, layer, x, probe, n_prefix, n_out):
        n_tokens = int(x.shape[1])
        n_mid = int(min(n_tokens, max(self.kept_at(layer)[0], n_out)))
        order = importance_order(class_attention(probe, n_prefix), n_prefix)
        return SortPruneMerge(x, order, n_mid, n_out, n_prefix)

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        """The class token's attention logits (the fused attention does not return them) and, when merging,
        the similarity of the merged tokens to the kept ones."""
        n_mid = int(min(n_tokens, max(self.kept_at(layer)[0], n_out)))
        return n_tokens * dims.attn_dim + (n_mid - n_out) * n_out * dims.width

    def uses_size_bias(self):
        return True

    def extend_stats(self, stats):
        prune, merge = self.schedule
        stats["prune_kept_num"], stats["merge_kept_num"] = list(prune), list(merge)
        if self.search_record is not None:
            stats["search"] = {k: v for k, v in self.search_record.items() if k != "calibration"}
        return stats

