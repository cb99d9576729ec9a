"""FLOP counting that follows the tokens that really flow: fvcore plus handles for what it skips.

fvcore (one multiply-accumulate = 1) silently drops `aten::scaled_dot_product_attention` and the
`nn.MultiheadAttention` fast path (`aten::_native_multi_head_attention`), i.e. all of QK^T and AV
and, for open_clip, the q/k/v and output projections too. The handles below count them, and any op
left unsupported that does matrix work makes `count_flops` raise instead of under-counting.
"""
from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import prod
from typing import Any

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from ..errors import UnsupportedModelError
from ..finite_images import refuse_non_finite
from ..families import unlocated_tower
from .analytic import find_blocks, image_tower, locate
from .image_fit import check_channels, fit_dims, naming_size_mismatch


class UncountedMatmulError(RuntimeError):
    """An op doing matrix work was traced but has no counting handle, so the count would be too low."""


# ------------------------------------------------------------------ handles (MACs, fvcore's convention)


def _shape(value) -> list[int]:
    shape = get_shape(value)
    if shape is None:
        raise ValueError(f"no static shape for traced value {value}")
    return list(shape)


def matmul_macs(inputs, outputs) -> int:
    """matmul / mm / bmm with broadcasting: every output element costs K multiply-accumulates."""
    a = _shape(inputs[0])
    k = a[-1]
    return prod(_shape(outputs[0])) * k


def add_matmul_macs(inputs, outputs) -> int:
    """addmm / baddbmm / addmv / _addmm_activation: (bias, a, b, ...) -> the a @ b part only."""
    a = _shape(inputs[1])
    return prod(_shape(outputs[0])) * a[-1]


def addbmm_macs(inputs, outputs) -> int:
    """addbmm sums a batch of products into one matrix: b*n*m*p."""
    a, b = _shape(inputs[1]), _shape(inputs[2])
    return prod(a) * b[-1]


def dot_macs(inputs, outputs) -> int:
    return _shape(inputs[0])[-1]


def outer_macs(inputs, outputs) -> int:
    return prod(_shape(outputs[0]))


def sdpa_macs(inputs, outputs) -> int:
    """QK^T and AV of scaled-dot-product attention: prod(batch, heads, Nq) * Nk * (d + dv).

    A mask or bias input changes no matrix work and is not counted; heads shared across queries
    (grouped-query attention) still cost one product per query head.
    """
    q, k, v = (_shape(x) for x in inputs[:3])
    nk, dv = k[-2], v[-1]
    return prod(q[:-1]) * nk * (q[-1] + dv)


def native_mha_macs(inputs, outputs) -> int:
    """`aten::_native_multi_head_attention` (nn.MultiheadAttention fast path): projections + attention.

    Arguments: query, key, value, embed_dim, num_heads, qkv_weight, qkv_bias, proj_weight, proj_bias, ...
    """
    q, k = _shape(inputs[0]), _shape(inputs[1])
    qkv_w, proj_w = _shape(inputs[5]), _shape(inputs[7])
    inner = qkv_w[0] // 3  # heads * head_dim
    if len(q) == 2:  # unbatched
        q, k = [1, *q], [1, *k]
    batch, nq, e = q
    nk = k[1]
    projections = batch * (nq * e * inner + 2 * nk * e * inner + nq * proj_w[1] * proj_w[0])
    attention = batch * nq * nk * inner * 2
    return projections + attention


_SDPA_OPS = (
    "aten::scaled_dot_product_attention",
    "aten::_scaled_dot_product_attention_math",
    "aten::_scaled_dot_product_flash_attention",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention",
    "aten::_scaled_dot_product_cudnn_attention",
)

def convolution_mode_macs(inputs, outputs) -> int:
    """`aten::_convolution_mode` (a convolution with padding given as a string, e.g. SigLIP's 'valid')."""
    weight = _shape(inputs[1])
    return prod(_shape(outputs[0])) * prod(weight[1:])


