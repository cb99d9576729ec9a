"""A run carries its identity and its per-image outcomes; `--max_samples`; build CSV cells as JSON; umask.

clip_benchmark runs in this process on a tiny random CLIP and a 6-image webdataset (3 classes, interleaved).
"""
import csv
import json
import math
import os
import sys
import warnings

import numpy as np
import pytest
from clip_benchmark import cli

import tiny_clip as tiny
from pruning_bench.record import atomic
from pruning_bench.report import compare, load_results
from pruning_bench.report.uncertainty import unpack_correct

warnings.filterwarnings("ignore", message=".*shardshuffle.*")
PRUNE = ["--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=4"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cb")
    return {"model": tiny.register_tiny_clip(root),
            "classification": str(tiny.write_webdataset(root / "cls", n_test=6)),
            "retrieval": str(tiny.write_webdataset(root / "ret", n_test=6, retrieval=True))}


def clip_benchmark_eval(monkeypatch, data, out, *extra, task="zeroshot_classification", dataset="classification",
                        name="{task}_{pruning}.json"):
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", data[dataset], "--model", data["model"],
            "--pretrained", "", "--task", task, "--batch_size", "4", "--num_workers", "0", "--no_amp", "--quiet",
            "--throughput_repeats", "1", "--feature_root", str(out / "features"), "--output", str(out / name), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()


def read(path):
    return json.loads(path.read_text())


def outcomes_mean(block):
    return unpack_correct(block["correct"], block["n"]).mean()


# ---------------------------------------------------------------- identity and --max_samples


@pytest.mark.parametrize("extra", [[], PRUNE], ids=["plain", "pruned"])
def test_max_samples_evaluates_the_first_n_images_and_records_identity(monkeypatch, tmp_path, data, extra):
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--max_samples", "4", "--seed", "3", *extra)
    [path] = tmp_path.glob("zeroshot_classification_*.json")
    result = read(path)
    assert result["seed"] == 3 and result["result_file"] == path.name
    assert result["data"]["test"] == {"split": "test", "images": 4, "dataset_root": os.path.abspath(data["classification"]),
                                      "subset": "first 4", "max_samples": 4}
    assert result["per_image"]["n"] == 4
    assert outcomes_mean(result["per_image"]) == pytest.approx(result["metrics"]["acc1"], abs=1e-12)
    settings = result.get("efficiency") or result  # measured (pruned), else recorded by the run itself
    assert (settings["batch_size"], settings["amp"], settings["device"], settings["dtype"]) == (4, False, "cpu", "float32")
    assert settings["image_size"] == [32, 32] and settings["threads"] >= 1


def test_the_first_n_images_are_the_first_n_of_the_full_run(monkeypatch, tmp_path, data):
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--measure_efficiency", name="all.json")
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--max_samples", "4", name="four.json")
    full, four = read(tmp_path / "all.json"), read(tmp_path / "four.json")
    assert full["data"]["test"]["images"] == 6 and full["data"]["test"]["subset"] == "all"
    assert (unpack_correct(full["per_image"]["correct"], 6)[:4] == unpack_correct(four["per_image"]["correct"], 4)).all()


def test_linear_probe_and_retrieval_keep_per_image_and_per_query_outcomes(monkeypatch, tmp_path, data):
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, task="linear_probe")
    probe = read(next(tmp_path.glob("linear_probe_*.json")))
    assert probe["per_image"]["n"] == 6
    assert outcomes_mean(probe["per_image"]) == pytest.approx(probe["metrics"]["lp_acc1"], abs=1e-12)
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--max_samples", "5", "--recall_k", "1", "2",
                        task="zeroshot_retrieval", dataset="retrieval")
    retrieval = read(next(tmp_path.glob("zeroshot_retrieval_*.json")))
    assert retrieval["data"]["test"]["images"] == 5
    assert set(retrieval["per_query"]) == {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 2)}
    for name, block in retrieval["per_query"].items():
        assert block["n"] == (10 if name.startswith("image") else 5)  # 2 captions per image: 10 text queries
        assert outcomes_mean(block) == pytest.approx(retrieval["metrics"][name], abs=1e-7)
    [row] = load_results([tmp_path / retrieval["result_file"]]).to_dict("records")
    assert row["per_image_n"] == 10 and row["per_image_correct"] == retrieval["per_query"]["image_retrieval_recall@1"]["correct"]


