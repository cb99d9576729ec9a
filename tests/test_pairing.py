"""Like-for-like pairing: a pruned run meets only a baseline with the same settings; otherwise NaN and a note."""
import json
import math
import os

import pytest

from pruning_bench.report import compare, load_results
from pruning_bench.report.write import markdown

DERIVED = ("acc1_baseline", "acc1_delta", "gmacs_ratio", "speedup", "efficiency")


def write(path, *, strategy=None, acc1=0.8, gmacs=4.0, ips=100.0, batch=16, threads=2, dtype="float32", seed=0,
          task="zeroshot_classification", test_images=500, training=None, mtime=None):
    data = {"dataset": "wds/cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": task, "language": "en",
            "metrics": {"acc1": acc1}, "seed": seed,
            "data": {"test": {"split": "test", "images": test_images, "classes": 10}},
            "pruning": {"strategy": strategy, "params": {"r": 8}} if strategy else None,
            "efficiency": {"gmacs": gmacs, "images_per_second": ips, "batch_size": batch, "dtype": dtype,
                           "device": "cpu", "threads": threads, "amp": False, "image_size": [224, 224]}}
    if training is not None:
        data["training"] = training
    path.write_text(json.dumps(data))
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


def test_batch_size_mismatch_gives_nan_and_a_note_never_a_ratio(tmp_path):
    write(tmp_path / "base.json", batch=16, ips=100.0)
    write(tmp_path / "pruned.json", strategy="tome", batch=32, ips=275.0, gmacs=2.0, acc1=0.7)
    table = compare(load_results([tmp_path]))
    pruned = table.set_index("strategy").loc["tome"]
    assert not pruned["has_baseline"]
    assert all(math.isnan(pruned[c]) for c in DERIVED)
    assert "batch_size 32 vs 16" in pruned["pairing_note"]
    text = markdown(table, "t")
    assert "batch_size 32 vs 16" in text and "2.75x" not in text


@pytest.mark.parametrize("setting, run_value, base_value", [
    ("threads", 4, 2), ("dtype", "bfloat16", "float32"), ("test_images", 1000, 500)])
def test_every_setting_is_checked(tmp_path, setting, run_value, base_value):
    write(tmp_path / "base.json", **{setting: base_value})
    write(tmp_path / "pruned.json", strategy="tome", **{setting: run_value})
    pruned = compare(load_results([tmp_path])).set_index("strategy").loc["tome"]
    assert math.isnan(pruned["speedup"]) and str(run_value) in pruned["pairing_note"]


def test_training_tasks_pair_by_seed_and_training_settings(tmp_path):
    settings = {"epochs": 1, "lr": 1e-3, "batch_size": 8}
    for seed in (0, 1):
        write(tmp_path / f"base{seed}.json", task="finetune", seed=seed, acc1=0.5 + seed / 10, training=settings)
    write(tmp_path / "pruned1.json", strategy="tome", task="finetune", seed=1, acc1=0.55, training=settings)
    write(tmp_path / "other_lr.json", strategy="tome", task="finetune", seed=0, acc1=0.4,
          training={**settings, "lr": 1e-2})
    table = compare(load_results([tmp_path])).set_index("file")
    assert table.loc[str(tmp_path / "pruned1.json"), "baseline_file"] == str(tmp_path / "base1.json")
    assert table.loc[str(tmp_path / "pruned1.json"), "acc1_delta"] == pytest.approx(-0.05)
    other = table.loc[str(tmp_path / "other_lr.json")]
    assert math.isnan(other["acc1_delta"]) and "training" in other["pairing_note"] and "0.01" in other["pairing_note"]


def test_seed_splits_pairing_for_every_task(tmp_path):
    """Random-init weights change with the seed: a seed-0 run is never compared with the seed-1 baseline."""
    for seed in (0, 1):
        write(tmp_path / f"base{seed}.json", seed=seed, acc1=0.5 + seed / 10)
    write(tmp_path / "pruned1.json", strategy="tome", seed=1, acc1=0.55)
    write(tmp_path / "pruned3.json", strategy="tome", seed=3, acc1=0.55)
    table = compare(load_results([tmp_path])).set_index("file")
    assert table.loc[str(tmp_path / "pruned1.json"), "baseline_file"] == str(tmp_path / "base1.json")
    assert table.loc[str(tmp_path / "pruned1.json"), "acc1_delta"] == pytest.approx(-0.05)
    lone = table.loc[str(tmp_path / "pruned3.json")]
    assert math.isnan(lone["acc1_delta"]) and "seed 3 vs" in lone["pairing_note"]


@pytest.mark.parametrize("field, run_value, base_value", [
    ("dataset_root", "/data/a", "/data/b"), ("subset", "first 64", "first 256"), ("split", "test", "val")])
def test_which_images_is_part_of_identity(tmp_path, field, run_value, base_value):
    def with_test(path, value, **kw):
        write(path, **kw)
        data = json.loads(path.read_text())
        data["data"]["test"][field] = value
        path.write_text(json.dumps(data))

    with_test(tmp_path / "base.json", base_value)
    with_test(tmp_path / "pruned.json", run_value, strategy="tome")
    pruned = compare(load_results([tmp_path])).set_index("strategy").loc["tome"]
    assert math.isnan(pruned["acc1_delta"]) and f"{field} {run_value} vs {base_value}" in pruned["pairing_note"]


def test_two_matching_baselines_a_fixed_rule_not_time_chooses_and_the_note_names_both(tmp_path):
    for mtimes in ((1_000, 5_000), (5_000, 1_000)):  # file times never matter
        write(tmp_path / "b_late.json", acc1=0.80, ips=100.0, mtime=mtimes[0])
        write(tmp_path / "a_early.json", acc1=0.70, ips=90.0, mtime=mtimes[1])
        write(tmp_path / "pruned.json", strategy="tome", acc1=0.75, ips=150.0, mtime=4_000)
        pruned = compare(load_results([tmp_path])).set_index("strategy").loc["tome"]
        assert pruned["baseline_file"] == str(tmp_path / "a_early.json")  # both measured: first by file name
        note = pruned["pairing_note"]
        assert "2 matching baselines" in note and "a_early.json" in note and "b_late.json" in note
        assert "first by result file name" in note and "closest in time" not in note
    write(tmp_path / "a_early.json", acc1=0.70, gmacs=None)  # not measured for efficiency: the other one wins
    pruned = compare(load_results([tmp_path])).set_index("strategy").loc["tome"]
    assert pruned["baseline_file"] == str(tmp_path / "b_late.json")
