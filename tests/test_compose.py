"""Structured and token strategies together: both take effect, and undo in reverse order, bit-exact."""
import pytest
import torch

import pruning_bench as pb
from pruning_bench.api import attach
from pruning_bench.measure.analytic import analytic_macs
from pruning_bench.families import locate_vit
from pruning_bench.families.slicing import InProjAttention

HEADS = ("head_prune", {"head_ratio": 0.5, "mlp_ratio": 0.3})
TOME = ("tome", {"r": 4})
SPECS = {
    "heads+tome": [HEADS, TOME],
    "tome+heads": [TOME, HEADS],
    "drop+heads+tome": [("layer_drop", {"drop": [1]}), HEADS, TOME],
    "heads+drop+anchor": [HEADS, ("layer_drop", {"drop": [2]}), ("anchor_diversity", {"k_anchors": 4, "top_m": 16})],
}


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [(n, id(m), type(m)) for n, m in model.named_modules()]


def _assert_unchanged(model, snapshot):
    state, modules = snapshot
    now = model.state_dict()
    assert state.keys() == now.keys() and all(torch.equal(state[k], now[k]) for k in state)
    assert [(n, id(m), type(m)) for n, m in model.named_modules()] == modules


@pytest.mark.parametrize("spec", sorted(SPECS))
def test_list_of_strategies_applies_all_and_restores_exactly(family, images, spec):
    _, model, run = family
    snapshot = _snapshot(model)
    base_macs = analytic_macs(model).macs
    with torch.no_grad():
        expected = run(model, images)
        h = pb.prune(model, SPECS[spec])
        got = run(model, images)
    stats = h.stats()
    n_blocks = len(stats["layers_kept"])
    # the token strategy reduced tokens inside the sliced blocks
    assert stats["tokens_per_layer"][-1] < stats["tokens_per_layer"][0]
    assert len(stats["tokens_per_layer"]) == n_blocks == len(stats["heads_per_layer"])
    assert stats["heads_per_layer"] == [2] * n_blocks
    assert not torch.equal(got, expected)
    # tokens removed on top of the sliced widths: cheaper than the structured pruning alone, itself cheaper
    assert analytic_macs(model, stats).macs < analytic_macs(model).macs < base_macs
    h.restore()
    _assert_unchanged(model, snapshot)
    with torch.no_grad():
        assert torch.equal(run(model, images), expected)


def test_token_strategy_runs_on_the_pruned_attention(family, images):
    """tome with r=0 on a head-pruned model changes nothing; r>0 changes the pruned model's output."""
    _, model, run = family
    with torch.no_grad(), pb.prune(model, HEADS[0], **HEADS[1]):
        pruned = run(model, images)
        attn = locate_vit(model).blocks[0].attn
        assert attn.num_heads == 2
        if locate_vit(model).family == "open_clip":
            assert isinstance(attn, InProjAttention)
        with pytest.warns(UserWarning):
            with pb.prune(model, "tome", r=0):
                assert torch.equal(run(model, images), pruned)
        with pb.prune(model, "tome", r=4) as h:
            merged = run(model, images)
            n = h.stats()["tokens_per_layer"][0]
            assert h.stats()["tokens_per_layer"] == [n, n - 4, n - 8, n - 12]
        assert not torch.equal(merged, pruned)
        assert torch.equal(run(model, images), pruned)


def test_nested_handles_restore_in_reverse_order(family, images):
    _, model, run = family
    snapshot = _snapshot(model)
    with torch.no_grad():
        expected = run(model, images)
        outer = pb.prune(model, HEADS[0], **HEADS[1])
        middle = pb.prune(model, "layer_drop", drop=[0])
        inner = pb.prune(model, "tome", r=4)
        run(model, images)
        inner.restore()
        middle.restore()
        outer.restore()
        assert torch.equal(run(model, images), expected)
    _assert_unchanged(model, snapshot)


def test_restoring_out_of_order_is_refused_not_corrupting(family, images):
    _, model, run = family
    snapshot = _snapshot(model)
    with torch.no_grad():
        expected = run(model, images)
    strategy = pb.get_strategy("head_prune")
    first = attach(strategy(head_ratio=0.25), model)
    second = attach(strategy(head_ratio=0.5), model)
    with pytest.raises(RuntimeError, match="restore the later pruning first"):
        first.restore()
    second.restore()
    first.restore()  # the refused restore left its record intact
    _assert_unchanged(model, snapshot)
    with torch.no_grad():
        assert torch.equal(run(model, images), expected)


def test_data_driven_scores_see_earlier_structured_pruning(images):
    from conftest import tiny_timm

    model = tiny_timm(depth=6)
    with pb.prune(model, [("layer_drop", {"drop": [1, 4]}),
                          ("head_prune", {"head_ratio": 0.5, "importance": "fisher", "calibration": [images]})]) as h:
        stats = h.stats()
        assert stats["layers_kept"] == [0, 2, 3, 5]
        assert len(stats["head_importance"]) == 4 and stats["heads_per_layer"] == [2] * 4


def test_failure_while_attaching_a_later_strategy_undoes_the_earlier_ones(family):
    _, model, _ = family
    snapshot = _snapshot(model)
    with pytest.raises(ValueError, match="drop=\\[9\\]"):
        pb.prune(model, [HEADS, ("layer_drop", {"drop": [9]})])
    _assert_unchanged(model, snapshot)
