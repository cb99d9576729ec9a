"""DiffRate's rate search: per-block kept token counts learned by gradient descent, the model's weights frozen.

Each block has two proxies (prune, merge), as the authors' `DiffRate/ddp.py`: candidate kept patch counts
P, P - g, ... (g = `granularity`; block 0 has the single candidate P: it never compresses), zero-initialised
logits, and a kept count ceil(sum candidate x softmax(logits)) + prefix tokens whose rounding passes the
gradient straight through. The token mask keeps the first `kept` positions (0/1 forward), its gradient
being that of each position's probability of being kept. The MAC count of the schedule is differentiable
through those counts (tokens reaching a block's MLP = min(entering, prune, merge), the gradient going to both
counts, as the authors' `ste_min`), with the project's analytic formula (`measure/analytic.py`).

Loss per batch: lamb x (MAC ratio - target_ratio)^2 + the distance of the output to the unpruned model's on
the same images (soft cross-entropy to its class probabilities for a classifier; 1 - cosine of the pooled
features for an encoder). The authors' loss is the labels' cross-entropy, and their MAC term is in GFLOPs;
calibration batches carry no labels here, and a ratio makes `lamb` mean the same on every model size.
AdamW (weight decay 0) on the logits only, learning rate cosine-decayed from `lr` to `min_lr` over every step;
the model runs in eval mode (no dropout), so the search has no random draw: the same batches give the same
rates. The authors search for 3 ImageNet epochs at lr 0.01; a calibration set is far smaller, so the
defaults take more passes over it at a larger rate. The final counts are read from the final logits.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from ..families import Family
from ..measure.analytic import analytic_macs
from .importance import CountingIterable


class _Ceil(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.ceil(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


class _Min(torch.autograd.Function):
    """min(entering, prune, merge) forward; backward only to the two kept counts (the authors' `ste_min`)."""

    @staticmethod
    def forward(ctx, entering, prune, merge):
        return torch.minimum(torch.minimum(entering, prune), merge)

    @staticmethod
    def backward(ctx, grad):
        return None, grad, grad


class KeptCountProxy:
    """A block's differentiable kept count: a softmax over candidate counts (the authors' `DiffRate` module)."""

    def __init__(self, patches: int, n_prefix: int, granularity: int, dtype=torch.float64):
        self.n_prefix, self.n_tokens = n_prefix, patches + n_prefix
        self.candidates = torch.arange(patches, 0, -granularity, dtype=dtype)
        self.logits = torch.zeros_like(self.candidates, requires_grad=True)

    def kept_number(self) -> torch.Tensor:
        """Kept tokens, prefix included (an integer value; gradient straight through the rounding)."""
        self._probability = self.logits.softmax(dim=-1)
        return _Ceil.apply(self.candidates @ self._probability) + self.n_prefix

    def token_mask(self, upto: int) -> torch.Tensor:
        """(N,) 1 for the kept positions, 0 for positions kept..upto-1, 1 after (masked already); straight-through."""
        positions = torch.arange(self.n_tokens, dtype=self.candidates.dtype)
        kept_probability = ((positions[:, None] < self.candidates[None, :] + self.n_prefix).to(self.candidates.dtype)
                            @ self._probability)
        hard = torch.ones(self.n_tokens, dtype=kept_probability.dtype)
        hard[int(self.kept_number().detach()):int(upto)] = 0
        return hard - kept_probability.detach() + kept_probability

    def value(self) -> int:
        with torch.no_grad():
            return int(self.kept_number())


def mac_ratio(dims, kept: list[tuple[torch.Tensor, torch.Tensor]], baseline: float) -> torch.Tensor:
    """Differentiable MACs of the schedule the kept counts give, over the unpruned model's."""
    entering = torch.tensor(float(dims.num_tokens()), dtype=torch.float64)
    total = float(dims.patch_embed_macs())
    for block, (prune, merge) in zip(dims.blocks, kept):
        out = _Min.apply(entering, prune.to(torch.float64), merge.to(torch.float64))
        total = total + sum(block.macs(entering, out).values())
        entering = out
    return total / baseline


def output_distance(student: torch.Tensor, teacher: torch.Tensor, is_logits: bool) -> torch.Tensor:
    if is_logits:
        return -(teacher.softmax(dim=-1) * student.log_softmax(dim=-1)).sum(dim=-1).mean()
    return (1 - F.cosine_similarity(student, teacher, dim=-1)).mean()


def _output(family: Family, images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    features, logits = family.features(images)
    return (logits, True) if logits is not None else (features, False)


@contextmanager
def _frozen(model: torch.nn.Module):
    """Eval mode, no parameter gradients, gradients on for the logits; flags put back afterwards."""
    params = list(model.parameters())
    flags, training = [p.requires_grad for p in params], [m.training for m in model.modules()]
    try:
        for p in params:
            p.requires_grad_(False)
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, flag in zip(model.modules(), training):
            m.train(flag)


def search_rates(model, family: Family, calibration, *, target_ratio: float, granularity: int, epochs: int,
                 lr: float, min_lr: float, lamb: float):
    """(prune_kept_num, merge_kept_num, record) searched on `calibration` for `target_ratio` of the MACs."""
    from ..patches.rate_search import SearchRun, searching  # the patches import the strategies package

    counted = CountingIterable(calibration)
    batches = [b[0] if isinstance(b, (list, tuple)) else b for b in counted]
    if not batches:
        raise ValueError("diffrate: calibration holds no image batch; the rates cannot be searched")
    dims = family.dims()
    patches, n_prefix = dims.num_patches(), family.n_prefix
    proxies = [(KeptCountProxy(patches, n_prefix, patches + 1 if layer == 0 else granularity),
                KeptCountProxy(patches, n_prefix, patches + 1 if layer == 0 else granularity))
               for layer in range(dims.depth)]
    baseline = analytic_macs(dims).macs
    logits = [t.logits for pair in proxies for t in pair]
    optimizer = torch.optim.AdamW(logits, lr=lr, weight_decay=0.0)
    steps, step, last = epochs * len(batches), 0, {}
    dtype = next(model.parameters()).dtype
    with _frozen(model):
        with torch.no_grad():
            targets = [_output(family, images.to(dtype)) for images in batches]
        run = SearchRun(family, proxies)
        with searching(family, run):
            for _ in range(epochs):
                for images, (teacher, is_logits) in zip(batches, targets):
                    for group in optimizer.param_groups:
                        group["lr"] = min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * step / steps))
                    student, _ = _output(family, images.to(dtype))
                    ratio = mac_ratio(dims, run.kept, baseline)
                    distance = output_distance(student, teacher, is_logits)
                    loss = lamb * (ratio - target_ratio) ** 2 + distance
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    step += 1
                    last = {"proxy_mac_ratio": float(ratio.detach()), "output_distance": float(distance.detach())}
    prune = [p.value() for p, _ in proxies]
    merge = [m.value() for _, m in proxies]
    schedule = _schedule(prune, merge, dims.num_tokens(), n_prefix)
    achieved = analytic_macs(dims, schedule).macs / baseline
    record = {"target_ratio": target_ratio, "analytic_mac_ratio": achieved, "steps": steps,
              "last_step": last, "calibration": counted.summary()}
    return prune, merge, record


def _schedule(prune: list[int], merge: list[int], n_tokens: int, n_prefix: int) -> dict:
    """Tokens entering each block and reaching its MLP for fixed kept counts (as `DiffRate.plan_block`)."""
    entering, mlp = [], []
    for p, m in zip(prune, merge):
        entering.append(n_tokens)
        n_tokens = min(n_tokens, max(min(p, m), n_prefix + 1))
        mlp.append(n_tokens)
    return {"tokens_per_layer": entering, "mlp_tokens_per_layer": mlp}
