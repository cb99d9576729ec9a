"""MACs at ViT-B/16 scale: fvcore's count per block within 1% of the analytic formula for the token
schedule a strategy produced, plus the work it declares on purpose.

The contract itself (restore, keep-all no-op, per-image decisions, MACs on the tiny models of every
family) is tests/test_contract.py, parametrised over every registered strategy; this check adds the
real width, where a formula error of a few percent would hide in the tiny models' norms.
"""
import torch

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.measure.analytic import analytic_macs, vit_dims
from pruning_bench.measure.flops import count_flops


def vit_b_width(depth=3):
    """ViT-B/16 widths at 224 px with few blocks: the MAC check of test_flops.py at the real scale."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=depth, num_heads=12).eval()


def check_macs_follow_schedule(name, params, extra_per_block=None, model=None):
    """fvcore's count within 1% of the analytic formula for the schedule the strategy produced.

    `extra_per_block(dims, tokens_in)` adds work the strategy does on purpose beyond the formula."""
    model = model or vit_b_width()
    x = torch.randn(1, 3, 224, 224)
    baseline = analytic_macs(model)
    with pb.prune(model, name, **params) as h:
        count = count_flops(model, x)
        stats = h.stats()
    analytic = analytic_macs(model, stats)
    extra = [0] * len(analytic.per_block)
    if extra_per_block is not None:
        extra = [extra_per_block(vit_dims(model), n) for n in stats["tokens_per_layer"]]
    expected = analytic.macs + sum(extra)
    assert abs(count.macs - expected) / expected < 0.01, (count.gmacs, expected / 1e9)
    for fv, an, more in zip(count.per_block, analytic.per_block, extra):
        assert abs(fv * 1e9 - an - more) / (an + more) < 0.01
    assert not count.matmul_like_skipped
    assert count.macs < 0.97 * baseline.macs
    return stats


__all__ = ["check_macs_follow_schedule", "vit_b_width", "tiny_timm"]
