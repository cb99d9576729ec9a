"""What refill and rsst decide, as pure functions: unit scores per criterion, which units leave, and
RSST's penalty strength step by step. (How the decision is kept real while training is in
`patches/unit_state.py`.)

Scores follow the reference implementation of Chen et al. / RSST (zjgxwl/RSST,
`vit_structured_pruning.py`), read from the q/k/v rows of a head (3 x head_dim rows of the fused
projection) and the input row(s) of an MLP neuron (fc1):
- `remain`: entries of those rows that survive global unstructured magnitude pruning of every
  block's q/k/v, output projection, fc1 and fc2 weights at `head_ratio` (torch's
  `global_unstructured` with `L1Unstructured`: the round(amount x N) smallest |w| go);
- `magnitude`, `l1`: sum of |w|;
- `l2`: sum of w^2;
- `saliency`: sum of |w x dL/dw|, mean over calibration batches, L the mean cross-entropy against
  the batch's labels when it carries them, else against the model's own argmax.
Higher keeps. Units leave by `keep_units`: the lowest `ratio` share (nearest count, like head_prune)
within each block (`layerwise`) or over all blocks at once on the raw scores (`global`, the
reference code's mixed sorting), every block keeping its best unit (a block cannot be emptied);
ties go to the earlier block and unit. `fillback_rate` then puts back that share of the units
chosen to leave, best first: the refill formula int(kept + (n - kept) x rate), n and kept counted
per block or over all blocks.

`penalty_strengths` is the reference `update_reg` step by step: lambda is updated at the batches
i of an epoch with reg_scale x i < 1 (only batch 0 for reg_scale >= 1) and held in between, in
float32 as the reference holds it.
"""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from ..families import encode, locate
from .base import check_choice, check_float, check_int
from .head_prune import count_to_remove

CRITERIA = ("remain", "magnitude", "l1", "l2", "saliency")
SCOPES = ("global", "layerwise")
SCHEDULES = ("x", "x^2", "x^3", "exp", "exp_custom", "exp_custom_exponents")


# ---------------------------------------------------------------- parameters


def check_rewind(value, owner: str):
    """None / 'none', or (state, epoch) given as 'S:E', [S, E] or an int S (epoch 0): the weights after
    epoch E of state S (epoch 0 = as the state started; states count from 1)."""
    if value is None or value == "none":
        return None
    if isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", value)
        if not match:
            raise ValueError(f"{owner}: rewind={value!r} must be 'none' or 'STATE:EPOCH' (e.g. '1:0', the weights the "
                             "first state started from)")
        value = [int(match.group(1)), int(match.group(2) or 0)]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value, 0]
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"{owner}: rewind={value!r} must be 'none' or 'STATE:EPOCH'")
    state = check_int("rewind state", value[0], 1, None, owner)
    epoch = check_int("rewind epoch", value[1], 0, None, owner)
    return f"{state}:{epoch}"


def check_common(params: dict, owner: str) -> None:
    """The parameters refill and rsst share (checked in place)."""
    params["head_ratio"] = check_float("head_ratio", params["head_ratio"], 0.0, 1.0, high_open=True, owner=owner)
    params["mlp_ratio"] = check_float("mlp_ratio", params["mlp_ratio"], 0.0, 1.0, high_open=True, owner=owner)
    check_choice("criterion", params["criterion"], CRITERIA, owner)
    check_choice("scope", params["scope"], SCOPES, owner)
    params["rewind"] = check_rewind(params["rewind"], owner)


# ---------------------------------------------------------------- scores


def magnitude_masks(weights: list[torch.Tensor], amount: float) -> list[torch.Tensor]:
    """Keep-masks of global unstructured magnitude pruning: the round(amount x N) smallest |w| of all
    `weights` together are dropped (torch.nn.utils.prune.global_unstructured with L1Unstructured)."""
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    k = round(amount * flat.numel())
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if k:
        keep[torch.topk(flat.abs(), k=k, largest=False).indices] = False
    return [m.view_as(w) for m, w in zip(keep.split([w.numel() for w in weights]), weights)]


