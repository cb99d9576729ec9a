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
