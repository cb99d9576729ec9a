"""head_prune: heads and MLP neurons sliced out (not masked), exact restore, honest counts, clear errors."""

import pytest
import torch

import pruning_bench as pb
from conftest import FAMILIES
from pruning_bench.measure.analytic import analytic_macs
from pruning_bench.families import locate_vit
from pruning_bench.strategies.head_prune import count_to_remove, keep_global, keep_layerwise

IMPORTANCES = ["magnitude", "taylor", "fisher", "activation"]
# every importance on open_clip's nn.MultiheadAttention (scored through a stand-in module) and on one
# other attention layout (timm qkv, open_clip Attention)
ROTATION = [
    ("open_clip", "magnitude"), ("timm", "magnitude"),
    ("open_clip", "taylor"), ("open_clip_custom_avg", "taylor"),
    ("open_clip", "fisher"), ("timm_registers_ls_qknorm_avg", "fisher"),
    ("open_clip", "activation"), ("timm", "activation"), ("open_clip_custom_avg", "activation"),
]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _modules(model):
    return [(name, m) for name, m in model.named_modules()]


def _assert_same(model, state, modules):
    now = model.state_dict()
    assert state.keys() == now.keys()
    assert all(torch.equal(state[k], now[k]) for k in state)
    assert [(n, id(m)) for n, m in model.named_modules()] == [(n, id(m)) for n, m in modules]


def _calibration(images):
    return [images[:4], images[4:]]


# ---------------------------------------------------------------- pure choice functions


def test_layerwise_removes_the_same_share_from_every_block():
    scores = [torch.tensor([3.0, 1.0, 2.0, 0.5]), torch.tensor([0.1, 0.2, 0.3, 0.4])]
    kept, clamped = keep_layerwise(scores, 0.5)
    assert [k.tolist() for k in kept] == [[0, 2], [2, 3]]
    assert not clamped
    kept, clamped = keep_layerwise(scores, 0.99)
    assert [len(k) for k in kept] == [1, 1] and clamped


def test_global_ranks_across_blocks_after_per_block_normalisation():
    # block 1's raw scores are 100x larger; normalised, its spread decides, not its scale
    scores = [torch.tensor([1.0, 0.9, 0.1, 0.1]), torch.tensor([100.0, 99.0, 98.0, 97.0])]
    kept, _ = keep_global(scores, 0.25)  # 2 of 8 removed
    assert [k.tolist() for k in kept] == [[0, 1], [0, 1, 2, 3]]


def test_global_always_keeps_one_unit_per_block():
    scores = [torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.0, 0.0, 1e-9]), torch.tensor([5.0, 4.0, 3.0])]
    kept, clamped = keep_global(scores, 0.6)
    assert all(len(k) >= 1 for k in kept)
    assert sum(3 - len(k) for k in kept) == count_to_remove(0.6, 9)
    kept, clamped = keep_global(scores, 0.95)
    assert [len(k) for k in kept] == [1, 1, 1] and clamped


def test_count_rounds_to_nearest():
    assert count_to_remove(0.3, 72) == 22  # seed 003: 50 of 72 heads kept
    assert count_to_remove(0.3, 12) == 4
    assert count_to_remove(0.0, 12) == 0


# ---------------------------------------------------------------- on every model family


def test_registered_as_structured():
    assert "head_prune" in pb.list_strategies()
    assert pb.get_strategy("head_prune").kind == "structured"


def test_ratio_zero_is_exact_noop_with_warning(family, images):
    _, model, run = family
    modules = _modules(model)
    with torch.no_grad():
        expected = run(model, images)
        with pytest.warns(UserWarning, match="head_prune"):
            with pb.prune(model, "head_prune", head_ratio=0, mlp_ratio=0) as h:
                assert [(n, id(m)) for n, m in model.named_modules()] == [(n, id(m)) for n, m in modules]
                got = run(model, images)
    assert torch.equal(got, expected)
    stats = h.stats()
    assert stats["heads_per_layer"] == [4] * 4 and stats["layers_kept"] == [0, 1, 2, 3]
    assert stats["tokens_per_layer"] == [stats["tokens_per_layer"][0]] * 4


@pytest.mark.parametrize("family_name,importance", ROTATION)
def test_restore_is_exact_and_idempotent(family_name, images, importance):
    build, run = FAMILIES[family_name]
    model = build()
    model.train()  # scoring must leave training flags alone too
    for p in list(model.parameters())[::3]:
        p.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    modes = [m.training for m in model.modules()]
    model.eval()
    with torch.no_grad():
        expected = run(model, images)
    model.train()
    state, modules = _state(model), _modules(model)
    h = pb.prune(model, "head_prune", head_ratio=0.5, mlp_ratio=0.3, importance=importance,
                 calibration=_calibration(images))
    assert [m.training for m in model.modules()][:1] == [True]
    h.restore()
    h.restore()
    _assert_same(model, state, modules)
    assert [p.requires_grad for p in model.parameters()] == flags
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(run(model, images), expected)


