"""The installed `clip_benchmark` console script, run as a user would (subprocess, ViT-B-32, random weights)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny_clip as tiny
from pruning_bench.clip_benchmark_ext import hook

CLIP_BENCHMARK = str(Path(sys.executable).parent / "clip_benchmark")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tiny.write_webdataset(tmp_path_factory.mktemp("wds") / "tiny", n_test=2, n_train=0)


def clip_benchmark(dataset, output, *extra, env=None):
    argv = [CLIP_BENCHMARK, "eval", "--dataset", "wds/tiny", "--dataset_root", str(dataset), "--model", "ViT-B-32",
            "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "2", "--num_workers", "0",
            "--no_amp", "--quiet", "--output", str(output), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def test_plain_run_gives_exactly_clip_benchmarks_metrics(dataset, tmp_path):
    """Hooked command without pruning flags vs clip_benchmark with only the numpy fix (its own run and parser)."""
    ours = clip_benchmark(dataset, tmp_path / "ours.json")
    assert ours.returncode == 0, ours.stderr
    upstream = clip_benchmark(dataset, tmp_path / "upstream.json", env={hook.ENV_VAR: "compat"})
    assert upstream.returncode == 0, upstream.stderr
    assert (tmp_path / "ours.json").read_bytes() == (tmp_path / "upstream.json").read_bytes()


def test_parameter_error_stops_before_any_work_with_one_line(dataset, tmp_path):
    """(Every message is checked in-process in test_clip_benchmark_flags; one start here, as each costs seconds.)"""
    done = clip_benchmark(dataset, tmp_path / "x.json", "--enable_pruning", "--top_m", "-1")
    named = "top_m=-1"
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and lines[0].startswith("clip_benchmark eval: error:")
    assert not (tmp_path / "x.json").exists()
