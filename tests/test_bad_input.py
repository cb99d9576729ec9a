"""Bad parameters and unsupported models fail early, naming what is wrong."""
import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm

BAD = [
    ("anchor_diversity", {"k_anchors": 0}, r"k_anchors=0 is out of range \[1, inf\]"),
    ("anchor_diversity", {"top_m": -1}, r"top_m=-1 is out of range \[0, inf\]"),
    ("anchor_diversity", {"alpha": 1.5}, r"alpha=1.5 is out of range \[0.0, 1.0\]"),
    ("anchor_diversity", {"alpha": "high"}, r"alpha must be a number"),
    ("anchor_diversity", {"k_anchors": 2.5}, r"k_anchors must be an integer"),
    ("anchor_diversity", {"importance_direction": "sideways"}, r"importance_direction=.sideways. is not one of anchor_to_token, token_to_anchor"),
    ("tome", {"r": -1}, r"r=-1 is out of range"),
    ("tome", {"r": [2, -3]}, r"r\[1\]=-3 is out of range"),
    ("tome", {"match_fraction": 0.0}, r"match_fraction=0.0 is out of range \(0.0, 1.0\]"),
    ("tome", {"prop_attn": "maybe"}, r"prop_attn must be a boolean"),
    ("cls_topk", {"keep": -5}, r"keep=-5 is out of range"),
    ("random_drop", {"start_layer": -1}, r"start_layer=-1 is out of range"),
    ("tome", {"rr": 3}, r"unknown parameter\(s\) rr"),
]


@pytest.mark.parametrize("name,params,message", BAD)
def test_out_of_range_parameter_is_value_error_naming_it(name, params, message):
    model = tiny_timm()
    before = [type(m) for m in model.modules()]
    with pytest.raises(ValueError, match=message):
        pb.prune(model, name, **params)
    assert [type(m) for m in model.modules()] == before


def test_parameter_checked_against_model_depth():
    model = tiny_timm()
    with pytest.raises(ValueError, match=r"start_layer=4 is out of range \[0, 3\]"):
        pb.prune(model, "cls_topk", keep=3, start_layer=4)
    with pytest.raises(ValueError, match="r has 5 entries but the model has 4 blocks"):
        pb.prune(model, "tome", r=[1, 1, 1, 1, 1])
    assert not any(hasattr(m, "_pb_run") for m in model.modules())


def test_unknown_strategy():
    with pytest.raises(ValueError, match="unknown strategy 'nope'.*tome"):
        pb.prune(tiny_timm(), "nope")


@pytest.mark.parametrize("model", [torch.nn.Linear(3, 3), torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))])
def test_unsupported_model_names_supported_families(model):
    with pytest.raises(pb.UnsupportedModelError, match="timm VisionTransformer.*open_clip"):
        pb.prune(model, "tome", r=2)


def test_class_token_strategies_need_a_class_token():
    model = tiny_timm(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no class token"):
        pb.prune(model, "cls_topk", keep=3)
    with pb.prune(model, "tome", r=4) as h, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [64, 60, 56, 52]


def test_third_party_strategy_registers_without_editing_the_package(monkeypatch):
    from pruning_bench import registry
    from pruning_bench.strategies.prune_once import PruneOnceStrategy

    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))  # gone again after this test

    @pb.register_strategy("keep_first_patches")
    class KeepFirst(PruneOnceStrategy):
        defaults = {"keep": 4, "start_layer": 1}

        def budget(self):
            return self.params["keep"]

        def reduce(self, layer, x, probe, n_prefix, n_out):
            chosen = torch.arange(n_prefix, n_out, device=x.device).expand(x.shape[0], -1)
            return self.selection(n_prefix, chosen)

    assert "keep_first_patches" in pb.list_strategies()
    model = tiny_timm()
    with pb.prune(model, "keep_first_patches", keep=4) as h, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [65, 65, 5, 5]
    with pytest.raises(ValueError, match="already registered"):
        pb.register_strategy("tome")(KeepFirst)
