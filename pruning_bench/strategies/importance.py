"""Importance of attention heads, MLP neurons and whole blocks, computed without labels.

`magnitude` needs no data: the L2 norm of a head's q/k/v rows and output-projection columns, or of a
neuron's fc1 row(s) and fc2 column.

The data-driven scores run the model on `calibration` batches (images only; labels, if a batch
carries them, are ignored). The target is the unpruned model's own output, chosen so that its
gradient at the unpruned point is not zero (a distance to the unpruned features would be):
- a classifier (timm ViT with a head): cross-entropy against its own argmax pseudo-labels;
- a feature encoder (CLIP image tower, timm ViT without head): InfoNCE between the normalised
  features and the detached features of the same forward, over the batch, logit scale 10, each
  image's target being itself. This needs batches of at least 2 images; the scores then depend on
  which images share a calibration batch (the pruned model, once built, does not).
Losses are summed over images, so per-image gradients do not shrink with the batch size.

Head and neuron masks are per image (B, units), all ones, multiplied into the input of the output
projection by temporary pre-hooks, so the gradient of mask[n] is image n's own gradient:
- `fisher`  = sum over images of g_n^2 (empirical Fisher information of the mask);
- `taylor`  = sum over images of |m g_n| with m = 1 (first-order loss change of removing the unit);
- `activation` = mean over images and tokens of the unit's output norm (a head's slice of the
  concatenated head outputs, a neuron's |activation|); forward only.
Block scores (layer_drop):
- `fisher`: the same, for a per-image gate g on the block's residual update, x + g (f(x) - x);
- `grad_norm`: L2 norm of the gradient of the block's parameters, mean over batches;
- `activation`: mean over tokens of ||f(x) - x|| / ||x|| (how much the block changes the stream);
- `cosine`: mean over tokens of 1 - cos(x, f(x)).

Scoring runs in float32 (on a float32 copy when the model is in lower precision), in eval mode, with
gradients enabled even under `torch.no_grad()`, and leaves the model as it found it: parameters,
`requires_grad` flags, training flags, modules and hooks.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..families import Family, locate

UNIT_IMPORTANCES = ("magnitude", "taylor", "fisher", "activation")
BLOCK_IMPORTANCES = ("fisher", "grad_norm", "activation", "cosine")
FEATURE_LOGIT_SCALE = 10.0


# ---------------------------------------------------------------- weight magnitude (pure functions)


def head_magnitude(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(heads,) L2 norm of each head's q/k/v rows (A, D) and output columns (D, A)."""
    sq = sum(w.detach().float().reshape(num_heads, -1).pow(2).sum(1) for w in (q, k, v))
    sq = sq + out.detach().float().reshape(out.shape[0], num_heads, -1).pow(2).sum(dim=(0, 2))
    return sq.sqrt().cpu()


def neuron_magnitude(inputs: list[torch.Tensor], out: torch.Tensor) -> torch.Tensor:
    """(hidden,) L2 norm of each neuron's input rows (hidden, D) and output column (D, hidden)."""
    sq = sum(w.detach().float().pow(2).sum(1) for w in inputs) + out.detach().float().pow(2).sum(0)
    return sq.sqrt().cpu()


def magnitude_scores(family: Family) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    heads, neurons = [], []
    for b in family.blocks:
        w = family.attention_view(b).weights()
        heads.append(head_magnitude(w.q, w.k, w.v, w.out, w.num_heads))
        neurons.append(neuron_magnitude(*family.mlp_view(b).weights()))
    return heads, neurons


# ---------------------------------------------------------------- calibration and target


class CountingIterable:
    """Passes calibration batches through and counts them, for the resolved parameters."""

    def __init__(self, source):
        self.source, self.batches, self.images = source, 0, 0

    def __iter__(self):
        for item in self.source:
            first = item[0] if isinstance(item, (list, tuple)) and item else item
            self.batches += 1
            self.images += int(first.shape[0]) if hasattr(first, "shape") and len(first.shape) else 0
            yield item

    def summary(self) -> dict:
        return {"batches": self.batches, "images": self.images}


