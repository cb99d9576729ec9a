"""Start-up hook: adapt clip_benchmark modules right after they are imported, and never break them.

Loaded from `pruning_bench_clip_benchmark.pth` by every interpreter of the environment, so it only
uses the standard library and does nothing until one of `TARGETS` is imported. Each adapter runs
after the target module has fully executed; if the adapter fails, the module stays exactly as
clip_benchmark defined it and a one-line notice goes to stderr.

The environment variable PRUNING_BENCH_CLIP_BENCHMARK selects what is adapted:
`on` (default) everything, `compat` only the upstream compatibility fixes, `off` nothing.
"""
from __future__ import annotations

import importlib
import os
import sys

ENV_VAR = "PRUNING_BENCH_CLIP_BENCHMARK"

_COMPAT = "pruning_bench.clip_benchmark_ext.compat"
COMPAT_TARGETS = {
    "clip_benchmark.metrics.zeroshot_classification": f"{_COMPAT}:fix_zeroshot_classification",
    "clip_benchmark.metrics.linear_probe": f"{_COMPAT}:fix_linear_probe",
    "clip_benchmark.cli": f"{_COMPAT}:keep_pruning_placeholder",
}
TARGETS = {**COMPAT_TARGETS, "clip_benchmark.cli": "pruning_bench.clip_benchmark_ext.integration:extend_cli"}


def mode() -> str:
    value = os.environ.get(ENV_VAR, "on").strip().lower()
    if value in ("off", "0", "no", "false"):
        return "off"
    return "compat" if value == "compat" else "on"


def targets_for(selected: str) -> dict[str, str]:
    return {"on": TARGETS, "compat": COMPAT_TARGETS}.get(selected, {})


def adapt(module, adapter: str) -> bool:
    """Run `adapter` ("module:function") on `module`; on any error leave it alone and say so once."""
    try:
        module_name, function = adapter.split(":")
        getattr(importlib.import_module(module_name), function)(module)
        return True
    except Exception as exc:  # the hook must never stop clip_benchmark from running
        print(f"pruning-bench: could not extend {module.__name__} ({type(exc).__name__}: {exc}); "
              f"it runs unmodified", file=sys.stderr)
        return False


class _AdaptingLoader:
    """Wraps the real loader: executes the module as usual, then adapts it."""

    def __init__(self, loader, adapter: str):
        self._loader = loader
        self._adapter = adapter

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        adapt(module, self._adapter)

    def __getattr__(self, name):  # get_source, get_code, is_package, resource readers...
        return getattr(self._loader, name)


class ClipBenchmarkFinder:
    """Meta-path finder that only answers for the modules in `targets`, by asking the other finders."""

    def __init__(self, targets: dict[str, str]):
        self.targets = dict(targets)

    def find_spec(self, fullname, path=None, target=None):
        adapter = self.targets.get(fullname)
        if adapter is None:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, ClipBenchmarkFinder) or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _AdaptingLoader(spec.loader, adapter)
        return spec

    def invalidate_caches(self):
        pass


def install(selected: str | None = None) -> ClipBenchmarkFinder | None:
    """Put the finder first on `sys.meta_path` (once); adapt targets that are already imported."""
    targets = targets_for(selected or mode())
    if not targets:
        return None
    for finder in sys.meta_path:
        if isinstance(finder, ClipBenchmarkFinder):
            return finder
    finder = ClipBenchmarkFinder(targets)
    sys.meta_path.insert(0, finder)
    for name, adapter in targets.items():
        module = sys.modules.get(name)
        if module is not None:
            adapt(module, adapter)
    return finder