EXTRA_HANDLES = {
    "aten::_convolution_mode": convolution_mode_macs,
    **{op: sdpa_macs for op in _SDPA_OPS},
    "aten::_native_multi_head_attention": native_mha_macs,
    # fvcore's matmul handle asserts 2 operands of rank >= 2 and ignores broadcasting of the left one
    "aten::matmul": matmul_macs,
    "aten::mm": matmul_macs,
    "aten::bmm": matmul_macs,
    "aten::mv": matmul_macs,
    "aten::baddbmm": add_matmul_macs,
    "aten::addmm": add_matmul_macs,
    "aten::addmv": add_matmul_macs,
    "aten::_addmm_activation": add_matmul_macs,
    "aten::addbmm": addbmm_macs,
    "aten::dot": dot_macs,
    "aten::vdot": dot_macs,
    "aten::outer": outer_macs,
    "aten::ger": outer_macs,
}

# ops whose work is (mostly) matrix products; if one is left without a handle the count is wrong
_MATMUL_NAMES = {
    "mm", "bmm", "matmul", "addmm", "baddbmm", "addbmm", "addmv", "mv", "dot", "vdot", "inner", "outer",
    "ger", "addr", "tensordot", "linear", "bilinear", "einsum", "chain_matmul", "linalg_multi_dot",
    "linalg_matmul", "cdist", "addmm_activation", "kron", "linalg_vecdot",
}
_MATMUL_PATTERN = re.compile(r"attention|matmul|^conv|convolution")


def is_matmul_like(op: str) -> bool:
    """True for traced ops that may hide matrix work (including opaque Python autograd functions)."""
    if op == "prim::PythonOp":
        return True
    base = op.split("::")[-1].strip("_")
    return base in _MATMUL_NAMES or bool(_MATMUL_PATTERN.search(base))


def make_analysis(tower: nn.Module, images: torch.Tensor, *, handles: bool = True) -> FlopCountAnalysis:
    """A quiet fvcore analysis; with `handles` it also counts attention and the MHA fast path."""
    analysis = FlopCountAnalysis(tower, images)
    if handles:
        analysis.set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    return analysis


@contextmanager
def counting_mode(module: nn.Module):
    """Eval mode and no_grad for one traced forward; every submodule's own mode comes back afterwards."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    logger = logging.getLogger("fvcore.nn.jit_analysis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated")  # says nothing of the run
            yield
    finally:
        logger.setLevel(level)
        for m, training in modes.items():
            m.training = training


def _match_tower(tower: nn.Module, images):
    """Images on the tower's device and dtype (a tuple of inputs is passed through untouched)."""
    param = next(tower.parameters(), None)
    if param is None or not isinstance(images, torch.Tensor):
        return images
    return images.to(device=param.device, dtype=param.dtype if images.is_floating_point() else images.dtype)


# ------------------------------------------------------------------ result


@dataclass
class FlopCount:
    """MACs of one forward of the image tower, per image (mean over the batch that was counted).

    gmacs: 1e9 multiply-accumulates per image (fvcore's "flop"); gflops = 2 x gmacs.
    per_block: GMACs per image of each transformer block, in order.
    unsupported: op -> times seen, for ops fvcore skipped (elementwise work only, else it raises).
    """

    gmacs: float
    per_block: list[float]
    unsupported: dict[str, int]
    note: str
    batch_size: int
    by_operator: dict[str, float] = field(default_factory=dict)
    matmul_like_skipped: dict[str, int] = field(default_factory=dict)
    per_image: list[float] | None = None  # per-image budgets: GMACs of each image run alone (what `gmacs` averages)
    as_run: float | None = None  # per-image budgets: GMACs per image of the padded batch as it runs

    @property
    def padding_overhead(self) -> float | None:
        """Share of extra MACs the batch's padding costs over each image's own tokens (0 = none)."""
        return None if self.as_run is None else self.as_run / self.gmacs - 1

    @property
    def gflops(self) -> float:
        return 2 * self.gmacs

    @property
    def macs(self) -> float:
        return self.gmacs * 1e9

    def as_dict(self) -> dict[str, Any]:
        return {
            "gmacs": self.gmacs,
            "gflops": self.gflops,
            "per_block_gmacs": list(self.per_block),
            "unsupported_ops": dict(self.unsupported),
            "batch_size": self.batch_size,
            "note": self.note,
            **({} if self.per_image is None else {"per_image_gmacs": list(self.per_image), "gmacs_as_run": self.as_run,
                                                 "padding_overhead": self.padding_overhead}),
        }


