"""mctf: Multi-Criteria Token Fusion with one-step-ahead attention (Lee et al., CVPR 2024; mlvlab/MCTF).

ToMe pairs tokens by similarity alone; MCTF multiplies three criteria into one pairing score, so a
pair merges when it is similar, uninformative and small:
- similarity: ((cos + 1) / 2) ** (1 / tau_sim) between the two tokens' features;
- informativeness: (i_a * i_b) ** (1 / tau_info), i = 1 / (attention a token receives, averaged over
  heads and queries), normalised by its per-image maximum;
- size: (s_a * s_b) ** (1 / tau_size), s = 1 / (patches a token holds), normalised likewise (only once
  tokens have merged).
A tau of 0 switches a criterion off. With `bidirection`, r // 2 A tokens first merge into B, then
r - r // 2 B tokens merge into the A tokens that stayed (the paper's bidirectional matching). Merged
features are averages weighted by received attention x size / max size, sizes add up, and later
blocks get the log-size attention bias (`prop_attn`).

One-step-ahead (`one_step_ahead`, default on), inside one block as the authors' code does: the block's
attention map is computed on its input tokens; those tokens are merged (similarity on the block's
input, informativeness from that map); the map itself is merged (keys summed, queries averaged with the
merge weights), and the merged tokens attend with it, so the block's attention is not computed twice.
Without it, the block runs whole and its output is merged with the block's own attention (the authors'
"W/O one-step-ahead" path, placed at the block's exit).

Defaults are the authors' evaluation scripts (`run/eval_deit_*_mctf.sh`): r 16 in blocks 1 to the last
(`activate_layer`, default every block but the first), tau_sim 1, tau_info 20, tau_size 40,
bidirection, one-step-ahead, proportional attention, and their cap: a block merges at most
t - 10 of its t tokens, and at most half of the non-prefix ones.
"""
from __future__ import annotations

import torch

from ..registry import register_strategy
from .base import TokenStrategy, bipartite_macs
from .params import Blocks, Bool, check_r_entries, Float, Int, r_range
from .bipartite import plan_moves, prefix_to_front


class MultiCriteriaMerge:
    """One MCTF step. The pairing depends on token sizes, so it is planned when `reduce_features` sees them."""

    def __init__(self, metric, attention, r, n_prefix, taus, bidirection):
        self.metric, self.attention, self.r, self.n_prefix = metric, attention, r, n_prefix
        self.received = attention.mean(dim=(1, 2))  # (B, N): attention received, over heads and queries
        self.taus, self.bidirection = taus, bidirection
        self.plan = self.weight = None

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
        self.weight = self.received[..., None].to(x.dtype) * (size / size.amax(dim=1, keepdim=True))
        x = self.apply(x * self.weight, "sum") / self.apply(self.weight, "sum")
        return x, self.apply(size, "sum")

    def merge_attention(self) -> torch.Tensor:
        """The attention map (B, heads, N, N) merged to the reduced tokens: keys summed, queries averaged with
        the merge weights (rows still sum to 1); what the merged tokens attend with (one-step-ahead)."""
        B, H, N, _ = self.attention.shape
        keys = self.apply(self.attention.permute(0, 3, 1, 2).reshape(B, N, H * N), "sum")  # (B, N', H * N)
        M = keys.shape[1]
        keys = keys.reshape(B, M, H, N).permute(0, 2, 3, 1)  # (B, H, N queries, N' keys)
        weight = self.weight.to(keys.dtype)
        rows = self.apply((keys * weight[:, None]).permute(0, 2, 1, 3).reshape(B, N, H * M), "sum")
        rows = rows / self.apply(weight, "sum")
        return rows.reshape(B, M, H, M).transpose(1, 2)


def _tau(default, criterion):
    return Float(default, f"temperature of the {criterion} criterion (0 switches it off)", low=0.0, high=float("inf"),
                 high_open=True)


@register_strategy("mctf")
class MCTF(TokenStrategy):
    param_spec = {
        "r": Int(16, "tokens merged in each block", low=0, per_block=True),
        "tau_sim": _tau(1.0, "similarity"), "tau_info": _tau(20.0, "informativeness"), "tau_size": _tau(40.0, "size"),
        "bidirection": Bool(True, "r // 2 merges A into B, then the rest B into A"),
        "one_step_ahead": Bool(True, "merge a block's input and attend with the merged attention map (the authors' "
                                     "evaluation); False merges the block's output"),
        "prop_attn": Bool(True, "proportional attention (log of token sizes added to the logits)"),
        "activate_layer": Blocks(None, "the blocks that merge (None: every block but the first)", optional=True),
    }
    example_params = {"r": 8}
    keep_all_params = {"r": 0}
    compute_knob = "r"
    MIN_TOKENS = 10  # the authors' cap: a block leaves at least this many tokens

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        return r_range(knob, patches) or super().knob_range(knob, params, patches, depth)

    @property
    def placement(self):
        return "ahead" if self.params["one_step_ahead"] else "exit"

    def check_model(self, n_layers, n_prefix):
        r, active = self.params["r"], self.params["activate_layer"]
        check_r_entries(r, n_layers, self.name)
        if active is not None and active[-1] >= n_layers:
            raise ValueError(f"{self.name}: activate_layer={active} has block {active[-1]}, out of range "
                             f"[0, {n_layers - 1}] for a {n_layers}-block model")

    def r_at(self, layer: int) -> int:
        r, active = self.params["r"], self.params["activate_layer"]
        if (layer == 0) if active is None else (layer not in active):
            return 0
        return (r[layer] if layer < len(r) else 0) if isinstance(r, list) else r

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        r, note = self.r_at(layer), None
        if r and n_tokens - r < self.MIN_TOKENS:
            capped = max(0, n_tokens - self.MIN_TOKENS)
            note = (f"r={r} at block {layer} would leave fewer than {self.MIN_TOKENS} of its {n_tokens} tokens; "
                    f"capped to {capped}, as the authors' code does")
            r = capped
            if r == 0:
                return n_tokens, note
        n_out, clamp = plan_moves(self.params["r"], r, layer, n_tokens, n_prefix)
        return n_out, clamp or note

    def reduce(self, layer, x, probe, n_prefix, n_out):
        p = self.params
        # the block's attention map: informativeness, merge weights and (one-step-ahead) the merged map
        return MultiCriteriaMerge(x, probe.attention_map(), int(x.shape[1]) - n_out, n_prefix,
                                  (p["tau_sim"], p["tau_info"], p["tau_size"]), p["bidirection"])

    def decision_macs(self, layer, n_tokens, n_out, n_prefix, dims):
        """Beyond the formula (N tokens through attention, N' = `n_out` after): the A-B similarity; with
        one-step-ahead, the values, A @ V and output projection run on N' tokens only (a saving, hence the
        negative terms); without it, the attention map is recomputed (the fused kernel does not return it)."""
        similarity = bipartite_macs(n_tokens, n_prefix, dims.width)
        if not self.params["one_step_ahead"]:
            return n_tokens * n_tokens * dims.attn_dim + similarity
        saved = 2 * (n_tokens - n_out) * dims.width * dims.attn_dim + (n_tokens**2 - n_out**2) * dims.attn_dim
        return similarity - saved

    def uses_size_bias(self):
        return self.params["prop_attn"]
