"""The DESIGN.md contract for every registered strategy on every registered family.

Parametrised over `pb.list_strategies()` x the tiny builders of `conftest.py`, keyed by the adapter
(`Family.name`) each builder's model is located as, as timm's tests run over `list_models()`: a new
strategy (or a third-party one) is covered as soon as it declares `example_params` (a configuration
that prunes on the tiny 4-block models here) and `keep_all_params` (one that keeps everything, or
None when the strategy has no such budget); a new family as soon as it has a builder, and
`test_every_registered_adapter_has_a_builder` fails until it does. The checks are plain functions
(`check_*`) so a family registered from outside the package runs the same ones
(`test_outside_family.py`).
"""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import ADAPTER_OF, ALL_FAMILIES
from pruning_bench.families import ADAPTERS, locate
from pruning_bench.measure.analytic import analytic_macs
from pruning_bench.registry import get_strategy
from pruning_bench.strategies.base import DecisionDims

STRATEGIES = pb.list_strategies()
FAMILY_NAMES = sorted(ALL_FAMILIES, key=lambda v: (ADAPTER_OF[v], v))
FAMILY_IDS = [f"{ADAPTER_OF[v]}:{v}" for v in FAMILY_NAMES]
# state_dict keys of a CLIP model's text side (open_clip CLIP, transformers CLIPModel / SiglipModel)
SINGLES = [0, 3, 7]  # images also run alone, against their rows of the batch of 8
TEXT_KEYS = ("text", "transformer.", "token_embedding", "ln_final", "positional_embedding", "logit")


def _images(batch=8):
    torch.manual_seed(1)
    return torch.randn(batch, 3, 32, 32)


def _build(build, run):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(), run


def test_every_registered_adapter_has_a_builder():
    missing = sorted({a.name for a in ADAPTERS} - set(ADAPTER_OF.values()))
    assert not missing, f"registered family adapters without a tiny builder in tests/conftest.py (ADAPTER_OF): {missing}"


@pytest.mark.parametrize("family", FAMILY_NAMES, ids=FAMILY_IDS)
def test_each_builder_is_located_as_its_adapter(family):
    model, _ = _build(*ALL_FAMILIES[family])
    assert locate(model).name == ADAPTER_OF[family]


def _refused(cls, model) -> bool:
    """Strategies that rank by the class token cannot run on a tower without one (SigLIP): they must say so."""
    return getattr(cls, "needs_class_token", False) and locate(model).n_prefix == 0


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}, [(n, type(m)) for n, m in model.named_modules()]


def _assert_restored(model, snapshot, run, x, expected):
    state, modules = snapshot
    now = model.state_dict()
    assert set(now) == set(state) and all(torch.equal(state[k], now[k]) for k in state)
    assert [(n, type(m)) for n, m in model.named_modules()] == modules
    with torch.no_grad():
        assert torch.equal(run(model, x), expected)


