"""The contract's checks (DESIGN.md) on parameter paths the strategies' single example does not take.

tests/test_contract.py runs the contract once per registered strategy and family with the strategy's
`example_params` / `keep_all_params`; here the first token strategies run it again on their other paths
(seeded match share, per-block `r` lists, alpha 0 / 1, the other importance direction, budgets far past
keep-all), plus bf16 autocast and the patch mechanics (class swap, text tower, prefix order, pooling).
"""
import copy
import warnings

import pytest
import torch

import pruning_bench as pb

CASES = [
    ("tome", dict(r=8)),
    ("tome", dict(r=6, match_fraction=0.5, seed=3)),
    ("tome", dict(r=[0, 12, 4], prop_attn=False)),
    ("anchor_diversity", dict(k_anchors=4, top_m=16)),
    ("anchor_diversity", dict(k_anchors=4, top_m=16, alpha=0.0, start_layer=0)),
    ("cls_topk", dict(keep=20)),
    ("random_drop", dict(keep=20, start_layer=2)),
    ("anchor_diversity", dict(k_anchors=4, top_m=16, alpha=1.0, importance_direction="token_to_anchor")),
]
CASE_IDS = [f"{n}-{'-'.join(f'{k}{v}' for k, v in p.items())}" for n, p in CASES]

NO_OPS = [
    ("tome", dict(r=0)),
    ("tome", dict(r=[0, 0])),
    ("anchor_diversity", dict(k_anchors=10, top_m=54)),
    ("anchor_diversity", dict(k_anchors=500, top_m=0)),
    ("cls_topk", dict(keep=64)),
    ("random_drop", dict(keep=1000)),
]


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [type(m) for m in model.modules()]


def _assert_unchanged(model, snapshot):
    state, classes = snapshot
    now = model.state_dict()
    assert state.keys() == now.keys()
    assert all(torch.equal(state[k], now[k]) for k in state)
    assert [type(m) for m in model.modules()] == classes
    for m in model.modules():
        assert not any(k.startswith("_pb_") for k in m.__dict__), type(m)


@pytest.mark.parametrize("name,params", NO_OPS)
def test_budget_keeping_every_token_is_exact_noop_with_warning(family, images, name, params):
    _, model, run = family
    with torch.no_grad():
        expected = run(model, images)
        with pytest.warns(UserWarning, match=name):
            with pb.prune(model, name, **params) as h:
                got = run(model, images)
    assert torch.equal(got, expected)
    tokens = h.stats()["tokens_per_layer"]
    assert len(set(tokens)) == 1 and len(tokens) == 4


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_restore_is_exact_and_idempotent(family, images, name, params):
    _, model, run = family
    with torch.no_grad():
        expected = run(model, images)
    snapshot = _snapshot(model)
    h = pb.prune(model, name, **params)
    with torch.no_grad():
        pruned = run(model, images)
    assert not torch.equal(pruned, expected)
    h.restore()
    h.restore()
    _assert_unchanged(model, snapshot)
    with torch.no_grad():
        assert torch.equal(run(model, images), expected)


