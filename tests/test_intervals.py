"""Intervals over seeds that share one test set, chance per run, and the leaderboard's budgets and leads."""
import json

import numpy as np
import pandas as pd
import pytest

from pruning_bench.cli import build_parser
from pruning_bench.commands import leaderboard as leaderboard_command
from pruning_bench.report import compare, load_results, write_report
from pruning_bench.report.aggregate import aggregate
from pruning_bench.report.leaderboard import best_within_budget, leaderboard, write_leaderboard
from pruning_bench.report.uncertainty import (MISSING_OUTCOMES_NOTE, NO_OUTCOMES, images_and_seeds_interval,
                                              pack_correct)

N = 2000


def result(root, name, *, correct=None, acc=None, seed=0, strategy=None, params=None, gmacs=4.0, images=N,
           classes=10, match=None, notes=None, model="m"):
    """A probe result dict as the drivers write it (seeds pair run and baseline) (per-image correctness when `correct` is given)."""
    data = {"dataset": "wds/cifar10", "model": model, "pretrained": "", "task": "probe",
            "language": "en", "seed": seed, "data": {"test": {"split": "test", "images": images, "classes": classes}},
            "metrics": {"acc1": float(np.mean(correct)) if correct is not None else acc},
            "pruning": {"strategy": strategy, "params": params or {}, **({"match": match} if match else {}),
                        **({"notes": notes} if notes else {})} if strategy else None,
            "efficiency": {"gmacs": gmacs, "images_per_second": 10.0, "batch_size": 8, "device": "cpu",
                           "dtype": "float32"}}
    if correct is not None:
        data["per_image"] = pack_correct(correct)
    (root / f"{name}.json").write_text(json.dumps(data))


def config(table, strategy):
    return aggregate(compare(table)).set_index("strategy").loc[strategy]


def test_identical_seeds_two_images_apart_are_not_significant_and_never_zero_width(tmp_path):
    """The audit's case: 3 identical runs differing from their baselines by 2 images of 2,000."""
    base = np.random.default_rng(0).random(N) < 0.7
    pruned = base.copy()
    pruned[np.flatnonzero(base)[:2]] = False
    for seed in range(3):
        result(tmp_path, f"b{seed}", correct=base, seed=seed)
        result(tmp_path, f"p{seed}", correct=pruned, seed=seed, strategy="tome", params={"r": 8})
    row = config(load_results([tmp_path]), "tome")
    assert row["delta_method"] == "images + seeds" and not row["delta_significant"]
    assert row["acc1_delta_low"] < -0.001 < 0 < row["acc1_delta_high"]


def test_seed_spread_and_image_variation_both_count(tmp_path):
    """Seeds whose gains differ: the interval is the two-way decomposition's, with t on the seeds' dof."""
    rng = np.random.default_rng(1)
    gains = []
    for seed, lost in enumerate((5, 40, 75)):
        base = rng.random(N) < 0.7
        pruned = base.copy()
        pruned[np.flatnonzero(base)[:lost]] = False
        gains.append(pruned.astype(float) - base)
        result(tmp_path, f"b{seed}", correct=base, seed=seed)
        result(tmp_path, f"p{seed}", correct=pruned, seed=seed, strategy="tome")
    row = config(load_results([tmp_path]), "tome")
    mean, low, high = images_and_seeds_interval(np.stack(gains))
    assert (row["acc1_delta_low"], row["acc1_delta_high"]) == pytest.approx((low, high))
    spread = np.std([g.mean() for g in gains], ddof=1) / np.sqrt(3)
    assert (high - low) / 2 > 4.0 * spread  # t(0.975, ~2 dof) = 4.3, not 1.96


def test_single_seed_pair_gets_the_paired_bootstrap(tmp_path):
    base = np.random.default_rng(2).random(N) < 0.7
    pruned = base.copy()
    pruned[np.flatnonzero(base)[:60]] = False
    result(tmp_path, "b", correct=base)
    result(tmp_path, "p", correct=pruned, strategy="tome")
    row = config(load_results([tmp_path]), "tome")
    assert row["delta_method"] == "bootstrap" and row["delta_significant"]
    assert row["acc1_delta_low"] < -0.03 < row["acc1_delta_high"] < 0


def test_chance_is_tested_per_run_not_on_images_pooled_over_seeds(tmp_path):
    """Three runs at 10.9% of 2,000 (10 classes): pooled they look above chance, none is on its own."""
    for seed in range(3):
        result(tmp_path, f"p{seed}", acc=0.109, seed=seed, strategy="tome")
    row = config(load_results([tmp_path]), "tome")
    assert row["above_chance"] is False or row["above_chance"] == False  # noqa: E712 (pandas NA-aware)
    for seed in range(3):
        result(tmp_path, f"p{seed}", acc=0.125 if seed else 0.109, seed=seed, strategy="tome")
    assert config(load_results([tmp_path]), "tome")["above_chance"] == False  # noqa: E712 (one run at chance)
    for seed in range(3):
        result(tmp_path, f"p{seed}", acc=0.125, seed=seed, strategy="tome")
    assert config(load_results([tmp_path]), "tome")["above_chance"] == True  # noqa: E712


