"""Every token strategy's patched forward is GPU-clean: it traces into one graph with
`torch.compile(fullgraph=True)`, which fails on any host synchronisation (`.item()`, a Python branch
on a tensor's value), on a generator built inside the forward, and on any other graph break.

The backend is dynamo's frame counter (no code generation: tracing is what proves the point, and it
is fast on a CPU). The test is parametrised over `pb.list_strategies()` x two families, so a strategy is covered (and
selected with `-k NAME`) as soon as it is registered, with its `example_params` when it declares them.
"""
import warnings

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import pruning_bench as pb
from pruning_bench.registry import get_strategy

# Strategies whose patched forward is known not to compile fullgraph (name -> why). Asserted both
# ways: a listed one that starts compiling, or an unlisted one that stops, fails the test.
EXPECTED_FAILURES: dict[str, str] = {}

# For strategies that declare no `example_params`: a configuration that reduces tokens on the tiny models.
FALLBACK_PARAMS = {
    "tome": {"r": 4},
    "anchor_diversity": {"k_anchors": 4, "top_m": 12},
    "cls_topk": {"keep": 20},
    "random_drop": {"keep": 20},
}
# Paths the example configurations may not reach: a seeded match share, a seeded random draw, the
# every-token-as-query importance, a budget clamped during the forward.
EXTRA_CASES = [
    ("tome", {"r": 4, "match_fraction": 0.5, "seed": 3}),
    ("random_drop", {"keep": 20, "seed": 2}),
    ("anchor_diversity", {"k_anchors": 4, "top_m": 12, "importance_direction": "token_to_anchor"}),
    ("tome", {"r": 40}),  # clamped: the note is the eager forward's warning, never a graph break
]


def token_strategies() -> list[str]:
    return [name for name in pb.list_strategies() if get_strategy(name).kind == "token"]


def example(name: str) -> dict:
    cls = get_strategy(name)
    return dict(getattr(cls, "example_params", None) or FALLBACK_PARAMS.get(name, {}))


def _models():
    from conftest import tiny_open_clip, tiny_timm

    # registers put prefix tokens in ToMe's set B (the prefix permutation path); open_clip runs in-proj attention
    return {"timm_registers": lambda: tiny_timm(reg_tokens=3), "open_clip": lambda: tiny_open_clip().visual}


def compile_and_compare(name: str, params: dict, build) -> tuple[bool, str]:
    """(compiled fullgraph?, reason). Asserts compiled == eager and one graph for two batches of one shape."""
    model = build()
    torch.manual_seed(2)
    first, second = torch.randn(3, 3, 32, 32), torch.randn(3, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        handle = pb.prune(model, name, **params)
        counter = CompileCounter()
        compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
        torch._dynamo.reset()
        with torch.inference_mode():
            try:
                got = compiled(first)  # compiled before any eager run: nothing may rely on eager warm-up
            except Exception as exc:  # noqa: BLE001 - any tracing failure is the finding
                handle.restore()
                return False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            compiled_stats = handle.stats()["tokens_per_layer"]
            got_second = compiled(second)
            want, want_second = model(first), model(second)
            eager_stats = handle.stats()["tokens_per_layer"]
    handle.restore()
    assert counter.frame_count == 1, f"{name}: {counter.frame_count} graphs for one input shape (recompiled per batch)"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_second, want_second, rtol=0, atol=1e-5)
    assert compiled_stats == eager_stats, f"{name}: compiled forward recorded {compiled_stats}, eager {eager_stats}"
    assert eager_stats[-1] < eager_stats[0], f"{name} {params}: the case reduces no token ({eager_stats})"
    return True, ""


@pytest.mark.parametrize("family", sorted(_models()))
@pytest.mark.parametrize("name", token_strategies())
def test_token_strategy_compiles_fullgraph_and_matches_eager(name, family):
    ok, why = compile_and_compare(name, example(name), _models()[family])
    if name in EXPECTED_FAILURES:
        assert not ok, f"{name} now compiles fullgraph on {family}: remove it from EXPECTED_FAILURES"
    else:
        assert ok, f"{name} on {family}: fullgraph failure {why}"


@pytest.mark.parametrize("name,params", EXTRA_CASES, ids=[f"{n}-{'-'.join(p)}" for n, p in EXTRA_CASES])
def test_seeded_and_alternative_paths_compile_fullgraph(name, params):
    ok, why = compile_and_compare(name, params, _models()["timm_registers"])
    assert ok, f"{name} {params}: {why}"


def test_expected_failures_name_registered_token_strategies():
    assert set(EXPECTED_FAILURES) <= set(token_strategies())
