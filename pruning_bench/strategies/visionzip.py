"""visionzip: dominant + contextual tokens (Yang et al., CVPR 2025, dvlab-research/VisionZip), once.

Class attention concentrates on a few tokens, so VisionZip keeps those (dominant) and, instead of
dropping everything else, folds the rest into a few contextual tokens so that background context
survives. In block `layer` (default: the second to last, the layer VisionZip reads in LLaVA):
- dominant: the class token (and any other prefix token) plus the `dominant - 1` patch tokens the
  class token attends to most (`dominant` counts the class token, as in the authors' code);
- contextual: the remaining patches, in order, give `contextual` targets taken at a uniform stride;
  every other remaining token joins the target whose head-averaged key is most cosine-similar, and
  a contextual token is its target plus the mean of the tokens that joined it, as the authors'
  code computes it.
Output: dominant tokens in their original order, then the contextual tokens in target order. As the
authors do, the reduction takes the output of block `layer` (after its MLP), with that block's
attention and keys; the blocks after it run on the reduced tokens. No proportional attention, as in
their code.
"""
from __future__ import annotations

import functools

import torch

from ..registry import register_strategy
from .base import TokenStrategy
from .params import Int
from .constants import schedule_constant


@functools.lru_cache(maxsize=64)
def _target_positions(remaining: int, contextual: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets, others) among the remaining tokens: every `step`-th one is a target, as in the authors' code."""
    step = max(1, remaining // contextual)
    targets = torch.arange(0, remaining, step)[:contextual]
    others = torch.ones(remaining, dtype=torch.bool)
    others[targets] = False
    return targets, others.nonzero()[:, 0]


def _targets(remaining: int, contextual: int) -> torch.Tensor:
    return _target_positions(remaining, contextual)[0]


def _others(remaining: int, contextual: int) -> torch.Tensor:
    return _target_positions(remaining, contextual)[1]


class DominantContextual:
    """Keep `dominant_index` tokens; each contextual token = its target + mean (or sum) of its joiners."""

    def __init__(self, dominant_index, target_index, other_index, assign, contextual):
        self.dominant_index, self.target_index, self.other_index = dominant_index, target_index, other_index
        self.assign, self.contextual = assign, contextual

    def _parts(self, t, mode):
        C = t.shape[-1]
        grab = lambda index: t.gather(1, index[..., None].expand(-1, -1, C))  # noqa: E731
        joined = torch.zeros_like(t[:, : self.contextual]).scatter_add(1, self.assign[..., None].expand(-1, -1, C), grab(self.other_index))
        if mode == "mean":
            count = torch.zeros_like(t[:, : self.contextual, :1]).scatter_add(
                1, self.assign[..., None], torch.ones_like(t[:, : self.assign.shape[1], :1]))
            joined = joined / count.clamp(min=1)
        return torch.cat([grab(self.dominant_index), grab(self.target_index) + joined], dim=1)

    def apply(self, t: torch.Tensor, mode: str = "sum") -> torch.Tensor:
        return self._parts(t, "sum")

    def reduce_features(self, x, size):
        if size is None:
            size = torch.ones_like(x[..., :1])
        return self._parts(x, "mean"), self._parts(size, "sum")


@register_strategy("visionzip")
class VisionZip(TokenStrategy):
    param_spec = {
        "dominant": Int(54, "tokens kept by class attention, the class token included", low=1),
        "contextual": Int(10, "tokens the remaining ones are folded into", low=0),
        "layer": Int(None, "the block that reduces; None: the second to last", low=0, optional=True),
    }
    example_params = {"dominant": 17, "contextual": 8, "layer": 1}
    keep_all_params = {"dominant": 65, "contextual": 0}
    compute_knob = "dominant"
    needs_class_token = True
    placement = "exit"

    @classmethod
    def knob_range(cls, knob, params, patches, depth):
        if knob == "dominant":  # dominant tokens count the class token
            return 1, max(1, patches + 1 - int(params.get("contextual") or 0))
        return super().knob_range(knob, params, patches, depth)

    def check_model(self, n_layers, n_prefix):
        layer = self.params["layer"]
        if layer is not None and layer >= n_layers:
            raise ValueError(f"{self.name}: layer={layer} is out of range [0, {n_layers - 1}] for a {n_layers}-block model")

    def layer_for(self, n_layers: int) -> int:
        layer = self.params["layer"]
        return max(0, n_layers - 2) if layer is None else layer

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        if layer != self.layer_for(n_layers):
            return n_tokens, None
        patches = n_tokens - n_prefix
        kept = self.params["dominant"] - 1 + self.params["contextual"]
        if kept >= patches:
            return n_tokens, (f"dominant - 1 + contextual = {kept} >= the {patches} patch tokens present at block "
                              f"{layer}; clamped to {patches}, so nothing is reduced")
        return n_prefix + kept, None

    def reduce(self, layer, x, probe, n_prefix, n_out):
        dominant, contextual = self.params["dominant"] - 1, self.params["contextual"]
        with torch.no_grad():
            cls_attention = probe.attention_rows(slice(0, 1))[:, 0, n_prefix:]
            B, P = cls_attention.shape
            top = cls_attention.topk(dominant, dim=1).indices
            rest = torch.ones_like(cls_attention).scatter(1, top, torch.zeros_like(top, dtype=cls_attention.dtype))
            rest_index = rest.argsort(dim=1, descending=True, stable=True)[:, : P - dominant] + n_prefix
            prefix = torch.arange(n_prefix, device=x.device).expand(B, n_prefix)
            dominant_index = torch.cat([prefix, top.sort(dim=1).values + n_prefix], dim=1)
            if contextual == 0:
                empty = rest_index[:, :0]
                return DominantContextual(dominant_index, empty, empty, empty, 0)
            # made once per device: a per-forward host-to-device copy would synchronise a GPU
            targets = schedule_constant(_targets, (int(P - dominant), contextual), x.device)
            others = schedule_constant(_others, (int(P - dominant), contextual), x.device)
            target_index, other_index = rest_index[:, targets], rest_index[:, others]
            metric = probe.k.mean(dim=1)
            metric = metric / metric.norm(dim=-1, keepdim=True)
            pick = lambda index: metric.gather(1, index[..., None].expand(-1, -1, metric.shape[-1]))  # noqa: E731
            assign = (pick(other_index) @ pick(target_index).transpose(1, 2)).argmax(dim=-1)
        return DominantContextual(dominant_index, target_index, other_index, assign, contextual)
