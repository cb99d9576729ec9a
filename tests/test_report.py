"""`pruning-bench report`: pairing with baselines, derived columns, unpaired runs, files written."""
import json
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

from pruning_bench import cli
from pruning_bench.report import compare, load_results, write_report


def result(path: Path, *, strategy=None, params=None, acc1=0.5, gmacs=None, ips=None, dataset="wds/cifar10",
           task="zeroshot_classification", metrics=None, mtime=None, activation_mb=None):
    data = {"dataset": dataset, "model": "ViT-B-32", "pretrained": "openai", "task": task, "language": "en",
            "metrics": metrics or {"acc1": acc1, "acc5": 0.9, "mean_per_class_recall": acc1}}
    if strategy or gmacs is not None:
        data["pruning"] = {"strategy": strategy, "params": params or {}} if strategy else None
    if gmacs is not None:
        data["efficiency"] = {"gmacs": gmacs, "gflops": 2 * gmacs, "images_per_second": ips,
                              "tokens_per_layer": [50, 15], "batch_size": 64, "dtype": "float32", "device": "cpu"}
        if activation_mb is not None:
            data["efficiency"]["memory"] = {"peak_activation_mb": activation_mb, "weights_mb": 300.0}
    path.write_text(json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def runs(tmp_path):
    result(tmp_path / "base.json", gmacs=4.0, ips=100.0, acc1=0.80, activation_mb=200.0)
    result(tmp_path / "anchor.json", strategy="anchor_diversity", params={"k_anchors": 10, "top_m": 50},
           gmacs=1.5, ips=220.0, acc1=0.72, activation_mb=180.0)
    result(tmp_path / "tome.json", strategy="tome", params={"r": 8}, gmacs=2.0, ips=180.0, acc1=0.78)
    result(tmp_path / "orphan.json", strategy="tome", params={"r": 8}, gmacs=2.0, ips=180.0, acc1=0.4, dataset="wds/other")
    return tmp_path


def test_pruned_runs_are_paired_with_their_baseline(runs):
    table = compare(load_results([runs])).set_index(["dataset", "strategy"])
    anchor = table.loc[("wds/cifar10", "anchor_diversity")]
    assert anchor["acc1_baseline"] == 0.80
    assert anchor["acc1_delta"] == pytest.approx(-0.08)
    assert anchor["gmacs_ratio"] == pytest.approx(1.5 / 4.0)
    assert anchor["speedup"] == pytest.approx(2.2)
    assert anchor["efficiency"] == pytest.approx(2.2 * (1.5 / 4.0))
    assert anchor["params"] == "k_anchors=10, top_m=50"
    assert anchor["memory_ratio"] == pytest.approx(0.9)
    assert math.isnan(table.loc[("wds/cifar10", "tome"), "memory_ratio"])  # a run without a memory record
    base = table.loc[("wds/cifar10", "baseline")]
    assert base["gmacs_ratio"] == 1.0 and base["speedup"] == 1.0 and base["acc1_delta"] == 0.0


def test_run_without_baseline_is_reported_not_dropped(runs):
    table = compare(load_results([runs]))
    assert len(table) == 4
    orphan = table[table["dataset"] == "wds/other"].iloc[0]
    assert not orphan["has_baseline"] and orphan["acc1"] == 0.4 and orphan["gmacs"] == 2.0
    assert all(math.isnan(orphan[c]) for c in ("acc1_baseline", "acc1_delta", "gmacs_ratio", "speedup", "efficiency"))


def test_baseline_comes_first_then_by_decreasing_compute(runs):
    table = compare(load_results([runs]))
    cifar = table[table["dataset"] == "wds/cifar10"]
    assert list(cifar["strategy"]) == ["baseline", "tome", "anchor_diversity"]


def test_a_measured_baseline_is_preferred_then_the_newest(tmp_path):
    result(tmp_path / "old_measured.json", gmacs=4.0, ips=100.0, acc1=0.70, mtime=1_000)
    result(tmp_path / "new_plain.json", acc1=0.75, mtime=2_000)
    result(tmp_path / "pruned.json", strategy="tome", gmacs=2.0, ips=150.0, acc1=0.60, mtime=3_000)
    pruned = compare(load_results([tmp_path])).set_index("strategy").loc["tome"]
    assert pruned["acc1_baseline"] == 0.70 and pruned["speedup"] == 1.5


def test_headline_metric_per_task(tmp_path):
    result(tmp_path / "lp.json", task="linear_probe", metrics={"lp_acc1": 0.6, "lp_acc5": 0.9})
    result(tmp_path / "ret.json", task="zeroshot_retrieval",
           metrics={"image_retrieval_recall@5": 0.5, "image_retrieval_recall@1": 0.2, "text_retrieval_recall@1": 0.3})
    table = load_results([tmp_path]).set_index("task")
    assert table.loc["linear_probe", "metric"] == "lp_acc1" and table.loc["linear_probe", "acc1"] == 0.6
    assert table.loc["zeroshot_retrieval", "metric"] == "image_retrieval_recall@1"
    assert table.loc["zeroshot_retrieval", "acc1"] == 0.2


def test_not_a_result_file_is_refused(tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a clip_benchmark result"):
        load_results([tmp_path / "x.json"])
    with pytest.raises(FileNotFoundError):
        load_results([tmp_path / "missing.json"])


def test_files_written(runs, tmp_path):
    written = write_report(compare(load_results([runs])), tmp_path / "reports" / "cmp")
    assert [p.name for p in written] == ["cmp.csv", "cmp.md", "cmp_accuracy_vs_gmacs.png", "cmp_accuracy_vs_throughput.png"]
    csv = pd.read_csv(tmp_path / "reports" / "cmp.csv")
    for column in ("model", "pretrained", "dataset", "task", "strategy", "params", "acc1", "acc1_baseline",
                   "acc1_delta", "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency"):
        assert column in csv.columns
    markdown = (tmp_path / "reports" / "cmp.md").read_text()
    assert "| anchor_diversity" in markdown and "-8.00 pp" in markdown and "2.20x" in markdown and "0.900" in markdown
    assert "without a baseline" in markdown and "orphan.json" in markdown
    assert "efficiency = speedup x gmacs_ratio" in markdown


def test_command_line(runs, tmp_path):
    exe = Path(sys.executable).parent / "pruning-bench"
    done = subprocess.run([str(exe), "report", str(runs / "base.json"), str(runs / "anchor.json"), "-o",
                           str(tmp_path / "out" / "name"), "--no-plot"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "name.csv").is_file() and (tmp_path / "out" / "name.md").is_file()
    assert not list((tmp_path / "out").glob("*.png"))
    bad = subprocess.run([str(exe), "report", str(tmp_path / "nope.json"), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


def test_dispatcher_discovers_listed_command_modules(monkeypatch, capsys):
    extra = types.ModuleType("pruning_bench.commands.hello")
    extra.add_parser = lambda sub: sub.add_parser("hello", help="say hello")
    extra.run = lambda args: print("hello") or 0
    monkeypatch.setitem(sys.modules, "pruning_bench.commands.hello", extra)
    monkeypatch.setattr(cli, "COMMANDS", ["report", "hello", "not_written_yet"])
    assert cli.main(["hello"]) == 0
    assert capsys.readouterr().out == "hello\n"
    assert set(cli.available_commands()) == {"report", "hello"}
