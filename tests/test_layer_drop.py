"""layer_drop: blocks really skipped, chosen by importance or by index; exact restore; clear errors."""
import copy

import pytest
import torch

import pruning_bench as pb
from conftest import FAMILIES
from pruning_bench.measure.analytic import analytic_macs
from pruning_bench.families import locate_vit
from pruning_bench.strategies.layer_drop import pinned_blocks, select_distributed, select_topk

IMPORTANCES = ["fisher", "grad_norm", "activation", "cosine"]
FAMILY_NAMES = sorted(FAMILIES)
# each importance on two families, each family under two importances
ROTATION = [(FAMILY_NAMES[(i + shift) % 4], imp) for i, imp in enumerate(IMPORTANCES) for shift in (0, 1)]
DEAD_BLOCK_CASES = [
    (FAMILY_NAMES[i % 4], imp, sel)
    for i, (imp, sel) in enumerate((imp, sel) for imp in ("fisher", "activation", "cosine") for sel in ("topk", "distributed"))
] + [(name, "fisher", "topk") for name in FAMILY_NAMES[2:]]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same(model, state, modules):
    now = model.state_dict()
    assert state.keys() == now.keys()
    assert all(torch.equal(state[k], now[k]) for k in state)
    assert [(n, id(m)) for n, m in model.named_modules()] == modules


def _modules(model):
    return [(n, id(m)) for n, m in model.named_modules()]


def _identity_blocks(model, indices):
    """A copy of `model` whose blocks `indices` are replaced by Identity: what skipping them must equal."""
    twin = copy.deepcopy(model)
    container = locate_vit(twin).blocks_container
    for i in indices:
        container[i] = _PassThrough()
    return twin


