"""The strategy contract is declared once, on the class: parameters (default, range, meaning), kind, knob.

`param_spec` is read by the parameter check, by `pruning-bench strategies` and by `match_macs`; these
tests hold every built-in strategy to it and check that a strategy written outside the package can use
every part of it (a knob `match.py` has never heard of, a structured kind the rounds driver accepts).
"""
import ast
import math
import pkgutil
import warnings
from pathlib import Path

import pytest
import torch

import pruning_bench as pb
import pruning_bench.strategies as strategies_package
from pruning_bench import registry
from pruning_bench.cli import main
from pruning_bench.evaluate import rounds
from pruning_bench.strategies.base import Selection, StructuredPlan, StructuredStrategy, TokenStrategy
from pruning_bench.strategies.params import Bool, Float, Int, Undeclared
from conftest import tiny_timm
from pruning_bench.registry import get_strategy

# the package's own strategies (other test modules register strategies of their own at collection)
BUILT_IN = [n for n in pb.list_strategies() if get_strategy(n).__module__.startswith("pruning_bench.")]


@pytest.mark.parametrize("name", BUILT_IN)
def test_every_parameter_of_every_built_in_strategy_is_declared(name, capsys):
    cls = registry.get_strategy(name)
    assert cls.undeclared_params() == [], f"{name}: declare a range and a meaning for {cls.undeclared_params()}"
    assert list(cls.param_spec) == list(cls.defaults)
    assert main(["strategies", name]) == 0
    text = capsys.readouterr().out
    assert "not declared" not in text
    for param, spec in cls.param_spec.items():
        assert spec.help and spec.range_text() in text and spec.help in text, param


def _registered_in_source(path: Path) -> list[str]:
    """Names given to `@register_strategy("...")` in a module's source."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_strategy" and node.args:
            names.append(node.args[0].value)
    return names


def test_every_strategy_module_of_the_package_is_registered():
    folder = Path(strategies_package.__file__).parent
    in_source = [n for info in pkgutil.iter_modules([str(folder)])
                 for n in _registered_in_source(folder / f"{info.name}.py")]
    assert len(in_source) >= 13
    assert set(in_source) <= set(pb.list_strategies()), set(in_source) - set(pb.list_strategies())
    assert not hasattr(strategies_package, "_BUILTIN")  # found by listing the package, not by a hand-kept tuple


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_value_below_a_declared_bound_names_parameter_value_and_range(name):
    cls = registry.get_strategy(name)
    tried = 0
    for param, spec in cls.param_spec.items():
        if isinstance(spec, (Int, Float)) and spec.low is not None and math.isfinite(spec.low):
            bad = spec.low - 1
            with pytest.raises(ValueError) as info:
                cls(**{param: bad})
            message = str(info.value)
            assert f"{param}=" in message and str(bad) in message and "out of range" in message, message
            tried += 1
        if isinstance(spec, Bool):
            with pytest.raises(ValueError, match=f"{param} must be a boolean"):
                cls(**{param: "maybe"})
            tried += 1
    assert tried or not cls.param_spec


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))  # gone again after the test


def test_a_third_party_knob_is_searched_from_its_declaration(scratch_registry):
    @pb.register_strategy("first_tokens_test")
    class FirstTokens(TokenStrategy):
        """Keep the first `head` patch tokens in block 0 (a knob name `match.py` has never seen)."""

        param_spec = {"head": Int(4, "patch tokens kept in block 0", low=1)}
        compute_knob = "head"
        example_params = {"head": 4}
        keep_all_params = None

        @classmethod
        def knob_range(cls, knob, params, patches, depth):
            return 1, patches

        def plan_block(self, layer, n_tokens, n_prefix, n_layers):
            return (n_prefix + min(self.params["head"], n_tokens - n_prefix), None) if layer == 0 else (n_tokens, None)

        def reduce(self, layer, x, probe, n_prefix, n_out):
            return Selection(torch.arange(n_out, device=x.device).expand(x.shape[0], n_out))

    assert FirstTokens.defaults == {"head": 4}
    with pytest.raises(ValueError, match=r"first_tokens_test: head=0 is out of range \[1, inf\]"):
        FirstTokens(head=0)
    model = tiny_timm(img_size=12, depth=2)  # 9 patches
    found = pb.match_macs(model, "first_tokens_test", 0.75)
    x = torch.zeros(1, 3, 12, 12)
    base = pb.count_flops(model, x).macs
    ratios = {}
    for head in range(1, 10):
        with pb.prune(model, "first_tokens_test", head=head):
            ratios[head] = pb.count_flops(model, x).macs / base
    best = min(ratios, key=lambda h: abs(ratios[h] - 0.75))
    assert found.knob == "head" and found["head"] == best and found.ratio == pytest.approx(ratios[best])


def test_a_legacy_strategy_with_defaults_still_works(scratch_registry):
    @pb.register_strategy("legacy_test")
    class Legacy(TokenStrategy):
        defaults = {"stride": 2, "seed": 0}
        param_help = {"stride": "int >= 1: keep one token in stride"}

        def plan_block(self, layer, n_tokens, n_prefix, n_layers):
            return n_tokens, None

        def reduce(self, layer, x, probe, n_prefix, n_out):  # pragma: no cover
            raise AssertionError

    assert Legacy.undeclared_params() == ["stride"]
    assert Legacy(stride=3).params == {"stride": 3, "seed": 0}
    with pytest.raises(ValueError, match="seed"):  # a seed torch cannot take is refused, as before
        Legacy(seed=2**64)


def test_the_rounds_driver_asks_the_strategy_its_kind(scratch_registry):
    @pb.register_strategy("keep_all_heads_test")
    class KeepAll(StructuredStrategy):
        param_spec = {}
        example_params = {}
        keep_all_params = {}

        def plan(self, model, family):
            return StructuredPlan()

    assert rounds.iterable("keep_all_heads_test") and rounds.iterable("head_prune")
    assert not rounds.iterable("tome") and not rounds.iterable("evit")
    assert "keep_all_heads_test" in rounds.structured_names()


@pytest.mark.parametrize("name", [n for n in BUILT_IN if get_strategy(n).compute_knob is not None])
def test_every_compute_knob_has_a_finite_search_range(name):
    """`match_macs` searches the knob between these ends, on ViT-B/16's 196 patches and 12 blocks."""
    cls = get_strategy(name)
    low, high = cls.knob_range(cls.compute_knob, dict(cls.defaults), 196, 12)
    assert math.isfinite(low) and math.isfinite(high) and low < high