def test_heads_and_neurons_are_sliced_and_counts_drop(family, images):
    name, model, run = family
    target = locate_vit(model)
    base_macs = analytic_macs(model)
    base_params = sum(p.numel() for p in target.vit.parameters())
    attn0, mlp0 = target.attention_view(target.blocks[0]).module, target.mlp_view(target.blocks[0]).module
    w = target.attention_view(target.blocks[0]).weights()
    D, hd = w.out.shape[0], w.head_dim
    hidden = target.mlp_view(target.blocks[0]).hidden
    with torch.no_grad():
        h = pb.prune(model, "head_prune", head_ratio=0.5, mlp_ratio=0.25)
        out = run(model, images)
    stats = h.stats()
    heads_left, hidden_left = stats["heads_per_layer"], stats["mlp_hidden_per_layer"]
    assert heads_left == [2] * 4 and hidden_left == [hidden - count_to_remove(0.25, hidden)] * 4
    block = locate_vit(model).blocks[0]
    assert block.attn is not attn0 and block.mlp is not mlp0
    w_new = target.attention_view(block).weights()
    assert w_new.q.shape == (2 * hd, D) and w_new.out.shape == (D, 2 * hd)
    assert target.mlp_view(block).out_linear().weight.shape == (D, hidden_left[0])
    # parameters: every removed head takes its q/k/v rows (+ biases) and proj columns, every neuron its fc1
    # row (+ bias) and fc2 column
    qkv_bias = 3 if (attn0.qkv.bias if hasattr(attn0, "qkv") else attn0.in_proj_bias) is not None else 0
    removed_heads, removed_neurons = 4 * 2, 4 * (hidden - hidden_left[0])
    expected = base_params - removed_heads * hd * (4 * D + qkv_bias) - removed_neurons * (2 * D + 1)
    assert stats["vit_parameters"] == {"before": base_params, "after": expected}
    assert sum(p.numel() for p in target.vit.parameters()) == expected
    # MACs: the analytic count follows the sliced widths, and matches the formula with a = 2*hd, h = hidden_left
    macs = analytic_macs(model)
    by_hand = analytic_macs(model, attn_dims=[2 * hd] * 4, mlp_hidden=hidden_left)
    assert macs.macs == by_hand.macs < base_macs.macs
    n = macs.tokens_per_layer[0]
    saved = 4 * (4 * n * D * 2 * hd + 2 * n * n * 2 * hd + 2 * n * D * (hidden - hidden_left[0]))
    assert base_macs.macs - macs.macs == pytest.approx(saved)
    assert pb.count_flops(model, images[:1]).gmacs < 0.7 * _restored_flops(h, model, images)
    assert out.shape[-1] == run(model, images).shape[-1]


def _restored_flops(h, model, images):
    h.restore()
    return pb.count_flops(model, images[:1]).gmacs


