"""pb.match_macs: the knob value it returns is the one whose counted MACs come closest to the target."""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def small_model():
    """9 patches and 2 blocks: every knob value can be tried in a test."""
    return tiny_timm(img_size=12, depth=2)


def counted_ratio(model, strategy, params, base=None):
    x = torch.zeros(1, 3, 12, 12)
    base = base or pb.count_flops(model, x).macs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pb.prune(model, strategy, **params):
            return pb.count_flops(model, x).macs / base


@pytest.mark.parametrize("strategy,fixed,values", [
    ("cls_topk", {"start_layer": 0}, range(0, 10)),
    ("tome", {}, range(0, 5)),
])
def test_integer_knob_is_closest_among_all_values(strategy, fixed, values):
    model = small_model()
    target = 0.55
    found = pb.match_macs(model, strategy, target, **fixed)
    knob = found.knob
    base = found.baseline_gmacs * 1e9
    brute = {v: counted_ratio(model, strategy, {**fixed, knob: v}, base) for v in values}
    best_error = min(abs(r - target) for r in brute.values())
    if isinstance(found[knob], list):  # a per-block schedule (tome's r list): at least as close as any one value
        assert abs(found.ratio - target) <= best_error + 1e-12
        assert found.ratio == pytest.approx(counted_ratio(model, strategy, dict(found), base))
    else:
        assert abs(found.ratio - target) == pytest.approx(best_error, abs=1e-12)
        assert found.ratio == pytest.approx(brute[found[knob]])
    assert {k: v for k, v in found.items() if k != knob} == fixed
    assert len(found.evaluated) < len(brute)  # a search, not a scan


def test_float_knob_beats_every_grid_value():
    model = small_model()
    target = 0.7
    found = pb.match_macs(model, "evit", target, tolerance=0.01, prune_layers=[0, 1])
    assert found.knob == "keep_rate" and 0 < found["keep_rate"] <= 1
    base = found.baseline_gmacs * 1e9
    grid = [counted_ratio(model, "evit", {"prune_layers": [0, 1], "keep_rate": k / 9}, base) for k in range(1, 10)]
    assert abs(found.ratio - target) <= min(abs(r - target) for r in grid) + 1e-12
    assert found.ratio == pytest.approx(counted_ratio(model, "evit", dict(found), base))


def test_prune_layers_switches_a_budget_knob_to_keep_rate():
    found = pb.match_macs(small_model(), "cls_topk", 0.8, tolerance=0.05, prune_layers=[1])
    assert found.knob == "keep_rate" and set(found) == {"prune_layers", "keep_rate"}


def test_result_plugs_into_prune_and_model_is_restored():
    model = small_model()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        before = model(x)
        found = pb.match_macs(model, "cls_topk", 0.6)
        assert torch.equal(model(x), before)
        with pb.prune(model, "cls_topk", **found):
            assert not torch.equal(model(x), before)
    assert found.baseline_gmacs > found.gmacs > 0


@pytest.mark.parametrize("target", [0, -0.1, 1.5, float("nan")])
def test_target_out_of_range(target):
    with pytest.raises(ValueError, match=r"target_ratio=.* is out of range \(0.0, 1.0\]"):
        pb.match_macs(small_model(), "cls_topk", target)


def test_fixing_the_knob_is_refused():
    with pytest.raises(ValueError, match="keep=3 is the knob being searched"):
        pb.match_macs(small_model(), "cls_topk", 0.5, keep=3)