def check_images(images) -> None:
    """`images` must be one batch (B, C, H, W) of at least one image: a clear error, not one from inside a trace.
    A tuple of inputs (for a module that is not an image tower) only needs to be a non-empty tuple of tensors."""
    if isinstance(images, (list, tuple)) and images and all(isinstance(t, torch.Tensor) for t in images):
        return
    first = images
    if not isinstance(first, torch.Tensor):
        raise ValueError(f"images must be a tensor of shape (B, C, H, W), got {type(images).__name__}")
    if first.ndim != 4 or first.shape[0] < 1:
        hint = " (one image: add the batch dimension, images[None])" if first.ndim == 3 else ""
        raise ValueError(f"images must have shape (B, C, H, W) with B >= 1, got {tuple(first.shape)}{hint}")


def count_flops(model: nn.Module, images: torch.Tensor, *, strict: bool = True, family=None) -> FlopCount:
    """Count the MACs of one forward of `model`'s image tower on `images`, pruning included.

    For a CLIP model only `model.visual` runs (never the text tower). The model is traced once in
    eval mode under no_grad, so a seeded random strategy gives the same count every call. Figures
    are per image: the batch total divided by the batch size. When the strategy keeps a different
    number of tokens per image, each image is counted alone (the tokens it really kept) and `gmacs` is
    their mean; `per_image` lists them and `as_run` gives the padded batch's cost. With `strict`, an op that does matrix
    work but has no handle raises `UncountedMatmulError`; otherwise it is listed in
    `matmul_like_skipped` and named in the note. `family`: the model's located family, when the caller
    has it (a model of no supported family is counted as a whole, totals only).
    """
    check_images(images)
    if family is None:
        try:
            family = locate(model)
        except UnsupportedModelError:
            family = None
    dims = fit_dims(family)
    check_channels(dims, images)
    if isinstance(images, torch.Tensor):  # a NaN image would set a per-image strategy's token counts arbitrarily
        refuse_non_finite(images, "count_flops: images")
    tower = family.encoder if family is not None else unlocated_tower(model)
    images = _match_tower(tower, images)
    batch = int((images if isinstance(images, torch.Tensor) else images[0]).shape[0])
    with naming_size_mismatch(dims, images):  # images the model cannot take: named, not a trace's traceback
        if batch > 1 and isinstance(images, torch.Tensor) and _keeps_per_image_counts(family):
            return _count_per_image(model, family, images, strict)
        return _count_as_run(model, family, tower, images, batch, strict)


def _count_as_run(model: nn.Module, family, tower: nn.Module, images, batch: int, strict: bool) -> FlopCount:
    """One traced forward of the whole batch, as it runs."""
    with counting_mode(tower):
        analysis = make_analysis(tower, images)
        total = analysis.total()
        by_module = analysis.by_module()
        by_operator = analysis.by_operator()
        unsupported = dict(analysis.unsupported_ops())
    skipped = {op: n for op, n in unsupported.items() if is_matmul_like(op)}
    if skipped and strict:
        raise UncountedMatmulError(
            f"ops doing matrix work were traced without a counting handle: {skipped}; "
            "add a handle in pruning_bench.measure.flops.EXTRA_HANDLES"
        )
    prefix, blocks = find_blocks(model, family) if family is not None else ("", [])  # not a ViT: totals only
    per_block = [by_module.get(f"{prefix}.{i}", 0) / batch / 1e9 for i in range(len(blocks))]
    note = (
        f"fvcore MACs with handles for scaled_dot_product_attention and _native_multi_head_attention; "
        f"LayerNorm as fvcore's 5 per element; image tower only; per image, mean over {batch} image(s)"
    )
    if skipped:
        note += f"; WARNING matrix work not counted in {sorted(skipped)}"
    return FlopCount(
        gmacs=total / batch / 1e9,
        per_block=per_block,
        unsupported=unsupported,
        note=note,
        batch_size=batch,
        by_operator={op: v / batch / 1e9 for op, v in by_operator.items()},
        matmul_like_skipped=skipped,
    )