def test_per_image_results_do_not_depend_on_the_batch(family, images):
    _, model, run = family
    with torch.no_grad(), pb.prune(model, "head_prune", head_ratio=0.5, mlp_ratio=0.5):
        full = run(model, images)
        part = run(model, images[2:5])
    torch.testing.assert_close(part, full[2:5], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family_name,importance", ROTATION)
def test_every_importance_finds_dead_heads_and_neurons(family_name, images, importance):
    """A head whose values and output columns are zero, and a neuron whose weights are zero, contribute
    nothing: every importance must rank them last, and removing them must leave the output unchanged."""
    build, run = FAMILIES[family_name]
    model = build()
    target = locate_vit(model)
    blocks = target.blocks
    dead_head, dead_neuron = 2, 5
    with torch.no_grad():
        for b in blocks:
            w = target.attention_view(b).weights()
            rows = slice(dead_head * w.head_dim, (dead_head + 1) * w.head_dim)
            w.v[rows] = 0
            w.out[:, rows] = 0
            bias = b.attn.qkv.bias if hasattr(b.attn, "qkv") else b.attn.in_proj_bias
            if bias is not None:
                bias.chunk(3)[2][rows] = 0
            inputs, out = target.mlp_view(b).weights()
            for wi in inputs:
                wi[dead_neuron] = 0
            out[:, dead_neuron] = 0
            fc1 = b.mlp.c_fc if hasattr(b.mlp, "c_fc") else b.mlp.fc1
            if fc1.bias is not None:
                fc1.bias[dead_neuron] = 0
        expected = run(model, images)
    hidden = target.mlp_view(blocks[0]).hidden
    with torch.no_grad(), pb.prune(model, "head_prune", head_ratio=0.25, mlp_ratio=1.4 / hidden, importance=importance,
                                   calibration=_calibration(images)) as h:
        got = run(model, images)
    stats = h.stats()
    assert stats["heads_per_layer"] == [3] * 4 and stats["mlp_hidden_per_layer"] == [hidden - 1] * 4
    for scores in stats["head_importance"]:
        assert min(range(4), key=scores.__getitem__) == dead_head
    for scores in stats["mlp_importance"]:
        assert min(range(hidden), key=scores.__getitem__) == dead_neuron
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_global_scope_differs_per_block_and_keeps_one_head(images):
    from conftest import tiny_timm

    model = tiny_timm()
    with torch.no_grad():
        target = locate_vit(model)
        # block 1's head 0 dwarfs its other heads; after per-block normalisation they rank lowest overall
        target.attention_view(target.blocks[1]).weights().q[:16].mul_(50)
    with pb.prune(model, "head_prune", head_ratio=0.5, mlp_ratio=0.0, scope="global") as h:
        heads = h.stats()["heads_per_layer"]
    assert sum(heads) == 8 and heads[1] == 1 and len(set(heads)) > 1
    sparsity = h.stats()["head_sparsity_per_layer"]
    assert sparsity == [1 - k / 4 for k in heads]


def test_text_tower_untouched():
    from conftest import tiny_open_clip

    model = tiny_open_clip()
    text = {n: (id(p), p.clone()) for n, p in model.named_parameters() if not n.startswith("visual.")}
    text_modules = [(n, id(m)) for n, m in model.named_modules() if n and not n.startswith("visual")]
    tokens = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        before = model.encode_text(tokens)
        with pb.prune(model, "head_prune", head_ratio=0.5, mlp_ratio=0.5, importance="fisher",
                      calibration=[torch.randn(4, 3, 32, 32)]):
            now = {n: p for n, p in model.named_parameters() if not n.startswith("visual.")}
            assert {n: id(p) for n, p in now.items()} == {n: i for n, (i, _) in text.items()}
            assert all(torch.equal(now[n], v) for n, (_, v) in text.items())
            assert [(n, id(m)) for n, m in model.named_modules() if n and not n.startswith("visual")] == text_modules
            assert torch.equal(model.encode_text(tokens), before)


def test_scoring_works_under_inference_mode_and_keeps_float16_models(images):
    from conftest import tiny_timm

    model = tiny_timm()
    with torch.inference_mode():
        calibration = [images]
        with pb.prune(model, "head_prune", head_ratio=0.5, importance="taylor", calibration=calibration) as h:
            assert h.stats()["heads_per_layer"] == [2] * 4
    half = tiny_timm().half()
    state = _state(half)
    with pb.prune(half, "head_prune", head_ratio=0.5, importance="fisher", calibration=[images]) as h:
        assert locate_vit(half).blocks[0].attn.qkv.weight.dtype == torch.float16
    assert h.describe()[0]["params"]["calibration"] == {"batches": 1, "images": 8}
    _assert_same(half, state, _modules(half))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(head_ratio=1.0), r"head_ratio=1.0 is out of range \[0.0, 1.0\)"),
        (dict(head_ratio=-0.1), r"head_ratio=-0.1 is out of range"),
        (dict(mlp_ratio=1.5), r"mlp_ratio=1.5 is out of range"),
        (dict(head_ratio="half"), r"head_ratio must be a number"),
        (dict(importance="random"), r"importance='random' is not one of magnitude, taylor, fisher, activation"),
        (dict(scope="per_head"), r"scope='per_head' is not one of layerwise, global"),
        (dict(importance="fisher"), r"importance='fisher' is data-driven and needs calibration"),
        (dict(ratio=0.3), r"unknown parameter\(s\) ratio"),
    ],
)
def test_bad_parameters_raise_before_touching_the_model(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(torch.nn.Linear(2, 2), "head_prune", **params)


@pytest.mark.parametrize(
    "calibration,match",
    [
        ([], r"calibration is empty"),
        ([torch.randn(4, 3, 32)], r"calibration must yield float image tensors .* shape \(4, 3, 32\)"),
        (["cat.png"], r"calibration must yield float image tensors .* got str"),
        ([torch.randn(1, 3, 32, 32)], r"at least 2 images"),
    ],
)
def test_bad_calibration_is_refused_and_model_left_alone(calibration, match):
    from conftest import tiny_open_clip

    model = tiny_open_clip()
    state, modules = _state(model), _modules(model)
    with pytest.raises(ValueError, match=match):
        pb.prune(model, "head_prune", head_ratio=0.5, importance="taylor", calibration=calibration)
    _assert_same(model, state, modules)
    assert all(p.requires_grad for p in model.parameters())


def test_calibration_labels_are_ignored(images):
    from conftest import tiny_timm

    a, b = tiny_timm(), tiny_timm()
    labels = torch.zeros(len(images), dtype=torch.long)
    with pb.prune(a, "head_prune", importance="fisher", head_ratio=0.5, calibration=[images]) as ha, \
            pb.prune(b, "head_prune", importance="fisher", head_ratio=0.5, calibration=[(images, labels)]) as hb:
        assert ha.stats()["head_importance"] == hb.stats()["head_importance"]


def test_unsupported_model_is_refused():
    with pytest.raises(pb.UnsupportedModelError):
        pb.prune(torch.nn.Sequential(torch.nn.Linear(2, 2)), "head_prune", head_ratio=0.5)
