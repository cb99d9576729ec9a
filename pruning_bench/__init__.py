"""pruning-bench: what token reduction and structured pruning cost and buy in ViT / CLIP image encoders.

Public names are resolved lazily so that `import pruning_bench` stays cheap and a broken optional
piece (say, the ONNX reader) never stops the core API from importing.
"""
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "list_strategies": "pruning_bench.registry",
    "register_strategy": "pruning_bench.registry",
    "get_strategy": "pruning_bench.registry",
    "prune": "pruning_bench.api",
    "PruneHandle": "pruning_bench.api",
    "UnsupportedModelError": "pruning_bench.errors",
    "count_flops": "pruning_bench.measure.flops",
    "measure_throughput": "pruning_bench.measure.throughput",
    "compare_throughput": "pruning_bench.measure.throughput",
    "measure_memory": "pruning_bench.measure.memory",
    "ideal_speedup": "pruning_bench.measure.analytic",
    "reference_model": "pruning_bench.reference",
    "check_checkpoint": "pruning_bench.checkpoint",
    "match_macs": "pruning_bench.match",
    "save_pruned": "pruning_bench.saved",
    "load_pruned": "pruning_bench.saved",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pruning_bench' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
