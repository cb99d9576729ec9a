"""Upstream clip_benchmark 1.6.2 breakages, each fixed inside pruning-bench (its files stay untouched).

Each test exercises clip_benchmark's own module as this environment imports it (so through the
start-up hook) and, where it matters, shows that a pristine copy of the same module still breaks.
"""
import importlib.util
import os
import subprocess
import sys
from importlib import metadata

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import clip_benchmark.metrics as metrics_pkg
from clip_benchmark.metrics import linear_probe, zeroshot_classification


def pristine(module_name):
    """A fresh copy of a clip_benchmark module, executed from its file without any adaptation."""
    path = os.path.join(os.path.dirname(metrics_pkg.__file__), f"{module_name}.py")
    spec = importlib.util.spec_from_file_location(f"clip_benchmark.metrics._pristine_{module_name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def reference_topk(logits, target, k):
    return float((logits.argsort(dim=1, descending=True)[:, :k] == target[:, None]).any(dim=1).float().mean())


def test_zero_shot_accuracy_works_on_this_numpy():
    torch.manual_seed(0)
    logits, target = torch.randn(50, 10), torch.randint(0, 10, (50,))
    acc1, acc5 = zeroshot_classification.accuracy(logits, target, topk=(1, 5))
    assert acc1 == pytest.approx(reference_topk(logits, target, 1))
    assert acc5 == pytest.approx(reference_topk(logits, target, 5))
    assert isinstance(acc1, float)
    assert linear_probe.accuracy is zeroshot_classification.accuracy  # the by-name copy is fixed too


@pytest.mark.skipif(tuple(int(p) for p in np.__version__.split(".")[:2]) < (2, 4), reason="the bug needs numpy >= 2.4")
def test_upstream_zero_shot_accuracy_is_broken_on_numpy_2_4():
    with pytest.raises(TypeError, match="0-dimensional"):
        pristine("zeroshot_classification").accuracy(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]))


class TinyEncoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Linear(12, 6)

    def encode_image(self, x):
        return self.proj(x.flatten(1))


def probe_loaders():
    torch.manual_seed(0)
    labels = torch.arange(24) % 3
    images = torch.randn(24, 3, 2, 2) + labels[:, None, None, None].float()
    train = DataLoader(TensorDataset(images[:18], labels[:18]), batch_size=6)
    test = DataLoader(TensorDataset(images[18:], labels[18:]), batch_size=6)
    return train, test


def run_probe(evaluate, feature_root):
    train, test = probe_loaders()
    return evaluate(TinyEncoder(), train, test, -1, 6, 0, 0.1, 3, "tiny-probe", 0, str(feature_root), device="cpu",
                    amp=False, verbose=False)


def test_linear_probe_runs_on_cpu(tmp_path):
    result = run_probe(linear_probe.evaluate, tmp_path)
    assert set(result) >= {"lp_acc1", "lp_acc5", "lp_mean_per_class_recall"}
    assert 0.0 <= result["lp_acc1"] <= 1.0
    assert (tmp_path / "tiny-probe" / "features_train.pt").is_file()


def test_upstream_linear_probe_refuses_cpu(tmp_path):
    with pytest.raises(AssertionError):
        run_probe(pristine("linear_probe").evaluate, tmp_path)


def test_cuda_runs_keep_upstream_linear_probe():
    assert linear_probe.evaluate.__wrapped__.__module__ == "clip_benchmark.metrics.linear_probe"
    assert linear_probe.evaluate._pruning_bench_portable.evaluate is not linear_probe.evaluate.__wrapped__


def test_requests_is_a_declared_dependency():
    requirements = [r.split(";")[0].strip().lower() for r in metadata.requires("pruning-bench") or []]
    assert any(r == "requests" or r.startswith(("requests>", "requests=", "requests<", "requests ")) for r in requirements)


def test_clip_benchmark_cannot_start_without_requests():
    """Why the dependency is declared: clip_benchmark.cli imports requests at start-up."""
    code = "import sys; sys.modules['requests'] = None; import clip_benchmark.cli"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "requests" in out.stderr
