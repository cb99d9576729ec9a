"""Leaderboard across result files: ranking, best run within a MACs budget, clip_benchmark build CSV in and out."""
import csv
import sys

import pandas as pd
import pytest

from clip_benchmark import cli as cb_cli
from pruning_bench.cli import build_parser
from pruning_bench.commands import leaderboard as leaderboard_command
from pruning_bench.report.leaderboard import best_within_budget, leaderboard, load_inputs, strategy_wins
from test_plots import write_result

# model -> (baseline acc1, baseline GMACs); each gets tome r=8 (0.7x, -1 pp), tome r=16 (0.45x, -5 pp), cls_topk (0.4x, -3 pp)
MODELS = {"ViT-B-16": (0.93, 17.5), "ViT-S-16": (0.85, 4.6)}


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "res"
    for dataset, shift in (("wds/cifar10", 0.0), ("wds/cars", -0.2)):
        for model, (acc, gmacs) in MODELS.items():
            acc += shift
            write_result(root, model=model, dataset=dataset, acc1=acc, gmacs=gmacs, ips=50)
            write_result(root, model=model, dataset=dataset, strategy="tome", params={"r": 8}, acc1=acc - 0.01,
                         gmacs=gmacs * 0.7, ips=70)
            write_result(root, model=model, dataset=dataset, strategy="tome", params={"r": 16}, acc1=acc - 0.05,
                         gmacs=gmacs * 0.45, ips=110)
            write_result(root, model=model, dataset=dataset, strategy="cls_topk", params={"keep": 50}, acc1=acc - 0.03,
                         gmacs=gmacs * 0.4, ips=120)
    write_result(root, model="ViT-S-16", dataset="wds/flickr", task="zeroshot_retrieval", gmacs=4.6,
                 metrics={"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.6})
    return root


def test_ranked_per_dataset_with_baseline_deltas(results):
    board = leaderboard(load_inputs([results]))
    cifar = board[board["dataset"] == "wds/cifar10"]
    assert cifar["rank"].tolist() == list(range(1, 9))
    assert cifar["model_fullname"].iloc[0] == "ViT-B-16 openai" and cifar["strategy"].iloc[0] == "baseline"
    topk = cifar[(cifar["model"] == "ViT-S-16") & (cifar["strategy"] == "cls_topk")].iloc[0]
    assert topk["score_delta"] == pytest.approx(-0.03) and topk["gmacs_ratio"] == pytest.approx(0.4)
    flickr = board[board["dataset"] == "wds/flickr"].iloc[0]
    assert flickr["metric"] == "image_retrieval_recall@5" and flickr["image_retrieval_recall@5"] == 0.5
    assert pd.isna(flickr["acc1"])  # build's `acc1` column holds only acc1


def test_best_within_relative_budget(results):
    best = best_within_budget(leaderboard(load_inputs([results])), budgets=[0.3, 0.5, 0.75, 1.0])
    cell = best.set_index(["budget_value", "model", "dataset"])
    assert pd.isna(cell.loc[(0.3, "ViT-B-16", "wds/cifar10"), "strategy"])  # nothing spends <= 30%
    assert cell.loc[(0.3, "ViT-B-16", "wds/cifar10"), "candidates"] == 0
    assert cell.loc[(0.5, "ViT-B-16", "wds/cifar10"), "strategy"] == "cls_topk"  # -3 pp beats tome r=16's -5 pp
    assert cell.loc[(0.5, "ViT-B-16", "wds/cifar10"), "candidates"] == 2
    assert cell.loc[(0.75, "ViT-S-16", "wds/cars"), "params"] == "r=8"
    assert cell.loc[(1.0, "ViT-S-16", "wds/cars"), "strategy"] == "baseline"
    wins = strategy_wins(best)
    assert wins.loc["cls_topk", "<= 0.5 x baseline GMACs"] == 4 and wins.loc["tome", "<= 0.75 x baseline GMACs"] == 4


def test_best_within_absolute_budget_compares_models(results):
    best = best_within_budget(leaderboard(load_inputs([results])), gmacs_budgets=[2.0, 8.0, 100.0])
    cell = best.set_index(["budget_value", "dataset"])
    # under 2 GMACs only ViT-S-16's cls_topk (1.84) fits; under 8 ViT-B-16's cls_topk (7.0, 0.90) beats ViT-S-16's baseline (0.85)
    assert tuple(cell.loc[(2.0, "wds/cifar10"), ["model", "strategy"]]) == ("ViT-S-16", "cls_topk")
    assert tuple(cell.loc[(8.0, "wds/cifar10"), ["model", "strategy"]]) == ("ViT-B-16", "cls_topk")
    assert tuple(cell.loc[(100.0, "wds/cifar10"), ["model", "strategy"]]) == ("ViT-B-16", "baseline")
    assert pd.isna(cell.loc[(2.0, "wds/flickr"), "strategy"])


def test_build_csv_gives_the_same_leaderboard_and_shares_its_columns(results, tmp_path, monkeypatch):
    build = tmp_path / "benchmark.csv"
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "build", str(results), "--output", str(build)])
    cb_cli.main()
    from_json = leaderboard(load_inputs([results]))
    from_csv = leaderboard(load_inputs([build]))
    columns = [c for c in from_json.columns if c != "file"]
    key = ["dataset", "model", "strategy", "params"]
    pd.testing.assert_frame_equal(from_json[columns].sort_values(key).reset_index(drop=True),
                                  from_csv[columns].sort_values(key).reset_index(drop=True))
    with open(build) as f:
        build_columns = set(next(csv.reader(f)))
    shared = build_columns & set(from_json.columns)
    assert {"model", "pretrained", "model_fullname", "dataset", "task", "language", "acc1",
            "image_retrieval_recall@5"} <= shared
    both = from_json.merge(pd.read_csv(build), on=["model_fullname", "dataset", "task"], suffixes=("", "_build"))
    base = both[both["strategy"] == "baseline"].dropna(subset=["acc1"])
    assert not base.empty
    # joined on build's own columns, clip_benchmark's acc1 is the leaderboard's for the same files
    assert set(base["acc1_build"].round(6)) >= set(base["acc1"].round(6))


def test_command_writes_csv_budget_csv_and_markdown(results, tmp_path, capsys):
    parser = build_parser({"leaderboard": leaderboard_command})
    args = parser.parse_args(["leaderboard", str(results), "-o", str(tmp_path / "out" / "lb"), "--budget", "0.5",
                              "--gmacs_budget", "2", "--top", "3"])
    assert args._run(args) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / f) for f in ("lb.csv", "lb_budget.csv", "lb.md")]
    text = (tmp_path / "out" / "lb.md").read_text()
    assert "### <= 0.5 x baseline GMACs" in text and "### <= 2 GMACs" in text and "(none fits)" in text
    ranked = text.split("## Leaderboard")[1]
    ranks = [line.split("|")[1].strip() for line in ranked.splitlines() if line.startswith("| ") and "rank" not in line]
    assert ranks == ["1", "2", "3", "1", "2", "3", "1"]  # --top 3 per dataset/task in the Markdown (cars, cifar10, flickr)
    assert len(pd.read_csv(tmp_path / "out" / "lb.csv")) == 17


def test_bad_input_is_one_line_error(tmp_path, capsys):
    parser = build_parser({"leaderboard": leaderboard_command})
    args = parser.parse_args(["leaderboard", str(tmp_path / "missing.json"), "-o", str(tmp_path / "lb")])
    assert args._run(args) == 2
    assert "no such result file" in capsys.readouterr().err
