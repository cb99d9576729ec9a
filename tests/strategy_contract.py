"""The DESIGN.md contract for one token strategy, as plain functions each strategy's tests call.

Kept apart from the tests so every new strategy checks the same things: bit-exact keep-everything
no-op with a warning, exact restore, per-image decisions, compute really removed, MACs that follow
the token schedule.
"""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import FAMILIES, tiny_timm
from pruning_bench.measure.analytic import analytic_macs, vit_dims
from pruning_bench.measure.flops import count_flops


def family_models():
    """(name, model, run) for every tiny family of conftest."""
    for name in sorted(FAMILIES):
        build, run = FAMILIES[name]
        yield name, build(), run


def images(batch=8, size=32):
    torch.manual_seed(1)
    return torch.randn(batch, 3, size, size)


def check_keep_all_is_exact_noop(name, params, model, run):
    x = images()
    with torch.no_grad():
        expected = run(model, x)
        with pytest.warns(UserWarning, match=name):
            with pb.prune(model, name, **params) as h:
                got = run(model, x)
    assert torch.equal(got, expected)
    assert len(set(h.stats()["tokens_per_layer"])) == 1


def check_reduces_restores_and_is_per_image(name, params, model, run):
    x = images()
    with torch.no_grad():
        expected = run(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an example budget must not be clamped
        h = pb.prune(model, name, **params)
    with torch.no_grad():
        together = run(model, x)
        alone = torch.cat([run(model, x[i : i + 1]) for i in range(len(x))])
        shuffled = run(model, x.flip(0)).flip(0)
        again = run(model, x)
    tokens = h.stats()["tokens_per_layer"]
    h.restore()
    h.restore()
    assert tokens[-1] < tokens[0], tokens  # compute really removed: fewer tokens enter later blocks
    assert not torch.equal(together, expected)
    assert torch.equal(together, again)  # deterministic
    assert torch.allclose(together, alone, atol=1e-4, rtol=0)
    assert torch.allclose(together, shuffled, atol=1e-4, rtol=0)
    now = model.state_dict()
    assert all(torch.equal(state[k], now[k]) for k in state)
    assert [type(m) for m in model.modules()] == classes
    with torch.no_grad():
        assert torch.equal(run(model, x), expected)
    return tokens


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


__all__ = ["family_models", "images", "check_keep_all_is_exact_noop", "check_reduces_restores_and_is_per_image",
           "check_macs_follow_schedule", "vit_b_width", "tiny_timm"]