def head_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(3, heads, head_dim, D): the fused q/k/v rows viewed per head, as the reference reshapes `qkv`."""
    return torch.stack([q, k, v]).reshape(3, num_heads, q.shape[0] // num_heads, q.shape[1])


def unit_sum(rows: torch.Tensor, kind: str) -> torch.Tensor:
    """Per unit sum over (3, units, head_dim, D) head rows or (units, D) neuron rows."""
    return rows.sum(dim=(0, 2, 3)) if kind == "head" else rows.sum(dim=1)


def weight_score(rows: torch.Tensor, kind: str, criterion: str) -> torch.Tensor:
    rows = rows.detach()
    if criterion in ("magnitude", "l1"):
        return unit_sum(rows.abs(), kind)
    if criterion == "l2":
        return unit_sum(rows.pow(2), kind)
    raise ValueError(f"{criterion} is not a weight criterion")


def block_rows(family, block) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(head rows (3, heads, head_dim, D), [neuron input rows (hidden, D)...]) of a block, as views."""
    w = family.attention_view(block).weights()
    return head_rows(w.q, w.k, w.v, w.num_heads), family.mlp_view(block).weights()[0]


def weight_scores(family, criterion: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    heads, neurons = [], []
    for b in family.blocks:
        h, inputs = block_rows(family, b)
        heads.append(weight_score(h, "head", criterion).float().cpu())
        neurons.append(sum(weight_score(r, "neuron", criterion) for r in inputs).float().cpu())
    return heads, neurons


def remain_scores(family, amount: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Surviving entries per unit after global magnitude pruning of q/k/v, output, fc1 and fc2 weights."""
    weights, layout = [], []
    for b in family.blocks:
        w = family.attention_view(b).weights()
        inputs, out = family.mlp_view(b).weights()
        layout.append((w.num_heads, len(inputs)))
        weights += [torch.cat([w.q, w.k, w.v]), w.out, *inputs, out]
    masks = magnitude_masks(weights, amount)
    heads, neurons, at = [], [], 0
    for num_heads, n_inputs in layout:
        q, k, v = masks[at].float().chunk(3)
        heads.append(unit_sum(head_rows(q, k, v, num_heads), "head").cpu())
        neurons.append(sum(unit_sum(m.float(), "neuron") for m in masks[at + 2:at + 2 + n_inputs]).cpu())
        at += 2 + n_inputs + 1
    return heads, neurons


def saliency_scores(model, calibration, owner: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Mean over calibration batches of sum |w x dL/dw| per unit (model left as it was)."""
    work = copy.deepcopy(model).float().eval()
    params = [p for p in work.parameters()]
    for p in params:
        p.requires_grad_(True)
    family = locate(work)
    blocks = family.blocks
    head_acc, neuron_acc, batches = [], [], 0
    for item in calibration:
        images, labels = split_batch(item)
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"{owner}: calibration must yield image tensors (B, C, H, W) or (images, labels)")
        features, logits = encode(work, images.float())
        if logits is None:
            raise ValueError(f"{owner}: criterion='saliency' needs a classifier (a model with a head)")
        grads = torch.autograd.grad(saliency_loss(logits, labels), params, allow_unused=True)
        values = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.copy_((p * g).abs() if g is not None else torch.zeros_like(p))
            h, n = weight_scores(family, "magnitude")
            for p, v in zip(params, values):
                p.copy_(v)
        head_acc.append(h)
        neuron_acc.append(n)
        batches += 1
    if not batches:
        raise ValueError(f"{owner}: criterion='saliency' needs calibration=<batches of images (and labels)>")
    return ([torch.stack([b[i] for b in head_acc]).mean(0) for i in range(len(blocks))],
            [torch.stack([b[i] for b in neuron_acc]).mean(0) for i in range(len(blocks))])


def unit_scores(model, criterion: str, head_ratio: float, calibration=None, owner: str = "refill"):
    """(head scores, neuron scores) per block, higher = keep (see the module docstring)."""
    family = locate(model)
    with torch.no_grad():
        if criterion == "remain":
            return remain_scores(family, head_ratio)
        if criterion != "saliency":
            return weight_scores(family, criterion)
    return saliency_scores(model, calibration, owner)


def saliency_loss(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    target = logits.detach().argmax(dim=-1) if labels is None else labels.to(logits.device)
    return F.cross_entropy(logits.float(), target)


def split_batch(item):
    """(images, labels or None) of a calibration item: a tensor, or (images, labels)."""
    if isinstance(item, (list, tuple)):
        return item[0], (item[1] if len(item) > 1 and isinstance(item[1], torch.Tensor) else None)
    return item, None


# ---------------------------------------------------------------- which units leave


def keep_counts(sizes: list[int], ratio: float, fillback_rate: float) -> int:
    """Units kept out of sum(sizes) for `ratio` removed (nearest count), then refilled by `fillback_rate`."""
    n = sum(sizes)
    kept = n - count_to_remove(ratio, n)
    return int(kept + (n - kept) * fillback_rate)


def keep_units(scores: list[torch.Tensor], ratio: float, scope: str, fillback_rate: float = 0.0,
               ) -> tuple[list[torch.Tensor], bool]:
    """(sorted kept indices per block, whether a block's floor of one unit changed the choice)."""
    if scope == "layerwise":
        kept, floored = [], False
        for s in scores:
            count = keep_counts([len(s)], ratio, fillback_rate)
            floored |= count < 1
            order = torch.sort(s, descending=True, stable=True).indices
            kept.append(order[:max(count, 1)].sort().values)
        return kept, floored
    sizes = [len(s) for s in scores]
    offsets = np.cumsum([0] + sizes)
    flat = torch.cat([s.double() for s in scores])
    order = torch.sort(flat, descending=True, stable=True).indices  # ties: earlier block and unit first
    count = keep_counts(sizes, ratio, fillback_rate)
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[order[:count]] = True
    best = [int(offsets[b]) + int(torch.sort(s, descending=True, stable=True).indices[0]) for b, s in enumerate(scores)]
    floored = any(not chosen[i] for i in best)
    if floored:  # every block keeps its best unit; the others fill the remaining places by rank
        protected = torch.zeros(len(flat), dtype=torch.bool)
        protected[best] = True
        rest = order[~protected[order]][:max(count - len(best), 0)]
        chosen = protected.clone()
        chosen[rest] = True
    return [chosen[offsets[b]:offsets[b + 1]].nonzero().flatten() for b in range(len(sizes))], floored


# ---------------------------------------------------------------- RSST penalty strength


def penalty_strengths(schedule: str, reg_scale: float, exponents: int, steps_per_epoch: int, epochs: int,
                      ) -> list[float]:
    """Lambda applied at every step of a state (epochs x steps_per_epoch), as `update_reg` sets it."""
    lam = torch.zeros((), dtype=torch.float32)   # the reference's `reg` entry of a marked weight
    base = torch.zeros((), dtype=torch.float32)  # its `reg_` entry (x^2, x^3, exp)
    j, e = steps_per_epoch, math.exp(1)
    out = []
    for _ in range(epochs):
        for i in range(steps_per_epoch):
            if reg_scale * i < 1:
                if schedule == "x":
                    lam += reg_scale
                elif schedule in ("x^2", "x^3", "exp"):
                    base += reg_scale
                    lam = base ** 2 if schedule == "x^2" else base ** 3 if schedule == "x^3" else \
                        torch.tensor(np.exp(base.numpy()))
                elif schedule == "exp_custom":
                    lam = torch.tensor(1 / (e - 1) * reg_scale * (math.exp((i + 1) / j) - 1), dtype=torch.float32)
                else:
                    lam = torch.tensor(1 / (e - 1) * reg_scale * (math.exp((i + 1) ** exponents / j ** exponents) - 1),
                                       dtype=torch.float32)
            out.append(float(lam))
    return out