def calibration_batches(calibration, owner: str, importance: str):
    """Yield the image tensors (B, C, H, W) of `calibration`; a clear error when it is missing or wrong."""
    if calibration is None:
        raise ValueError(
            f"{owner}: importance={importance!r} is data-driven and needs calibration=<iterable of image batches>"
        )
    count = 0
    for item in calibration:
        if isinstance(item, (list, tuple)) and item:
            item = item[0]  # (images, labels): labels are not used
        if not isinstance(item, torch.Tensor) or item.ndim != 4 or not item.is_floating_point():
            raise ValueError(f"{owner}: calibration must yield float image tensors (B, C, H, W), got {_describe(item)}")
        count += 1
        yield item
    if count == 0:
        raise ValueError(f"{owner}: calibration is empty; give at least one batch of images")


def _describe(item) -> str:
    if isinstance(item, torch.Tensor):
        return f"a {item.dtype} tensor of shape {tuple(item.shape)}"
    return type(item).__name__


def label_free_loss(output: torch.Tensor, classifier: bool) -> torch.Tensor:
    """Loss of the model against its own (detached) prediction; nonzero gradient at the unpruned point."""
    output = output.float()
    if classifier:
        return F.cross_entropy(output, output.detach().argmax(dim=-1), reduction="sum")
    if output.shape[0] < 2:
        raise ValueError("calibration batches for an image-feature encoder need at least 2 images (the target "
                         "contrasts each image's features with the others')")
    features = F.normalize(output, dim=-1)
    logits = FEATURE_LOGIT_SCALE * features @ features.detach().T
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device), reduction="sum")


def _encoder(model: nn.Module, family: Family):
    """(function image -> output, whether the output is class logits): a classifier's logits, else features."""
    with torch.no_grad():
        probe = next(model.parameters())
        dims = family.dims()
        blank = torch.zeros(1, dims.in_chans, *dims.image_size, device=probe.device, dtype=probe.dtype)
        classifier = family.features(blank)[1] is not None

    def run(x):
        features, logits = family.features(x)
        return logits if classifier else features

    return run, classifier


