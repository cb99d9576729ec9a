"""`pruning-bench strategies`: every registered strategy, read from the classes, third-party ones included."""
import json

import pytest

import pruning_bench as pb
from pruning_bench import registry
from pruning_bench.cli import main
from pruning_bench.strategies.base import TokenStrategy

CONTRACT = ("anchor_diversity", "tome", "random_drop", "cls_topk", "head_prune", "layer_drop")


def listed(capsys, *argv):
    assert main(["strategies", "--json", *argv]) == 0
    return {item["name"]: item for item in json.loads(capsys.readouterr().out)}


def test_every_registered_strategy_with_every_parameter_and_default(capsys):
    items = listed(capsys)
    assert sorted(items) == pb.list_strategies()
    for name, item in items.items():
        cls = registry.get_strategy(name)
        assert [p["name"] for p in item["parameters"]] == list(cls.defaults)
        assert [p["default"] for p in item["parameters"]] == [v if v is None or isinstance(v, (int, float, str, list))
                                                               else repr(v) for v in cls.defaults.values()]
        assert item["summary"] and not item["summary"].startswith(f"{name}:")
        assert item["kind"] == cls.kind


@pytest.mark.parametrize("name", CONTRACT)
def test_contract_strategies_declare_a_range_for_every_parameter(capsys, name):
    item = listed(capsys, name)[name]
    assert all("not declared" not in p["range"] for p in item["parameters"]), item["parameters"]


def test_a_third_party_strategy_shows_up(capsys, monkeypatch):
    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))

    @pb.register_strategy("halve_tokens_test")
    class HalveTokens(TokenStrategy):
        """Keep every other token, a plug-in written outside the package.

        More text that is not the summary."""
        defaults = {"stride": 2, "offset": 0}
        param_help = {"stride": "int >= 1: keep one token in stride"}

    main(["strategies", "halve_tokens_test"])
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "halve_tokens_test (token): Keep every other token, a plug-in written outside the package."
    assert "stride  default 2; int >= 1: keep one token in stride" in text
    assert "offset  default 0; (range not declared)" in text


def test_unknown_name_is_one_line_error(capsys):
    assert main(["strategies", "no_such_strategy"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no_such_strategy" in err and "tome" in err