def _decision_macs(strategy, model, stats) -> float:
    """What the strategy declares its own decisions cost, in the blocks that reduced."""
    if strategy.kind != "token":
        return 0.0
    family = locate(model)
    dims = family.dims()
    heads = family.attention_view(family.blocks[0]).num_heads
    decision = DecisionDims(dims.embed_dim, dims.blocks[0].attn_dim // heads, dims.blocks[0].attn_dim)
    return sum(strategy.decision_macs(i, n, m, family.n_prefix, decision)
               for i, (n, m) in enumerate(zip(stats["tokens_per_layer"], stats["out_tokens_per_layer"])) if m < n)


@pytest.mark.parametrize("family", FAMILY_NAMES, ids=FAMILY_IDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_example_prunes_per_image_counts_right_and_restores(strategy, family):
    check_example(strategy, *ALL_FAMILIES[family])


def check_example(strategy, build, run):
    """The example budget prunes, per image, with MACs as the formula says, and restores exactly."""
    cls = get_strategy(strategy)
    assert isinstance(getattr(cls, "example_params", None), dict), f"{strategy} declares no example_params"
    model, run = _build(build, run)
    x = _images()
    if _refused(cls, model):
        with pytest.raises(ValueError, match="class token"):
            pb.prune(model, strategy, **cls.example_params)
        return
    text_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(TEXT_KEYS)}
    with torch.no_grad():
        expected = run(model, x)
    snapshot = _snapshot(model)
    baseline_macs = analytic_macs(model).total_macs  # fvcore's count of the unpruned tower is checked in test_flops
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # an example budget must not be clamped
        handle = pb.prune(model, strategy, **cls.example_params)
    with handle:
        with torch.no_grad():
            together = run(model, x)
            alone = torch.cat([run(model, x[i:i + 1]) for i in SINGLES])
            shuffled = run(model, x.flip(0)).flip(0)
            again = run(model, x)
        stats = handle.stats()
        count = pb.count_flops(model, x[:1])
        analytic = analytic_macs(model, stats if cls.kind == "token" else None)
        now = model.state_dict()
        assert all(torch.equal(v, now[k]) for k, v in text_before.items())  # the text tower is never touched
    assert torch.allclose(together[SINGLES], alone, atol=1e-4, rtol=0)  # an image's output ignores its batch-mates
    assert torch.allclose(together, shuffled, atol=1e-4, rtol=0)  # and their order
    assert torch.equal(together, again) and not torch.equal(together, expected)  # deterministic, and it prunes
    # the formula counts matrix work; at width 64 fvcore's 5-per-element norms are ~2% of it (0.1% at ViT-B)
    matmul_macs = count.macs - sum(v for op, v in count.by_operator.items() if "norm" in op) * 1e9
    assert matmul_macs < 0.97 * baseline_macs  # compute really removed
    formula = analytic.total_macs + _decision_macs(handle.strategies[0], model, stats)
    assert abs(matmul_macs - formula) / formula < 0.01, (matmul_macs, formula)
    handle.restore()  # restoring twice is harmless
    _assert_restored(model, snapshot, run, x, expected)


@pytest.mark.parametrize("family", ["timm", "timm_eva"], ids=["timm:timm", "eva:timm_eva"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mac_count_ignores_what_the_strategy_cached(strategy, family):
    check_count_ignores_caches(strategy, *ALL_FAMILIES[family])


def check_count_ignores_caches(strategy, build, run):
    """A count taken before the strategy's schedule constants exist equals one taken after (`dct`'s first count
    once included building its cached matrix, so `pb.match_macs` chose its r from a cost no forward paid)."""
    from pruning_bench.strategies import constants

    cls = get_strategy(strategy)
    model, run = _build(build, run)
    if _refused(cls, model):
        return
    x = _images(1)
    with pb.prune(model, strategy, **cls.example_params):
        constants._on_device.cache_clear()
        cold = pb.count_flops(model, x)
        warm = pb.count_flops(model, x)
    assert cold.macs == warm.macs, (cold.by_operator, warm.by_operator)


@pytest.mark.parametrize("family", FAMILY_NAMES, ids=FAMILY_IDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_keep_all_is_a_bit_exact_noop_with_a_warning(strategy, family):
    check_keep_all(strategy, *ALL_FAMILIES[family])


def check_keep_all(strategy, build, run):
    """A budget keeping everything is a bit-exact no-op, with a warning."""
    cls = get_strategy(strategy)
    params = getattr(cls, "keep_all_params", "missing")
    assert params != "missing", f"{strategy} declares no keep_all_params (None when it has no such budget)"
    if params is None:
        return
    model, run = _build(build, run)
    if _refused(cls, model):
        return
    x = _images(4)
    with torch.no_grad():
        expected = run(model, x)
        with pytest.warns(UserWarning):
            with pb.prune(model, strategy, **params):
                got = run(model, x)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("family", FAMILY_NAMES, ids=FAMILY_IDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_restore_is_exact_after_an_exception(strategy, family):
    check_restore_after_exception(strategy, *ALL_FAMILIES[family])


def check_restore_after_exception(strategy, build, run):
    """Leaving the `with` block by an exception restores the model exactly."""
    cls = get_strategy(strategy)
    model, run = _build(build, run)
    if _refused(cls, model):
        return
    x = _images(2)
    with torch.no_grad():
        expected = run(model, x)
    snapshot = _snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pb.prune(model, strategy, **cls.example_params), torch.no_grad():
                run(model, x)
                raise RuntimeError("boom")
    _assert_restored(model, snapshot, run, x, expected)