@contextmanager
def scoring_session(model: nn.Module, family: Family, shared_mha: bool):
    """Yield (model in float32, its family, run, classifier), everything restored on exit.

    `shared_mha`: stand an equivalent attention sharing the parameters in for every attention whose
    forward never calls its output Linear as a module (`nn.MultiheadAttention`), so hooks on it fire."""
    if any(p.is_floating_point() and p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()
        family = locate(model)  # the float32 copy's own blocks
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    swaps = []
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        model.eval()
        if shared_mha:
            for b in family.blocks:
                view = family.attention_view(b)
                if not view.calls_out_linear:
                    swaps.append((b, family.replace_part(b, "attn", view.sliced(None))))
        run, classifier = _encoder(model, family)
        with torch.inference_mode(False), torch.enable_grad():
            yield model, family, run, classifier
    finally:
        for b, attn in reversed(swaps):
            family.replace_part(b, "attn", attn)
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def _images(x: torch.Tensor, like: nn.Module) -> torch.Tensor:
    device = next(like.parameters()).device
    return x.to(device=device, dtype=torch.float32).clone()  # clone: never an inference-mode tensor


# ---------------------------------------------------------------- heads and neurons


def unit_scores(model: nn.Module, family: Family, importance: str, calibration: Iterable | None = None,
                owner: str = "head_prune"):
    """(head scores, neuron scores): one (heads,) and one (hidden,) float tensor per block, higher = keep."""
    if importance == "magnitude":
        return magnitude_scores(family)
    batches = calibration_batches(calibration, owner, importance)
    with scoring_session(model, family, shared_mha=True) as (model, family, run, classifier):
        blocks = family.blocks
        n_heads, n_hidden = family.block_widths(blocks)
        head_acc = [torch.zeros(h) for h in n_heads]
        neuron_acc = [torch.zeros(h) for h in n_hidden]
        masks: dict[tuple[str, int], torch.Tensor] = {}

        def head_hook(i):
            def hook(module, args):
                x = args[0]
                B, N, A = x.shape
                xh = x.reshape(B, N, n_heads[i], A // n_heads[i])
                if importance == "activation":
                    head_acc[i].add_(xh.detach().float().norm(dim=-1).mean(dim=1).sum(dim=0).cpu())
                    return None
                mask = masks[("head", i)]
                return ((xh * mask[:, None, :, None].to(x.dtype)).reshape(B, N, A),) + tuple(args[1:])
            return hook

        def neuron_hook(i):
            def hook(module, args):
                x = args[0]
                if importance == "activation":
                    neuron_acc[i].add_(x.detach().float().abs().mean(dim=1).sum(dim=0).cpu())
                    return None
                return (x * masks[("neuron", i)][:, None, :].to(x.dtype),) + tuple(args[1:])
            return hook

        handles = []
        try:
            for i, b in enumerate(blocks):
                handles.append(family.attention_view(b).out_linear().register_forward_pre_hook(head_hook(i)))
                handles.append(family.mlp_view(b).out_linear().register_forward_pre_hook(neuron_hook(i)))
            images = 0
            for x in batches:
                x = _images(x, model)
                B = x.shape[0]
                images += B
                if importance == "activation":
                    with torch.no_grad():
                        run(x)
                    continue
                masks.clear()
                for i in range(len(blocks)):
                    masks[("head", i)] = torch.ones(B, n_heads[i], device=x.device, requires_grad=True)
                    masks[("neuron", i)] = torch.ones(B, n_hidden[i], device=x.device, requires_grad=True)
                keys = list(masks)
                loss = label_free_loss(run(x), classifier)
                grads = torch.autograd.grad(loss, [masks[k] for k in keys], allow_unused=True)
                for (kind, i), g in zip(keys, grads):
                    if g is None:
                        continue
                    g = g.detach().float()
                    score = g.pow(2).sum(0) if importance == "fisher" else g.abs().sum(0)
                    (head_acc if kind == "head" else neuron_acc)[i].add_(score.cpu())
        finally:
            for h in handles:
                h.remove()
            masks.clear()
    if importance == "activation":
        head_acc = [a / images for a in head_acc]
        neuron_acc = [a / images for a in neuron_acc]
    return head_acc, neuron_acc


# ---------------------------------------------------------------- whole blocks


def block_scores(model: nn.Module, family: Family, importance: str, calibration: Iterable | None,
                 owner: str = "layer_drop") -> torch.Tensor:
    """(blocks,) importance of each block, higher = keep."""
    batches = calibration_batches(calibration, owner, importance)
    with scoring_session(model, family, shared_mha=False) as (model, family, run, classifier):
        blocks = family.blocks
        L = len(blocks)
        acc = torch.zeros(L, dtype=torch.float64)
        gates: dict[int, torch.Tensor] = {}

        def block_hook(i):
            def hook(module, args, out):
                x = args[0]
                if out.shape != x.shape:
                    raise ValueError(f"{owner}: block {i} changes the token count; score blocks before attaching a "
                                     "token strategy")
                if importance == "fisher":
                    return x + gates[i][:, None, None].to(x.dtype) * (out - x)
                xf, of = x.detach().float(), out.detach().float()
                if importance == "cosine":
                    value = 1 - F.cosine_similarity(xf, of, dim=-1)
                else:
                    value = (of - xf).norm(dim=-1) / xf.norm(dim=-1).clamp_min(1e-12)
                acc[i] += value.mean(dim=1).sum().item()
                return None
            return hook

        params = [list(b.parameters()) for b in blocks]
        handles = []
        try:
            for i, b in enumerate(blocks):
                handles.append(b.register_forward_hook(block_hook(i)))
            if importance == "grad_norm":
                for ps in params:
                    for p in ps:
                        p.requires_grad_(True)
            images = batches_seen = 0
            for x in batches:
                x = _images(x, model)
                B = x.shape[0]
                images += B
                batches_seen += 1
                if importance in ("cosine", "activation"):
                    with torch.no_grad():
                        run(x)
                    continue
                if importance == "fisher":
                    gates.clear()
                    gates.update({i: torch.ones(B, device=x.device, requires_grad=True) for i in range(L)})
                    grads = torch.autograd.grad(label_free_loss(run(x), classifier), [gates[i] for i in range(L)],
                                                allow_unused=True)
                    for i, g in enumerate(grads):
                        if g is not None:
                            acc[i] += g.detach().double().pow(2).sum().item()
                    continue
                flat = [p for ps in params for p in ps]
                grads = torch.autograd.grad(label_free_loss(run(x), classifier), flat, allow_unused=True)
                start = 0
                for i, ps in enumerate(params):
                    chunk = [g for g in grads[start:start + len(ps)] if g is not None]
                    start += len(ps)
                    acc[i] += sum(g.double().pow(2).sum() for g in chunk).sqrt().item() if chunk else 0.0
        finally:
            for h in handles:
                h.remove()
            gates.clear()
    if importance in ("cosine", "activation"):
        acc /= images
    elif importance == "grad_norm":
        acc /= batches_seen
    return acc.float()