def test_max_samples_is_checked_before_any_work(monkeypatch, tmp_path, data, capsys):
    for bad, named in ((["--max_samples", "0"], "--max_samples=0"), (["--max_samples", "4", "--num_workers", "2"],
                                                                      "--num_workers 0 or 1")):
        with pytest.raises(SystemExit) as stop:
            clip_benchmark_eval(monkeypatch, data, tmp_path, *bad[:2], *(bad[2:] or []))
        assert stop.value.code == 2 and named in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_pairing_follows_the_seed_and_the_image_count(monkeypatch, tmp_path, data):
    for seed in (0, 1):
        clip_benchmark_eval(monkeypatch, data, tmp_path, "--measure_efficiency", "--seed", str(seed), "--max_samples", "4",
                            name=f"{{task}}_{{pruning}}_seed{seed}.json")
        clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, "--seed", str(seed), "--max_samples", "4",
                            name=f"{{task}}_{{pruning}}_seed{seed}.json")
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, "--max_samples", "5", name="five_{pruning}.json")
    table = compare(load_results([tmp_path])).set_index("file")
    for seed in (0, 1):
        row = table.loc[str(tmp_path / f"zeroshot_classification_cls_topk-keep4-start_layer1_seed{seed}.json")]
        assert row["baseline_file"] == str(tmp_path / f"zeroshot_classification_baseline_seed{seed}.json")
        assert row["acc1_delta"] == pytest.approx(row["acc1"] - table.loc[row["baseline_file"], "acc1"])
    five = table.loc[str(tmp_path / "five_cls_topk-keep4-start_layer1.json")]
    assert math.isnan(five["acc1_delta"]) and "test_samples 5 vs 4" in five["pairing_note"]


# ---------------------------------------------------------------- build CSV and the report from it


def test_build_csv_cells_are_json_and_report_the_same_table(monkeypatch, tmp_path, data):
    runs = tmp_path / "runs"
    clip_benchmark_eval(monkeypatch, data, runs, "--max_samples", "5")  # no efficiency: the run records its settings
    clip_benchmark_eval(monkeypatch, data, runs, *PRUNE, "--max_samples", "5")
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "build", str(runs), "--output", str(tmp_path / "b.csv")])
    cli.main()
    with open(tmp_path / "b.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("data", "per_image") + (("efficiency",) if row["strategy"] == "cls_topk" else ()):
            assert isinstance(json.loads(row[key]), dict), key
    assert json.loads(next(r for r in rows if r["strategy"] == "cls_topk")["pruning"])["strategy"] == "cls_topk"
    assert_same_tables(compare(load_results([runs])), compare(load_results([tmp_path / "b.csv"])), tmp_path / "b.csv")


def assert_same_tables(from_json, from_csv, csv_path):
    """Every cell equal, but the file columns (a JSON path against a CSV line, which the result names)."""
    import pandas as pd

    assert list(from_json.columns) == list(from_csv.columns) and len(from_json) == len(from_csv)
    assert from_json["has_baseline"].all()  # every pruned run found its baseline (and a baseline is its own)
    key = ["strategy", "seed"]
    a = from_json.sort_values(key).reset_index(drop=True)
    b = from_csv.sort_values(key).reset_index(drop=True)
    for column in a.columns:
        if column in ("file", "baseline_file"):
            continue
        for i, (x, y) in enumerate(zip(a[column], b[column])):
            same = (pd.isna(x) and pd.isna(y)) if not isinstance(x, str) and pd.isna(x) else x == y
            assert same, f"{column} row {i}: {x!r} (JSON) vs {y!r} (CSV)"
    with open(csv_path, newline="") as f:  # a CSV row's file is `PATH:LINE`; the row names its result file
        named = {f"{csv_path}:{line}": row["result_file"] for line, row in enumerate(csv.DictReader(f), start=2)}
    assert list(a["file"].map(os.path.basename)) == list(b["file"].map(named))
    assert list(a["baseline_file"].map(os.path.basename)) == list(b["baseline_file"].map(named))


# ---------------------------------------------------------------- files


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_files_respect_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        atomic.write_json(tmp_path / "r.json", {"a": 1})
        with atomic.atomic_path(tmp_path / "r.pt") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == mode
    assert (tmp_path / "r.pt").stat().st_mode & 0o777 == mode
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": 1}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left behind


def test_result_files_of_a_run_are_readable_by_the_group_under_umask_022(monkeypatch, tmp_path, data):
    old = os.umask(0o022)
    try:
        clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, "--max_samples", "4")
    finally:
        os.umask(old)
    [path] = tmp_path.glob("*.json")
    assert path.stat().st_mode & 0o777 == 0o644
    assert np.isfinite(read(path)["metrics"]["acc1"])