def seeded_configs(root, losses: dict, gmacs: dict, seeds=3):
    rng = np.random.default_rng(3)
    for seed in range(seeds):
        base = rng.random(N) < 0.7
        result(root, f"base{seed}", correct=base, seed=seed)
        for name, lost in losses.items():
            pruned = base.copy()
            pruned[np.flatnonzero(base)[:lost]] = False
            result(root, f"{name}{seed}", correct=pruned, seed=seed, strategy=name, gmacs=gmacs[name])


def test_leaderboard_one_row_per_configuration_and_lead_by_paired_interval(tmp_path):
    """Deterministic 1-image gap between two configurations (3 seeds): z on seed SEs of 0 called it clear."""
    seeded_configs(tmp_path, {"tome": 10, "evit": 11, "cls_topk": 200}, {"tome": 2.0, "evit": 2.0, "cls_topk": 2.0})
    board = leaderboard(load_results([tmp_path]))
    assert len(board) == 4 and set(board["n"]) == {3}
    best = best_within_budget(board, budgets=[0.5]).iloc[0]
    assert best["strategy"] == "tome" and best["verdict"] == "tied within noise" and "evit" in best["tied_with"]
    assert "cls_topk" not in best["tied_with"]


def test_clear_lead_and_only_candidate(tmp_path):
    seeded_configs(tmp_path, {"tome": 10, "cls_topk": 200}, {"tome": 2.0, "cls_topk": 1.0})
    board = leaderboard(load_results([tmp_path]))
    best = best_within_budget(board, budgets=[0.5, 0.25]).set_index("budget_value")
    assert best.loc[0.5, "strategy"] == "tome" and best.loc[0.5, "verdict"] == "clear lead"
    assert best.loc[0.25, "strategy"] == "cls_topk" and best.loc[0.25, "verdict"] == "only candidate"


def test_budget_tolerance(tmp_path, capsys):
    seeded_configs(tmp_path, {"tome": 10}, {"tome": 4.0 * 0.6002}, seeds=1)
    board = leaderboard(load_results([tmp_path]))
    assert best_within_budget(board, budgets=[0.6]).iloc[0]["strategy"] == "tome"  # default: 1% of baseline MACs
    assert pd.isna(best_within_budget(board, budgets=[0.6], budget_tolerance=0).iloc[0]["strategy"])
    assert best_within_budget(board, gmacs_budgets=[2.4]).iloc[0]["strategy"] == "tome"
    with pytest.raises(ValueError, match="budget_tolerance"):
        best_within_budget(board, budgets=[0.6], budget_tolerance=-0.1)
    parser = build_parser({"leaderboard": leaderboard_command})
    args = parser.parse_args(["leaderboard", str(tmp_path), "-o", str(tmp_path / "lb"), "--budget_tolerance", "-1"])
    assert args._run(args) == 2
    err = capsys.readouterr().err
    assert "--budget_tolerance" in err and len(err.strip().splitlines()) == 1
    args = parser.parse_args(["leaderboard", str(tmp_path), "-o", str(tmp_path / "lb"), "--budget", "0.6",
                              "--budget_tolerance", "0"])
    assert args._run(args) == 0
    assert "(none fits)" in (tmp_path / "lb.md").read_text()


def test_match_target_achieved_gap_and_clamp_notes_are_shown(tmp_path):
    base = np.random.default_rng(4).random(N) < 0.7
    result(tmp_path, "b", correct=base)
    match = {"strategy": "tome", "knob": "r", "value": 5, "target_ratio": 0.6, "achieved_ratio": 0.638, "gmacs": 2.55}
    result(tmp_path, "p", correct=base, strategy="tome", params={"r": 5}, gmacs=2.55, match=match,
           notes=["r capped at 24 in block 11"])
    table = compare(load_results([tmp_path]))
    row = table.set_index("strategy").loc["tome"]
    assert (row["match_target"], row["match_achieved"]) == (0.6, 0.638)
    assert row["match_gap"] == pytest.approx(0.038)
    write_report(table, tmp_path / "out" / "r", with_plot=False)
    text = (tmp_path / "out" / "r.md").read_text()
    assert "MACs target / achieved (gap)" in text and "0.600 / 0.638 (+0.0380)" in text
    assert "r capped at 24 in block 11" in text.split("Clamps and caps")[1]
    paths = write_leaderboard(leaderboard(load_results([tmp_path])), tmp_path / "lb", budgets=[0.7])
    board_text = paths[-1].read_text()
    assert "match_gap" in board_text and "+0.0380" in board_text


