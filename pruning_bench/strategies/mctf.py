"""mctf: Multi-Criteria Token Fusion (Lee et al., CVPR 2024), r tokens merged per block.

ToMe pairs tokens by similarity alone; MCTF multiplies three criteria into one pairing score, so a
pair merges when it is similar, uninformative and small:
- similarity: ((cos + 1) / 2) ** (1 / tau_sim) between the two tokens' features;
- informativeness: (i_a * i_b) ** (1 / tau_info), i = 1 / (attention a token receives, averaged over
  heads and queries), normalised by its per-image maximum;
- size: (s_a * s_b) ** (1 / tau_size), s = 1 / (patches a token holds), normalised likewise (only once
  tokens have merged).
A tau of 0 switches a criterion off. With `bidirection`, r // 2 A tokens first merge into B, then
r - r // 2 B tokens merge into the A tokens that stayed (the paper's bidirectional matching). Merged
features are averages weighted by received attention x size, sizes add up, and attention gets the
log-size bias (`prop_attn`).

Training-free settings: tau_sim 1, tau_info 20, tau_size 40, bidirection on, r per block, as in the
authors' evaluation defaults (the off-the-shelf rows of the paper use the same criteria as training;
only the weights are not fine-tuned). One-step-ahead attention (informativeness from the *next*
block's attention, computed before merging and carried over) needs the next block, which a hook
inside one block cannot see: `one_step_ahead` must stay False, and informativeness comes from the
reducing block's own attention, the paper's ablation without it. Two costs follow and are counted:
the full head-averaged attention map is recomputed from the block's q and k (the fused attention
kernel does not return it), and similarity is taken on the block's tokens after the attention
residual (the authors use the block's input, which the hook no longer holds).
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import TokenStrategy, bipartite_macs
from .params import Bool, Custom, Float, Int, check_bool
from .bipartite import plan_moves, prefix_to_front


class MultiCriteriaMerge:
    """One MCTF step. The pairing depends on token sizes, so it is planned when `reduce_features` sees them."""

    def __init__(self, metric, received, r, n_prefix, taus, bidirection):
        self.metric, self.received, self.r, self.n_prefix = metric, received, r, n_prefix
        self.taus, self.bidirection = taus, bidirection
        self.plan = None

    def _plan(self, size):
        tau_sim, tau_info, tau_size = self.taus
        with torch.no_grad():
            metric = self.metric / self.metric.norm(dim=-1, keepdim=True)
            a, b = metric[:, ::2], metric[:, 1::2]
            scores = ((a @ b.transpose(1, 2) + 1) / 2) ** (1 / tau_sim) if tau_sim else torch.ones(a.shape[0], a.shape[1], b.shape[1], device=a.device)
            if tau_info:
                info = 1 / self.received
                info = info / info.max(dim=1, keepdim=True).values
                scores = scores * (info[:, ::2, None] * info[:, None, 1::2]) ** (1 / tau_info)
            if tau_size and size is not None:
                small = 1 / size[..., 0]
                small = small / small.max(dim=1, keepdim=True).values
                scores = scores * (small[:, ::2, None] * small[:, None, 1::2]) ** (1 / tau_size)
            rows = torch.arange(a.shape[1], device=a.device) * 2 < self.n_prefix
            cols = torch.arange(b.shape[1], device=a.device) * 2 + 1 < self.n_prefix
            scores = scores.masked_fill(rows[None, :, None] | cols[None, None, :], float("-inf"))
            r1 = self.r // 2 if self.bidirection else self.r
            r2 = self.r - r1
            best, best_b = scores.max(dim=-1)
            edges = best.argsort(dim=-1, descending=True)[..., None]
            kept_a = edges[:, r1:].sort(dim=1).values
            moved_a, into_b = edges[:, :r1], best_b[..., None].gather(1, edges[:, :r1])
            # second direction: B tokens into the A tokens that stayed
            back = scores.gather(1, kept_a.expand(-1, -1, scores.shape[2])).transpose(1, 2)
            best2, best_a = back.max(dim=-1)
            edges2 = best2.sort(dim=-1, descending=True).indices[..., None]
            kept_b = edges2[:, r2:]
            front = prefix_to_front(kept_a.shape[1], kept_b.shape[1], self.n_prefix)
            if front is not None or r2 == 0:  # keep B in order (prefix tokens in B go back to the front)
                kept_b = kept_b.sort(dim=1).values
            front = None if front is None else front.to(a.device)
            moved_b, into_a = edges2[:, :r2], best_a[..., None].gather(1, edges2[:, :r2])
        self.plan = (kept_a, moved_a, into_b, kept_b, moved_b, into_a, front)

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        if self.plan is None:
            self._plan(None)
        kept_a, moved_a, into_b, kept_b, moved_b, into_a, front = self.plan
        C = t.shape[-1]
        grab = lambda src, index: src.gather(1, index.expand(-1, -1, C))  # noqa: E731
        a, b = t[:, ::2], t[:, 1::2]
        b = b.scatter_reduce(1, into_b.expand(-1, -1, C), grab(a, moved_a), reduce=mode)
        a = grab(a, kept_a)
        a = a.scatter_reduce(1, into_a.expand(-1, -1, C), grab(b, moved_b), reduce=mode)
        out = torch.cat([a, grab(b, kept_b)], dim=1)
        return out if front is None else out.index_select(1, front)

    def reduce_features(self, x, size):
        self._plan(size)
        if size is None:
            size = torch.ones_like(x[..., :1])
        weight = self.received[..., None].to(x.dtype) * (size / size.amax(dim=1, keepdim=True))
        x = self.apply(x * weight, "sum") / self.apply(weight, "sum")
        return x, self.apply(size, "sum")


def _not_ahead(name, value, owner):
    if check_bool(name, value, owner):
        raise ValueError(
            f"{owner}: {name}=True is out of range [False]: the next block's attention is not "
            "available inside one block; informativeness uses the reducing block's own attention"
        )
    return False


def _tau(default, criterion):
    return Float(default, f"temperature of the {criterion} criterion (0 switches it off)", low=0.0, high=float("inf"),
                 high_open=True)


@register_strategy("mctf")
class MCTF(TokenStrategy):
    param_spec = {
        "r": Int(16, "tokens merged in each block", low=0, per_block=True),
        "tau_sim": _tau(1.0, "similarity"), "tau_info": _tau(20.0, "informativeness"), "tau_size": _tau(40.0, "size"),
        "bidirection": Bool(True, "r // 2 merges A into B, then the rest B into A"),
        "one_step_ahead": Custom(False, "informativeness from the next block's attention (not available here)",
                                 text="False", checker=_not_ahead),
        "prop_attn": Bool(True, "proportional attention (log of token sizes added to the logits)"),
    }
    example_params = {"r": 8}
    keep_all_params = {"r": 0}
    compute_knob = "r"

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return (0, patches // 2) if knob == "r" else super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        r = self.params["r"]
        if isinstance(r, list) and len(r) > n_layers:
            raise ValueError(f"{self.name}: r has {len(r)} entries but the model has {n_layers} blocks")

    def r_at(self, layer: int) -> int:
        r = self.params["r"]
        return (r[layer] if layer < len(r) else 0) if isinstance(r, list) else r

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        return plan_moves(self.params["r"], self.r_at(layer), layer, n_tokens, n_prefix)

    def reduce(self, layer, x, probe, n_prefix, n_out):
        p = self.params
        # attention each token receives, averaged over heads and queries: the informativeness criterion
        # and the merge weights
        received = probe.attention_rows(slice(None)).mean(dim=1)
        return MultiCriteriaMerge(x, received, int(x.shape[1]) - n_out, n_prefix,
                                  (p["tau_sim"], p["tau_info"], p["tau_size"]), p["bidirection"])

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        # the recomputed attention map (the fused kernel does not return it) and the A-B similarity
        return n_tokens * n_tokens * dims.attn_dim + bipartite_macs(n_tokens, n_prefix, dims.width)

    def uses_size_bias(self):
        return self.params["prop_attn"]