# ---------------------------------------------------------------- per-image outcomes reach the paired bootstrap


def configurations(prefix):
    import pandas as pd

    return pd.read_csv(f"{prefix}_configurations.csv").set_index("strategy")


def test_single_seed_clip_benchmark_pair_gets_the_paired_bootstrap(monkeypatch, tmp_path, data):
    from pruning_bench.cli import main

    clip_benchmark_eval(monkeypatch, data, tmp_path / "runs", "--measure_efficiency")
    clip_benchmark_eval(monkeypatch, data, tmp_path / "runs", *PRUNE)
    assert main(["report", str(tmp_path / "runs"), "-o", str(tmp_path / "r"), "--no-plot"]) == 0
    assert configurations(tmp_path / "r").loc["cls_topk", "delta_method"] == "bootstrap"
    assert (tmp_path / "r.md").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_pruning_bench_eval_writes_per_image_correctness_and_identity(tmp_path):
    from pruning_bench.cli import main
    from colour_webdataset import write_colour_webdataset

    root = write_colour_webdataset(tmp_path / "wds", n_train=9, n_test=6, classes=3)
    common = ["--model", "vit_tiny_patch16_224", "--img_size", "32", "--model_arg", "patch_size=8", "--model_arg",
              "depth=2", "--dataset", "wds/colours", "--dataset_root", str(root), "--task", "probe",
              "--train_samples", "9", "--test_samples", "5", "--batch_size", "4", "--throughput_repeats", "1",
              "--efficiency_batch_size", "2", "--no_progress", "--seed", "2", "--output", str(tmp_path / "r" / "{pruning}.json")]
    assert main(["eval", *common]) == 0
    assert main(["eval", *common, "--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=2"]) == 0
    for path in (tmp_path / "r").glob("*.json"):
        result = read(path)
        assert result["seed"] == 2 and result["result_file"] == path.name
        assert result["model_args"] == {"patch_size": 8, "depth": 2}
        test = result["data"]["test"]
        assert test["images"] == 5 and test["subset"] == "first 5" and test["dataset_root"] == str(root)
        assert result["per_image"]["n"] == 5
        assert outcomes_mean(result["per_image"]) == pytest.approx(result["metrics"]["acc1"], abs=1e-12)
    assert main(["report", str(tmp_path / "r"), "-o", str(tmp_path / "rep"), "--no-plot"]) == 0
    assert configurations(tmp_path / "rep").loc["tome", "delta_method"] == "bootstrap"
    assert main(["eval", *common, "--max_samples", "3"]) == 2  # clip_benchmark's flag; here --test_samples


def test_a_pruned_run_says_what_it_applied_to_which_model_and_any_clamp(monkeypatch, tmp_path, data, capsys):
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--enable_pruning", "--prune_strategy", "cls_topk",
                        "--prune_param", "keep=100", "--max_samples", "4")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pruning-bench:")]
    applied = [line for line in lines if "applied cls_topk-keep100-start_layer1" in line]
    assert len(applied) == 1 and data["model"] in applied[0]
    [result] = [read(p) for p in tmp_path.glob("*.json")]
    assert result["pruning"]["notes"] and all(any(note in line for line in lines) for note in result["pruning"]["notes"])
