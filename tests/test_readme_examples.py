"""The README's worked examples run as written."""
import re
import sys
import types
from pathlib import Path

import pytest

import pruning_bench as pb
from pruning_bench.families import ADAPTERS, locate

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_code(title: str) -> str:
    text = README.read_text()
    section = text.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.fixture
def toy_library(monkeypatch):
    import test_outside_family as toy

    monkeypatch.setitem(sys.modules, "my_models", types.SimpleNamespace(ToyViT=toy.ToyViT, ToyBlock=toy.ToyBlock))
    before = list(ADAPTERS)
    yield toy
    ADAPTERS[:] = before  # the example registers its adapter: take it out again


def test_adding_a_family_example_registers_a_family_every_strategy_runs_on(toy_library):
    namespace = {}
    exec(compile(_section_code("Adding a family"), "README.md", "exec"), namespace)
    model = toy_library.build()
    assert type(locate(model)) is namespace["ToyFamily"]
    from test_contract import check_example, check_keep_all

    for strategy in ("tome", "cls_topk", "head_prune", "layer_drop"):
        check_example(strategy, toy_library.build, toy_library.run)
        check_keep_all(strategy, toy_library.build, toy_library.run)


def test_adding_a_strategy_example_registers_a_strategy_that_keeps_the_contract(monkeypatch):
    from pruning_bench import registry

    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))  # gone again after this test
    namespace = {}
    exec(compile(_section_code("Adding a strategy"), "README.md", "exec"), namespace)
    assert "norm_topk" in pb.list_strategies()
    from conftest import ALL_FAMILIES
    from test_contract import check_example, check_keep_all

    for family in ("timm", "open_clip"):
        check_example("norm_topk", *ALL_FAMILIES[family])
        check_keep_all("norm_topk", *ALL_FAMILIES[family])
    model = ALL_FAMILIES["timm"][0]()
    found = pb.match_macs(model, "norm_topk", 0.8, tolerance=0.05)
    assert found.knob == "keep" and 1 <= found["keep"] <= 64


def test_the_example_strategy_is_listed_by_the_command_from_its_module(tmp_path, monkeypatch, capsys):
    from pruning_bench import registry
    from pruning_bench.cli import main

    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))
    (tmp_path / "my_strategies.py").write_text(_section_code("Adding a strategy"))
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["strategies", "--import", "my_strategies", "norm_topk"]) == 0
    out = capsys.readouterr().out
    assert "norm_topk" in out and "keep" in out and "patch tokens kept" in out
