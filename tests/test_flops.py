"""FLOP counts that follow the tokens: fvcore with attention handles against the analytic formula."""
import functools
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_bench as pb
from conftest import timm_trunk_clip, tiny_open_clip, tiny_timm
from pruning_bench.measure.analytic import (
    BlockDims,
    TokenSchedule,
    analytic_macs,
    find_blocks,
    ideal_speedup,
    vit_dims,
)
from pruning_bench.measure.flops import (
    UncountedMatmulError,
    count_flops,
    count_flops_plain,
    is_matmul_like,
    make_analysis,
    mean_over_batches,
)


def vit_b16_formula(tokens=197, d=768, depth=12, mlp_ratio=4):
    """The issue's formula for ViT-B/16 at 224 px, written out independently of the package."""
    patch_embed = 196 * (3 * 16 * 16) * d
    block = 4 * tokens * d**2 + 2 * tokens**2 * d + 2 * mlp_ratio * tokens * d**2
    return patch_embed + depth * block


def rel(a, b):
    return abs(a - b) / b


# ------------------------------------------------------------------ handles on single ops


class SDPA(nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def test_sdpa_counts_qk_and_av_and_ignores_the_mask():
    q, k = torch.randn(2, 3, 7, 8), torch.randn(2, 3, 11, 8)
    v = torch.randn(2, 3, 11, 5)
    expected = 2 * 3 * (7 * 11 * 8 + 7 * 11 * 5)
    for mask in (None, torch.randn(2, 1, 1, 11)):
        analysis = make_analysis(SDPA(), (q, k, v, mask))
        assert analysis.total() == expected
        assert not analysis.unsupported_ops()


class MHA(nn.Module):
    def __init__(self, need_weights):
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        self.need_weights = need_weights

    def forward(self, x):
        return self.attn(x, x, x, need_weights=self.need_weights)[0]


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("grad", [False, True], ids=["fast_path", "slow_path"])
def test_multihead_attention_counted_on_fast_and_slow_path(need_weights, grad):
    x = torch.randn(2, 10, 64)
    model = MHA(need_weights).eval()
    with torch.set_grad_enabled(grad):
        analysis = make_analysis(model, x)
        total, ops = analysis.total(), set(analysis.by_operator())
    assert total == 2 * (4 * 10 * 64 * 64 + 2 * 10 * 10 * 64)
    # make sure both code paths were really exercised
    assert ("_native_multi_head_attention" in ops) == (not grad)


class Distances(nn.Module):
    def forward(self, a, b):
        return torch.cdist(a, b)


def test_unhandled_matrix_op_raises_instead_of_undercounting():
    a, b = torch.randn(1, 5, 4), torch.randn(1, 6, 4)
    with pytest.raises(UncountedMatmulError, match="cdist"):
        count_flops(Distances(), (a, b))
    lenient = count_flops(Distances(), (a, b), strict=False)
    assert lenient.matmul_like_skipped == {"aten::cdist": 1}
    assert "aten::cdist" in lenient.note


def test_matmul_like_names():
    for op in ("aten::cdist", "aten::scaled_dot_product_attention", "aten::_convolution", "aten::tensordot",
               "aten::_scaled_dot_product_flash_attention_for_cpu", "prim::PythonOp", "aten::baddbmm"):
        assert is_matmul_like(op), op
    for op in ("aten::add", "aten::gelu", "aten::cummax", "aten::scatter_reduce", "aten::softmax", "aten::topk"):
        assert not is_matmul_like(op), op


# ------------------------------------------------------------------ small models, every family


SMALL = {
    "timm": lambda: tiny_timm(),
    "timm_registers": lambda: tiny_timm(reg_tokens=4, global_pool="avg"),
    "timm_map_head": lambda: tiny_timm(global_pool="map"),
    "open_clip": lambda: tiny_open_clip(),
    "open_clip_timm_trunk": timm_trunk_clip,
}


def small_images(model, batch=2):
    size = vit_dims(model).image_size
    torch.manual_seed(0)
    return torch.randn(batch, 3, *size)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_models_match_analytic(name):
    model = SMALL[name]()
    count = count_flops(model, small_images(model))
    analytic = analytic_macs(model)
    # at width 64, fvcore's LayerNorm estimate (5 per element) is ~1% of the total: compare matrix work,
    # head included
    matrix = count.macs - count.by_operator.get("layer_norm", 0) * 1e9
    assert rel(matrix, analytic.total_macs) < 0.005, (count.gmacs, analytic.total_macs / 1e9)
    assert count.gflops == pytest.approx(2 * count.gmacs)
    assert len(count.per_block) == vit_dims(model).depth
    for fv, an in zip(count.per_block, analytic.per_block):
        assert rel(fv * 1e9, an) < 0.02
    assert not count.matmul_like_skipped


def test_counts_are_per_image_and_say_so():
    model = tiny_timm()
    one, three = count_flops(model, small_images(model, 1)), count_flops(model, small_images(model, 3))
    assert one.gmacs == pytest.approx(three.gmacs)
    assert three.batch_size == 3 and "mean over 3 image(s)" in three.note


def test_mean_over_batches_weights_by_images():
    model = tiny_timm()
    images = small_images(model, 3)
    with pb.prune(model, "cls_topk", keep=20):
        pruned = count_flops(model, images[:1])
    full = count_flops(model, images[1:])
    mean = mean_over_batches([pruned, full])
    assert mean.gmacs == pytest.approx((pruned.gmacs + 2 * full.gmacs) / 3)
    assert mean.per_block[3] == pytest.approx((pruned.per_block[3] + 2 * full.per_block[3]) / 3)
    assert mean.batch_size == 3 and "mean over 3 image(s) in 2 batch(es)" in mean.note


def test_clip_counts_only_the_image_tower():
    model = tiny_open_clip()
    fired = []
    model.transformer.register_forward_hook(lambda *a: fired.append("text"))
    images = small_images(model)
    assert count_flops(model, images).gmacs == count_flops(model.visual, images).gmacs
    assert fired == []


def test_training_mode_and_grad_mode_come_back():
    model = tiny_timm().train()
    frozen = set(model.blocks[1].eval().modules())  # a mixed state must survive too
    count_flops(model, small_images(model))
    assert all(m.training == (m not in frozen) for m in model.modules())
    assert torch.is_grad_enabled()


def test_counting_follows_a_token_strategy_on_a_small_model():
    model = tiny_timm()
    images = small_images(model)
    baseline = count_flops(model, images)
    with pb.prune(model, "cls_topk", keep=20) as h:
        pruned = count_flops(model, images)
        analytic = analytic_macs(model, h.stats())
    assert pruned.gmacs < baseline.gmacs
    matrix = pruned.macs - pruned.by_operator.get("layer_norm", 0) * 1e9
    assert rel(matrix, analytic.total_macs) < 0.005
    assert count_flops(model, images).gmacs == baseline.gmacs  # restored


STRUCTURED = {
    "head_prune": {"head_ratio": 0.5, "mlp_ratio": 0.25, "importance": "magnitude"},
    "layer_drop": {"keep_layers": 2, "importance": "cosine"},
}


@pytest.mark.parametrize("strategy", sorted(STRUCTURED))
@pytest.mark.parametrize("build", [tiny_timm, tiny_open_clip], ids=["timm", "open_clip"])
def test_sliced_widths_and_depth_are_read_from_the_pruned_model(build, strategy):
    model = build()
    images = small_images(model)
    params = dict(STRUCTURED[strategy])
    if strategy == "layer_drop":
        params["calibration"] = [images]
    baseline = analytic_macs(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pb.prune(model, strategy, **params) as h:
            count = count_flops(model, images)
            stats = h.stats()
            dims = vit_dims(model)
            analytic = analytic_macs(model)
    head_dim = 16
    assert [b.attn_dim for b in dims.blocks] == [n * head_dim for n in stats["heads_per_layer"]]
    assert [b.mlp_hidden for b in dims.blocks] == stats["mlp_hidden_per_layer"]
    assert dims.depth == len(stats["layers_kept"])
    assert analytic.macs < 0.8 * baseline.macs
    matrix = count.macs - count.by_operator.get("layer_norm", 0) * 1e9
    assert rel(matrix, analytic.total_macs) < 0.005


# ------------------------------------------------------------------ analytic formula


def test_analytic_formula_by_hand_for_vit_b16():
    model = big_model("timm_vit_b16")
    analytic = analytic_macs(model)
    assert analytic.macs == vit_b16_formula()
    assert analytic.head == 768 * 1000
    assert analytic.gflops == pytest.approx(2 * analytic.gmacs)


def test_vit_b32_has_50_tokens():
    dims = vit_dims(clip_model("ViT-B-32"))
    assert dims.num_tokens() == 50 and dims.patch_size == (32, 32) and dims.depth == 12


def test_schedule_from_stats_uses_mlp_tokens():
    dims = vit_dims(tiny_timm())  # 64 patches + 1, width 64, 4 blocks, mlp 256
    stats = {"tokens_per_layer": [65, 65, 21, 21], "mlp_tokens_per_layer": [65, 21, 21, 21]}
    analytic = analytic_macs(dims, stats)
    d, h = 64, 256
    block1 = 4 * 65 * d * d + 2 * 65**2 * d + 2 * 21 * d * h
    assert analytic.per_block[1] == block1
    assert analytic.per_block_terms[1] == {"attn_linear": 4 * 65 * d * d, "attn_matmul": 2 * 65**2 * d,
                                           "mlp": 2 * 21 * d * h}


def test_missing_mlp_tokens_are_assumed_and_noted():
    dims = vit_dims(tiny_timm())
    analytic = analytic_macs(dims, [65, 65, 21, 21])
    assert analytic.mlp_tokens_per_layer == [65, 21, 21, 21]
    assert any("mlp_tokens_per_layer missing" in n for n in analytic.notes)


def test_per_image_schedules_average_costs_not_tokens():
    dims = vit_dims(tiny_timm())
    per_image = [[65, 65, 11, 11], [65, 65, 41, 41]]
    mean = analytic_macs(dims, TokenSchedule(per_image, per_image))
    each = [analytic_macs(dims, TokenSchedule(t, t)).macs for t in per_image]
    assert mean.macs == pytest.approx(np.mean(each))
    assert mean.tokens_per_layer == [65, 65, 26, 26]
    # averaging the tokens first would under-state the quadratic term
    assert analytic_macs(dims, TokenSchedule([65, 65, 26, 26], [65, 65, 26, 26])).macs < mean.macs
    assert any("mean over images" in n for n in mean.notes)


def test_structured_widths_enter_the_formula():
    dims = vit_dims(tiny_timm())
    sliced = analytic_macs(dims, attn_dims=[64, 32, 64, 16], mlp_hidden=128)
    terms = sliced.per_block_terms[1]
    assert terms["attn_linear"] == 4 * 65 * 64 * 32 and terms["attn_matmul"] == 2 * 65**2 * 32
    assert terms["mlp"] == 2 * 65 * 64 * 128
    with pytest.raises(ValueError, match="attn_dim has 2 entries"):
        analytic_macs(dims, attn_dims=[64, 64])
    assert BlockDims(64, 64, 256).macs(10, 10)["mlp"] == 2 * 10 * 64 * 256


def test_schedule_length_must_match_the_model():
    with pytest.raises(ValueError, match="5 entries but the model has 4 blocks"):
        analytic_macs(tiny_timm(), [65] * 5)


def test_ideal_speedup():
    model = tiny_timm()
    base = [65] * 4
    assert ideal_speedup(base, base, model) == 1.0
    pruned = {"tokens_per_layer": [65, 65, 21, 21], "mlp_tokens_per_layer": [65, 21, 21, 21]}
    expected = analytic_macs(model).total_macs / analytic_macs(model, pruned).total_macs
    assert ideal_speedup(base, pruned, model) == pytest.approx(expected)
    assert ideal_speedup(base, pruned, model) > 1.5
    narrow = vit_dims(model).with_overrides(mlp_hidden=128)
    assert ideal_speedup(base, base, model, dims_pruned=narrow) > 1.0


def test_find_blocks_names_match_fvcore_modules():
    for model, name in ((tiny_timm(), "blocks"), (tiny_open_clip(), "transformer.resblocks"),
                        (timm_trunk_clip(), "trunk.blocks")):
        prefix, blocks = find_blocks(model)
        assert prefix == name and len(blocks) > 0


# ------------------------------------------------------------------ ViT-B: baseline and every token strategy


@functools.lru_cache(maxsize=None)
def clip_model(name):
    import open_clip

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model(name, pretrained="").eval()


@functools.lru_cache(maxsize=None)
def big_model(name):
    if name == "timm_vit_b16":
        import timm

        torch.manual_seed(0)
        return timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    return clip_model({"open_clip_vit_b32": "ViT-B-32", "open_clip_vit_b16": "ViT-B-16"}[name])


BIG = ["timm_vit_b16", "open_clip_vit_b32", "open_clip_vit_b16"]
STRATEGIES = {
    "baseline": None,
    "tome_r8": ("tome", {"r": 8}),
    "tome_r16": ("tome", {"r": 16}),
    "tome_r8_match0.5": ("tome", {"r": 8, "match_fraction": 0.5, "seed": 0}),
    "anchor_diversity_10_50": ("anchor_diversity", {"k_anchors": 10, "top_m": 50}),
    "cls_topk_60": ("cls_topk", {"keep": 60}),
    "random_drop_60": ("random_drop", {"keep": 60}),
}


def big_images():
    torch.manual_seed(0)
    return torch.randn(1, 3, 224, 224)


@pytest.mark.parametrize("config", list(STRATEGIES))
@pytest.mark.parametrize("model_name", BIG)
def test_vit_b_counts_match_analytic_within_one_percent(model_name, config):
    model, images = big_model(model_name), big_images()
    spec = STRATEGIES[config]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # budgets clamped on ViT-B-32's 49 patches
        if spec is None:
            count, schedule = count_flops(model, images), None
        else:
            with pb.prune(model, spec[0], **spec[1]) as h:
                count = count_flops(model, images)
                schedule = h.stats()
                if spec[1].get("match_fraction", 1.0) < 1:
                    again = count_flops(model, images)
                    assert again.gmacs == count.gmacs and again.per_block == count.per_block
    analytic = analytic_macs(model, schedule)
    assert rel(count.macs, analytic.macs) < 0.01, (count.gmacs, analytic.gmacs)
    for i, (fv, an) in enumerate(zip(count.per_block, analytic.per_block)):
        assert rel(fv * 1e9, an) < 0.01, (i, fv, an / 1e9)
    assert not count.matmul_like_skipped
    if schedule is not None and min(schedule["tokens_per_layer"]) < vit_dims(model).num_tokens():
        baseline = analytic_macs(model)
        assert count.macs < 0.95 * baseline.macs  # the removed tokens really left the count


def test_seeded_match_fraction_is_deterministic_across_patches():
    model, images = big_model("timm_vit_b16"), big_images()
    counts = []
    for _ in range(2):
        with pb.prune(model, "tome", r=8, match_fraction=0.5, seed=0):
            counts.append(count_flops(model, images).gmacs)
    assert counts[0] == counts[1]


def test_plain_fvcore_drops_the_attention_products():
    model, images = big_model("timm_vit_b16"), big_images()
    plain, skipped = count_flops_plain(model, images)
    analytic = analytic_macs(model)
    attention = sum(t["attn_matmul"] for t in analytic.per_block_terms)
    assert "aten::scaled_dot_product_attention" in skipped
    assert rel(plain * 1e9, analytic.macs - attention) < 0.01
    assert rel(count_flops(model, images).macs, analytic.macs) < 0.01