def _keeps_per_image_counts(family) -> bool:
    """Whether the located model carries a token strategy that keeps a different number of tokens per image."""
    if family is None:
        return False
    run = getattr(family.vit, "_pb_run", None)
    return bool(getattr(getattr(run, "strategy", None), "per_image", False))


def _count_per_image(model: nn.Module, family, images: torch.Tensor, strict: bool) -> FlopCount:
    """Per-image budgets: each image counted alone (the tokens it really kept, no padding), then the batch
    as it runs (padding included) for `as_run`. The batch goes last, so `h.stats()` describes it."""
    alone = [count_flops(model, images[i:i + 1], strict=strict, family=family) for i in range(images.shape[0])]
    batch = _count_as_run(model, family, family.encoder, images, images.shape[0], strict)
    count = mean_over_batches(alone)
    count.per_image = [c.gmacs for c in alone]
    count.as_run = batch.gmacs
    count.note += f"; each image counted alone (its own tokens); the padded batch costs {batch.gmacs:.6g} GMACs per image"
    return count


def mean_over_batches(counts: list[FlopCount]) -> FlopCount:
    """Per-image mean over several counted batches (weighted by batch size).

    For strategies that keep a different number of tokens per image, this is the figure to report
    for an evaluation: the mean over every image counted, which the note says.
    """
    if not counts:
        raise ValueError("no counts to average")
    total = sum(c.batch_size for c in counts)

    def mean(values):
        return sum(v * c.batch_size for v, c in zip(values, counts)) / total

    per_block = [mean(v) for v in zip(*(c.per_block for c in counts))]
    operators = sorted({op for c in counts for op in c.by_operator})
    unsupported: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for c in counts:
        for op, n in c.unsupported.items():
            unsupported[op] = unsupported.get(op, 0) + n
        for op, n in c.matmul_like_skipped.items():
            skipped[op] = skipped.get(op, 0) + n
    note = counts[0].note.split("; per image")[0] + f"; per image, mean over {total} image(s) in {len(counts)} batch(es)"
    if skipped:
        note += f"; WARNING matrix work not counted in {sorted(skipped)}"
    return FlopCount(
        gmacs=mean([c.gmacs for c in counts]),
        per_block=per_block,
        unsupported=unsupported,
        note=note,
        batch_size=total,
        by_operator={op: mean([c.by_operator.get(op, 0.0) for c in counts]) for op in operators},
        matmul_like_skipped=skipped,
    )


def count_flops_plain(model: nn.Module, images: torch.Tensor) -> tuple[float, dict[str, int]]:
    """GMACs per image as plain fvcore reports them (no extra handles), with its skipped ops."""
    tower = image_tower(model)
    images = _match_tower(tower, images)
    with counting_mode(tower):
        analysis = make_analysis(tower, images, handles=False)
        return analysis.total() / images.shape[0] / 1e9, dict(analysis.unsupported_ops())


def count_flops_torch(model: nn.Module, images: torch.Tensor) -> tuple[float, dict[str, int]]:
    """GMACs per image from `torch.utils.flop_counter` (its FLOPs / 2), with GMACs per op."""
    from torch.utils.flop_counter import FlopCounterMode

    tower = image_tower(model)
    images = _match_tower(tower, images)
    counter = FlopCounterMode(display=False)
    # its module tracker trips over views of parameters that require grad under no_grad
    flags = {p: p.requires_grad for p in tower.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        with counting_mode(tower), counter:
            tower(images)
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
    batch = images.shape[0]
    per_op = {str(op): n / 2 / batch / 1e9 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return counter.get_total_flops() / 2 / batch / 1e9, per_op