class _PassThrough(torch.nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


# ---------------------------------------------------------------- pure selection


def test_topk_keeps_pins_and_the_best_others():
    scores = torch.tensor([0.0, 5.0, 1.0, 4.0, 3.0, 0.5])
    assert select_topk(scores, 3, []) == [1, 3, 4]
    assert select_topk(scores, 3, pinned_blocks(6, True, True)) == [0, 1, 5]
    assert select_topk(scores, 4, pinned_blocks(6, True, False)) == [0, 1, 3, 4]


def test_distributed_takes_the_best_of_each_equal_span():
    scores = torch.tensor([0.0, 5.0, 1.0, 4.0, 3.0, 0.5, 2.0, 9.0])
    assert select_distributed(scores, 4, []) == [1, 3, 4, 7]
    assert select_distributed(scores, 2, []) == [1, 7]
    assert select_distributed(scores, 4, pinned_blocks(8, True, True)) == [0, 3, 4, 7]
    assert select_distributed(scores, 8, []) == list(range(8))


# ---------------------------------------------------------------- on every family


def test_registered_as_structured():
    assert "layer_drop" in pb.list_strategies()
    assert pb.get_strategy("layer_drop").kind == "structured"


def test_dropped_blocks_are_skipped_exactly(family, images):
    _, model, run = family
    twin = _identity_blocks(model, [1, 2])
    with torch.no_grad():
        expected = run(twin, images)
        with pb.prune(model, "layer_drop", drop=[2, 1]) as h:
            got = run(model, images)
            assert len(locate_vit(model).blocks) == 2
    assert torch.equal(got, expected)
    stats = h.stats()
    assert stats["layers_kept"] == [0, 3] and len(stats["tokens_per_layer"]) == 2
    assert len(stats["heads_per_layer"]) == 2 and stats["layer_importance"] is None


@pytest.mark.parametrize("family_name,importance", ROTATION)
def test_restore_is_exact_and_idempotent(family_name, images, importance):
    build, run = FAMILIES[family_name]
    model = build()
    with torch.no_grad():
        expected = run(model, images)
    model.train()
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    state, modules = _state(model), _modules(model)
    h = pb.prune(model, "layer_drop", keep_layers=2, importance=importance, calibration=[images[:4], images[4:]])
    assert len(h.stats()["layer_importance"]) == 4 and len(h.stats()["layers_kept"]) == 2
    h.restore()
    h.restore()
    _assert_same(model, state, modules)
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        assert torch.equal(run(model, images), expected)


def test_macs_and_parameters_drop_with_the_blocks(family, images):
    _, model, run = family
    base = analytic_macs(model)
    target = locate_vit(model)
    base_params = sum(p.numel() for p in target.vit.parameters())
    block_params = sum(p.numel() for p in target.blocks[1].parameters())
    with pb.prune(model, "layer_drop", drop=[1, 3]) as h:
        macs = analytic_macs(model)
        assert macs.macs == pytest.approx(base.patch_embed + base.per_block[0] + base.per_block[2])
        assert h.stats()["vit_parameters"] == {"before": base_params, "after": base_params - 2 * block_params}
        flops = pb.count_flops(model, images[:1]).gmacs
    assert flops < 0.55 * pb.count_flops(model, images[:1]).gmacs


@pytest.mark.parametrize("family_name,importance,selection", DEAD_BLOCK_CASES)
def test_a_block_that_does_nothing_is_dropped_first(family_name, images, importance, selection):
    """A block whose residual updates are zero changes nothing: fisher (its gate has no effect), activation
    and cosine must score it lowest. grad_norm is left out: its parameters still receive gradient."""
    build, run = FAMILIES[family_name]
    model = build()
    target = locate_vit(model)
    with torch.no_grad():
        for linear in (target.attention_view(target.blocks[1]).out_linear(), target.mlp_view(target.blocks[1]).out_linear()):
            linear.weight.zero_()
            if linear.bias is not None:
                linear.bias.zero_()
        expected = run(model, images)
    with torch.no_grad(), pb.prune(model, "layer_drop", keep_layers=3, importance=importance, selection=selection,
                                   pin_first=False, calibration=[images]) as h:
        got = run(model, images)
    scores = h.stats()["layer_importance"]
    assert scores[1] == min(scores)
    assert h.stats()["layers_kept"] == [0, 2, 3]  # distributed spans: [0, 1], [2], [3]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_pins_keep_first_and_last(images):
    from conftest import tiny_timm

    model = tiny_timm(depth=6)
    calibration = [images]
    with pb.prune(model, "layer_drop", keep_layers=2, importance="cosine", calibration=calibration) as h:
        assert h.stats()["layers_kept"] == [0, 5]
    with pb.prune(model, "layer_drop", keep_layers=2, importance="cosine", calibration=calibration,
                  pin_first=False, pin_last=False) as h:
        scores = torch.tensor(h.stats()["layer_importance"])
        assert h.stats()["layers_kept"] == sorted(scores.argsort(descending=True)[:2].tolist())


def test_keep_all_or_drop_nothing_is_exact_noop_with_warning(family, images):
    _, model, run = family
    modules = _modules(model)
    with torch.no_grad():
        expected = run(model, images)
        for params in (dict(drop=[]), dict(keep_layers=4, calibration=[images])):
            with pytest.warns(UserWarning, match="layer_drop"):
                with pb.prune(model, "layer_drop", **params) as h:
                    assert _modules(model) == modules
                    assert torch.equal(run(model, images), expected)
            assert h.stats()["layers_kept"] == [0, 1, 2, 3]


def test_text_tower_untouched(images):
    from conftest import tiny_open_clip

    model = tiny_open_clip()
    text = {n: (id(p), p.clone()) for n, p in model.named_parameters() if not n.startswith("visual.")}
    tokens = torch.randint(0, 200, (2, 16))
    with torch.no_grad():
        before = model.encode_text(tokens)
        with pb.prune(model, "layer_drop", keep_layers=2, importance="grad_norm", calibration=[images]):
            assert len(model.visual.transformer.resblocks) == 2
            assert len(model.transformer.resblocks) == 1
            now = dict(model.named_parameters())
            assert all(id(now[n]) == i and torch.equal(now[n], v) for n, (i, v) in text.items())
            assert torch.equal(model.encode_text(tokens), before)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(), r"give exactly one of keep_layers .* or drop"),
        (dict(keep_layers=2, drop=[1]), r"give exactly one of keep_layers"),
        (dict(keep_layers=0, calibration=[]), r"keep_layers=0 is out of range \[1, inf\]"),
        (dict(drop=[-1]), r"drop\[0\]=-1 is out of range"),
        (dict(drop=[1, 1]), r"lists a block more than once"),
        (dict(drop="1,2"), r"drop must be a list of block indices"),
        (dict(keep_layers=2), r"needs calibration=<iterable of image batches>"),
        (dict(keep_layers=2, importance="shap", calibration=[]), r"importance='shap' is not one of"),
        (dict(keep_layers=2, selection="random", calibration=[]), r"selection='random' is not one of topk, distributed"),
        (dict(drop=[1], pin_first="maybe"), r"pin_first must be a boolean"),
    ],
)
def test_bad_parameters_raise_before_touching_the_model(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(torch.nn.Linear(2, 2), "layer_drop", **params)


@pytest.mark.parametrize(
    "params,match",
    [
        (dict(drop=[4]), r"drop=\[4\] names block\(s\) \[4\], out of range \[0, 3\]"),
        (dict(drop=[0, 1, 2, 3]), r"removes all 4 blocks"),
        (dict(keep_layers=5), r"keep_layers=5 is out of range \[1, 4\]"),
        (dict(keep_layers=1), r"keep_layers=1 is out of range \[2, 4\] with pin_first=True and pin_last=True"),
        (dict(keep_layers=2, calibration=[]), r"calibration is empty"),
    ],
)
def test_parameters_that_do_not_fit_the_model_are_refused(params, match, images):
    from conftest import tiny_timm

    model = tiny_timm()
    params.setdefault("calibration", [images]) if "keep_layers" in params else None
    state, modules = _state(model), _modules(model)
    with pytest.raises(ValueError, match=match):
        pb.prune(model, "layer_drop", **params)
    _assert_same(model, state, modules)
