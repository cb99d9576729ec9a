"""Fixes for clip_benchmark 1.6.2 bugs, applied to its modules in memory (its files stay untouched).

- Zero-shot accuracy on numpy >= 2.4: `accuracy` calls `float()` on a one-element *array*, which
  numpy 2.4 refuses (only 0-d arrays convert). Replaced by the same count taken with `.item()`.
- Linear probe on CPU: `linear_probe.evaluate` asserts `device == 'cuda'` and moves the featurizer,
  the classifier and each batch with `.cuda()`. Off CUDA, an AST-rewritten copy of clip_benchmark's
  own module runs instead, identical except that the assertion is dropped and `.cuda()` becomes
  `.to(device)`; on CUDA the original runs. If the source no longer has the expected shape (a newer
  release), nothing is replaced.
- `requests`: clip_benchmark imports it at start-up (datasets/imagenetv2.py) without declaring it.
  That is fixed by pruning-bench's own dependency list, not here: a stand-in module would make
  other libraries believe requests is installed.
"""
from __future__ import annotations

import ast
import functools
import inspect
import types

import torch


# Lists that `topk_accuracy` appends each (logits, target) call to: how `outcomes` keeps per-image correctness.
ACCURACY_RECORDERS: list[list] = []


def topk_accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    """Share of rows whose target is among the k highest logits, for each k (clip_benchmark's definition)."""
    for recorder in ACCURACY_RECORDERS:
        recorder.append((output.detach(), target.detach()))
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [correct[:k].reshape(-1).float().sum().item() / n for k in topk]


def fix_zeroshot_classification(module) -> None:
    module.accuracy = topk_accuracy


# ---------------------------------------------------------------- linear probe off CUDA


class _DeviceAgnostic(ast.NodeTransformer):
    """Drops `assert device == 'cuda'` and turns argument-less `x.cuda()` into `x.to(device)`."""

    def __init__(self):
        self.asserts = 0
        self.cuda_calls = 0

    def visit_Assert(self, node):
        test = node.test
        if (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name) and test.left.id == "device"
            and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "cuda"
        ):
            self.asserts += 1
            return ast.Pass()
        return node

    def visit_Call(self, node):
        self.generic_visit(node)
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "cuda" and not node.args and not node.keywords:
            self.cuda_calls += 1
            return ast.copy_location(
                ast.Call(ast.Attribute(func.value, "to", ast.Load()), [ast.Name("device", ast.Load())], []), node
            )
        return node


def device_agnostic_linear_probe(module) -> types.ModuleType | None:
    """A copy of clip_benchmark's linear_probe module that runs on any device, or None if not applicable."""
    tree = ast.parse(inspect.getsource(module))
    rewrite = _DeviceAgnostic()
    tree = ast.fix_missing_locations(rewrite.visit(tree))
    if rewrite.asserts == 0:  # upstream no longer insists on CUDA: nothing to fix
        return None
    copy = types.ModuleType(module.__name__, module.__doc__)
    copy.__dict__.update(__file__=module.__file__, __package__=module.__package__, __spec__=module.__spec__)
    exec(compile(tree, module.__file__, "exec"), copy.__dict__)
    return copy


def fix_linear_probe(module) -> None:
    module.accuracy = topk_accuracy  # bound by name at import: `from .zeroshot_classification import accuracy`
    if getattr(module.evaluate, "_pruning_bench_any_device", False):
        return
    portable = device_agnostic_linear_probe(module)
    if portable is None:
        return
    portable.accuracy = topk_accuracy
    original = module.evaluate

    signature = inspect.signature(original)

    @functools.wraps(original)
    def evaluate(*args, **kwargs):
        device = signature.bind_partial(*args, **kwargs).arguments.get("device", "cuda")
        use = original if str(device).startswith("cuda") else portable.evaluate
        return use(*args, **kwargs)

    evaluate._pruning_bench_any_device = True
    evaluate._pruning_bench_portable = portable
    module.evaluate = evaluate


def keep_pruning_placeholder(cli) -> None:
    """Compat mode (the plugin's flags off): an `--output` template written for the plugin, with
    `{pruning}` in it, names the run `baseline` instead of failing in clip_benchmark's `.format`."""
    import argparse
    import functools

    from ..record.naming import BASELINE_SLUG, PLACEHOLDER

    original = cli.run
    if getattr(original, "_pruning_bench_compat", False):
        return

    @functools.wraps(original)
    def run(args):
        if PLACEHOLDER in getattr(args, "output", ""):
            args = argparse.Namespace(**vars(args))
            args.output = args.output.replace(PLACEHOLDER, BASELINE_SLUG)
        return original(args)

    run._pruning_bench_compat = True
    cli.run = run