@pytest.mark.parametrize("name,params", CASES[:1] + CASES[3:4], ids=CASE_IDS[:1] + CASE_IDS[3:4])
def test_restore_after_forward_raised(family, images, name, params):
    _, model, run = family
    with torch.no_grad():
        expected = run(model, images)
    snapshot = _snapshot(model)
    with pytest.raises(RuntimeError):
        with pb.prune(model, name, **params):
            with torch.no_grad():
                run(model, images[:, :2])  # two colour channels: the patch embedding raises
    _assert_unchanged(model, snapshot)
    with torch.no_grad():
        assert torch.equal(run(model, images), expected)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_result_per_image_is_batch_size_invariant(family, images, name, params):
    _, model, run = family
    with pb.prune(model, name, **params), torch.no_grad():
        together = run(model, images)
        alone = torch.cat([run(model, images[i : i + 1]) for i in range(len(images))])
        shuffled = run(model, images.flip(0)).flip(0)
    assert torch.allclose(together, alone, atol=1e-4, rtol=0)
    assert torch.allclose(together, shuffled, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_bf16_autocast(family, images, name, params):
    _, model, run = family
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = run(model, images)
        with pb.prune(model, name, **params) as h:
            got = run(model, images)
            alone = run(model, images[:1])
    assert torch.isfinite(got).all()
    assert h.stats()["tokens_per_layer"][-1] < h.stats()["tokens_per_layer"][0]
    assert torch.allclose(got[:1].float(), alone.float(), atol=5e-2, rtol=0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(run(model, images), expected)


def test_token_schedules(images):
    from conftest import tiny_open_clip, tiny_timm

    model = tiny_timm()
    with pb.prune(model, "anchor_diversity", k_anchors=5, top_m=20) as h, torch.no_grad():
        model(images)
        assert h.stats()["tokens_per_layer"] == [65, 65, 26, 26]
        assert h.stats()["mlp_tokens_per_layer"] == [65, 26, 26, 26]
    with pb.prune(model, "tome", r=10) as h, torch.no_grad():
        model.forward_features(images)
        assert h.stats()["tokens_per_layer"] == [65, 55, 45, 35]
    with pb.prune(model, "tome", r=[3, 0, 5]) as h, torch.no_grad():
        model(images)
        assert h.stats()["tokens_per_layer"] == [65, 62, 62, 57]
    clip = tiny_open_clip()
    with pb.prune(clip, "cls_topk", keep=7, start_layer=2) as h, torch.no_grad():
        clip.encode_image(images)
        assert h.stats()["tokens_per_layer"] == [65, 65, 65, 8]


def test_tome_r_larger_than_possible_is_clamped_with_warning(images):
    from conftest import tiny_timm

    model = tiny_timm()
    with pytest.warns(UserWarning, match="clamped"):
        with pb.prune(model, "tome", r=40) as h, torch.no_grad():
            out = model(images)
    tokens = h.stats()["tokens_per_layer"]
    assert tokens == [65, 33, 17, 9] and all(t >= 2 for t in h.stats()["mlp_tokens_per_layer"])
    assert torch.isfinite(out).all()


def test_vit_b_32_has_fifty_tokens_and_clamps_budget():
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = open_clip.create_model("ViT-B-32", pretrained="").eval()
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = model.encode_image(images)
        with pytest.warns(UserWarning, match="49 patch tokens"):
            with pb.prune(model, "anchor_diversity") as h:
                got = model.encode_image(images)
        assert torch.equal(got, expected)
        assert h.stats()["tokens_per_layer"][0] == 50
        with pb.prune(model, "anchor_diversity", k_anchors=5, top_m=10) as h:
            model.encode_image(images)
        assert h.stats()["tokens_per_layer"][:3] == [50, 50, 16]


def test_every_entry_point_is_pruned(images):
    from conftest import tiny_open_clip, tiny_timm

    model = tiny_timm()
    with pb.prune(model, "tome", r=4) as h, torch.no_grad():
        for call in (model, model.forward_features, lambda x: model.forward_head(model.forward_features(x))):
            h.stats()["tokens_per_layer"].clear()
            call(images)
            assert h.stats()["tokens_per_layer"] == [65, 61, 57, 53]
    clip = tiny_open_clip()
    with pb.prune(clip.visual, "tome", r=4) as h, torch.no_grad():
        for call in (clip.encode_image, clip.visual, lambda x: clip(x, None)[0]):
            call(images)
            assert h.stats()["tokens_per_layer"] == [65, 61, 57, 53]


def test_text_tower_untouched():
    from conftest import tiny_open_clip

    clip = tiny_open_clip()
    text = torch.randint(0, 200, (3, 16))
    text_modules = [m for name, m in clip.named_modules() if not name.startswith("visual")]
    classes = [type(m) for m in text_modules]
    with torch.no_grad():
        expected = clip.encode_text(text)
        with pb.prune(clip, "tome", r=4):
            assert [type(m) for m in text_modules] == classes
            assert torch.equal(clip.encode_text(text), expected)


def test_timm_trunk_inside_open_clip():
    from conftest import timm_trunk_clip

    clip = timm_trunk_clip()
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = clip.encode_image(images[:2])
        with pb.prune(clip, "cls_topk", keep=3) as h:
            got = clip.encode_image(images[:2])
        assert h.stats()["tokens_per_layer"][:3] == [197, 197, 4]
        assert not torch.equal(got, expected)
        assert torch.equal(clip.encode_image(images[:2]), expected)


def test_patch_swaps_classes_not_instance_forward(images):
    from conftest import tiny_timm

    model = tiny_timm()
    with pb.prune(model, "tome", r=2):
        for m in model.modules():
            assert "forward" not in m.__dict__
        replica = copy.deepcopy(model)
        with torch.no_grad():
            assert torch.allclose(replica(images), model(images))


def test_match_fraction_is_reproducible(images):
    from conftest import tiny_timm

    model = tiny_timm()
    with torch.no_grad():
        with pb.prune(model, "tome", r=6, match_fraction=0.4, seed=1):
            a, b = model(images), model(images)
        with pb.prune(model, "tome", r=6, match_fraction=0.4, seed=2):
            c = model(images)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_avg_pool_is_size_weighted(images):
    from conftest import tiny_timm

    model = tiny_timm(global_pool="avg", reg_tokens=2, fc_norm=False, num_classes=0)
    with pb.prune(model, "tome", r=8) as h, torch.no_grad():
        tokens = model.forward_features(images)
        pooled = model.forward_head(tokens, pre_logits=True)
        size = h._attachments[0].run.size
    assert size[:, :3].eq(1).all()  # class and register tokens never merge
    assert torch.allclose(size[:, 3:].sum(dim=1), torch.full((8, 1), 64.0))
    manual = (tokens[:, 3:] * size[:, 3:]).sum(1) / size[:, 3:].sum(1)
    assert torch.allclose(pooled, manual, atol=1e-6)
    assert not torch.allclose(pooled, tokens[:, 3:].mean(1), atol=1e-4)


def test_prefix_tokens_stay_first_and_unmerged_with_registers(images):
    from conftest import tiny_timm

    model = tiny_timm(reg_tokens=3, class_token=True)
    with torch.no_grad():
        reference = model.forward_features(images)
        with pb.prune(model, "tome", r=12) as h:
            h._attachments[0].run.trace_source = True
            model.forward_features(images)
            source = h._attachments[0].run.source
    assert torch.equal(source[:, :4, :4], torch.eye(4).expand(8, 4, 4))
    assert source[:, 4:, :4].eq(0).all()
    assert torch.equal(source.sum(dim=1), torch.ones(8, 68))
    assert reference.shape[1] == 68


def test_composing_two_token_strategies_is_refused():
    from conftest import tiny_timm

    with pytest.raises(ValueError, match="one token strategy"):
        pb.prune(tiny_timm(), [("tome", {"r": 2}), ("cls_topk", {"keep": 3})])
    model = tiny_timm()
    with pb.prune(model, "tome", r=2):
        with pytest.raises(ValueError, match="already carries"):
            pb.prune(model, "cls_topk", keep=3)
