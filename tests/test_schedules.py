"""Multi-stage schedules (prune_layers + keep_rate) of the pruning token strategies (their contract: test_contract.py)."""
import math

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.measure.analytic import analytic_macs, vit_dims
from pruning_bench.registry import get_strategy

PRUNERS = ["anchor_diversity", "cls_topk", "random_drop", "evit", "dpc_knn", "kmedoids"]


def images(batch=8):
    torch.manual_seed(1)
    return torch.randn(batch, 3, 32, 32)


def expected_schedule(n_tokens, n_prefix, depth, layers, rate, extra=0):
    """Tokens entering each block by EViT's rule, written out independently of the package."""
    tokens = []
    for block in range(depth):
        tokens.append(n_tokens)
        if block in layers:
            kept = math.ceil(rate * (n_tokens - n_prefix))
            if kept + extra < n_tokens - n_prefix:
                n_tokens = n_prefix + kept + extra
    return tokens


@pytest.mark.parametrize("name", ["anchor_diversity", "cls_topk", "random_drop"])
@pytest.mark.parametrize("rate", [0.5, 0.3])
def test_rate_schedule_follows_evit_rounding(name, rate):
    model = tiny_timm()
    with pb.prune(model, name, prune_layers=[0, 2], keep_rate=rate) as h, torch.no_grad():
        model(images(2))
    assert h.stats()["tokens_per_layer"] == expected_schedule(65, 1, 4, [0, 2], rate)
    assert h.describe()[0]["params"]["start_layer"] is None  # the absolute form is recorded as not applying


def test_absolute_form_is_still_the_default():
    model = tiny_timm()
    with pb.prune(model, "cls_topk", keep=20) as h, torch.no_grad():
        model(images(2))
    assert h.stats()["tokens_per_layer"] == [65, 65, 21, 21]


@pytest.mark.parametrize("name,absolute", [("cls_topk", {"keep": 20}), ("random_drop", {"start_layer": 2}),
                                           ("anchor_diversity", {"top_m": 5})])
def test_both_forms_is_an_error_naming_both(name, absolute):
    key = next(iter(absolute))
    with pytest.raises(ValueError, match=rf"prune_layers.*keep_rate.*{key}"):
        pb.prune(tiny_timm(), name, prune_layers=[1], keep_rate=0.5, **absolute)


@pytest.mark.parametrize("name", PRUNERS)
@pytest.mark.parametrize("params,match", [
    ({"prune_layers": [2, 1], "keep_rate": 0.5}, "sorted"),
    ({"prune_layers": [1, 1], "keep_rate": 0.5}, "repeats"),
    ({"prune_layers": [1, 4], "keep_rate": 0.5}, r"prune_layers=\[1, 4\].*out of range \[0, 3\]"),
    ({"prune_layers": [-1], "keep_rate": 0.5}, r"prune_layers\[0\]=-1"),
    ({"prune_layers": [], "keep_rate": 0.5}, "non-empty"),
    ({"prune_layers": [1], "keep_rate": 0.0}, r"keep_rate=0.0 is out of range \(0.0, 1.0\]"),
    ({"prune_layers": [1], "keep_rate": 1.5}, r"keep_rate=1.5 is out of range"),
])
def test_schedule_checked_before_the_model_is_touched(name, params, match):
    model = tiny_timm()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=match):
        pb.prune(model, name, **params)
    assert [type(m) for m in model.modules()] == before


def test_half_a_schedule_is_an_error():
    with pytest.raises(ValueError, match="prune_layers and keep_rate go together; prune_layers is missing"):
        pb.prune(tiny_timm(), "cls_topk", keep_rate=0.5)


def vit_b_width(depth=3):
    """ViT-B/16 widths at 224 px with few blocks: MACs at the real scale, quickly."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=depth, num_heads=12).eval()


def clustering_overhead(name, n_tokens, dims):
    """MACs a clustering step spends on purpose beyond the block formula (its distance and attention products)."""
    patches, d = n_tokens - dims.num_prefix_tokens, dims.embed_dim
    distances = patches * patches * (d + 2)
    if name == "kmedoids":
        return distances + n_tokens * n_tokens * dims.blocks[0].attn_dim  # attention received: every query row
    return distances if name == "dpc_knn" else 0


@pytest.mark.parametrize("name", PRUNERS)
def test_counted_macs_follow_the_schedule(name):
    model, x = vit_b_width(), torch.randn(1, 3, 224, 224)
    params = {"prune_layers": [0, 1], "keep_rate": 0.7}
    if get_strategy(name).placement == "exit":  # reduced between blocks: blocks 1 and 2 receive what 0 and 1 leave
        params["prune_layers"] = [1, 2]
    if name == "anchor_diversity":
        params["k_anchors"] = 10
    with pb.prune(model, name, **params) as h:
        count = pb.count_flops(model, x)
        stats = h.stats()
    dims = vit_dims(model)
    analytic = analytic_macs(model, stats)
    extra = sum(clustering_overhead(name, n, dims) for i, n in enumerate(stats["tokens_per_layer"]) if i in (0, 1))
    assert stats["tokens_per_layer"] == expected_schedule(197, 1, 3, [0, 1], 0.7, extra=int(name == "evit"))
    assert abs(count.macs - analytic.macs - extra) / (analytic.macs + extra) < 0.01
    assert count.macs < 0.9 * analytic_macs(model).macs