def test_without_per_image_outcomes_there_is_no_interval_and_the_report_says_how_to_get_one(tmp_path):
    """Older result files carry no per-image correctness: no bound is passed off as a 95% interval (those over-cover,
    reports/coverage.md); the difference is shown, never called out, and the report names the files to re-run."""
    for seed in range(3):
        result(tmp_path, f"b{seed}", acc=0.70, seed=seed)
        result(tmp_path, f"p{seed}", acc=0.60, seed=seed, strategy="tome")  # 10 points: any bound would call it
    base = np.random.default_rng(8).random(N) < 0.7
    result(tmp_path, "b9", correct=base, seed=9)
    result(tmp_path, "p9", acc=0.60, seed=9, strategy="evit")  # the baseline has outcomes, the run not
    table = compare(load_results([tmp_path]))
    configs = aggregate(table).set_index("strategy")
    for strategy in ("tome", "evit"):
        row = configs.loc[strategy]
        assert row["delta_method"] == NO_OUTCOMES and pd.isna(row["delta_significant"])
        assert np.isnan(row["acc1_delta_low"]) and np.isnan(row["acc1_delta_high"])
    assert configs.loc["tome", "acc1_delta_mean"] == pytest.approx(-0.10)
    write_report(table, tmp_path / "out" / "r", with_plot=False)
    text = (tmp_path / "out" / "r.md").read_text()
    assert "-10.00 ± 0.00 pp (none: per-image outcomes missing; undecided)" in text and "; **significant**)" not in text
    listed = text.split(MISSING_OUTCOMES_NOTE)[1].split("## Runs")[0]
    assert "- tome (m, wds/cifar10): `" in listed and all(f"p{seed}.json`" in listed for seed in (0, 1, 2, 9))
    saved = pd.read_csv(tmp_path / "out" / "r_configurations.csv").set_index("strategy")
    assert saved["delta_significant"].isna().all()


def test_a_lead_needs_both_configurations_per_image_outcomes(tmp_path):
    """Without outcomes a 20-point lead is `uncertainty unknown`, not a clear lead; with them it is clear."""
    for name, strategy, acc, gmacs in (("b", None, 0.70, 4.0), ("t", "tome", 0.68, 2.0), ("c", "cls_topk", 0.48, 1.9)):
        result(tmp_path, name, acc=acc, strategy=strategy, gmacs=gmacs)
    board = leaderboard(load_results([tmp_path]))
    best = best_within_budget(board, budgets=[0.5]).iloc[0]
    assert best["strategy"] == "tome" and best["verdict"] == "uncertainty unknown"
    assert best["delta_method"] == NO_OUTCOMES and pd.isna(best["delta_significant"])
    paths = write_leaderboard(board, tmp_path / "lb", budgets=[0.5])
    text = paths[-1].read_text()
    assert "-2.00 pp (no interval)" in text and MISSING_OUTCOMES_NOTE in text
    base = np.random.default_rng(9).random(N) < 0.7
    for name, strategy, lost, gmacs in (("b", None, 0, 4.0), ("t", "tome", 40, 2.0), ("c", "cls_topk", 400, 1.9)):
        pruned = base.copy()
        pruned[np.flatnonzero(base)[:lost]] = False
        result(tmp_path, name, correct=pruned, strategy=strategy, gmacs=gmacs)
    assert best_within_budget(leaderboard(load_results([tmp_path])), budgets=[0.5]).iloc[0]["verdict"] == "clear lead"


def test_configurations_with_different_seed_counts_add_each_ones_seed_part():
    from pruning_bench.report.uncertainty import config_difference_interval

    rng = np.random.default_rng(5)
    a = rng.random((3, N)) < np.array([[0.70], [0.74], [0.66]])  # seeds that move accuracy by 4 points
    b = rng.random((1, N)) < 0.70
    mean, low, high = config_difference_interval(a, b)
    assert mean == pytest.approx(a.mean() - b.mean())
    images_only = 1.96 * np.std(a.mean(0) - b[0], ddof=1) / np.sqrt(N)
    assert (high - low) / 2 > 2 * images_only  # the 3 seeds' spread (2 dof) dominates
    assert low < mean < high


def test_configurations_csv_keeps_no_packed_outcomes(tmp_path):
    base = np.random.default_rng(6).random(N) < 0.7
    result(tmp_path, "b", correct=base)
    result(tmp_path, "p", correct=~base, strategy="tome")
    write_report(compare(load_results([tmp_path])), tmp_path / "out" / "r", with_plot=False)
    configs = pd.read_csv(tmp_path / "out" / "r_configurations.csv")
    assert "per_image_correct" not in configs and configs["per_image_n"].eq(N).all()
