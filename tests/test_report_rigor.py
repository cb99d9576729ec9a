"""Numbers with their spread: seeds grouped (mean, std, n), differences called out only outside their uncertainty,
timings with every repeat and the machine's load, per-task columns, build CSVs, chance-level runs never best."""
import io
import json
import math
import statistics
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from clip_benchmark import cli as cb_cli
from pruning_bench.measure import throughput
from pruning_bench.report import compare, load_results, write_report
from pruning_bench.report.aggregate import aggregate
from pruning_bench.report.leaderboard import best_within_budget, leaderboard
from pruning_bench.report.uncertainty import pack_correct, paired_bootstrap, unpack_correct

SEEDS = (0, 1, 2)
IMAGES = 400


def finetune_result(path, *, seed, strategy=None, correct, ips, times, step_seconds, load=(0.2, 0.3), gmacs=4.0):
    """A result dict as `pruning-bench eval --task finetune` writes it (per-image correctness included)."""
    data = {"dataset": "wds/cifar10", "model": "tiny", "pretrained": "", "task": "finetune", "language": "en",
            "seed": seed, "metrics": {"acc1": float(np.mean(correct))},
            "data": {"test": {"split": "test", "images": IMAGES, "classes": 10}, "train": {"images": 256}},
            "training": {"epochs": 1, "lr": 1e-3, "batch_size": 8, "step_seconds": step_seconds, "warmup_steps": 2,
                         "images_per_second": 8 / statistics.median(step_seconds[2:])},
            "pruning": {"strategy": strategy, "params": {"r": 2}} if strategy else None,
            "per_image": pack_correct(correct),
            "efficiency": {"gmacs": gmacs, "images_per_second": ips, "batch_size": 8, "dtype": "float32",
                           "device": "cpu", "threads": 2, "amp": False, "image_size": [32, 32],
                           "timing": {"times": times, "warmup": 1, "warmup_times": [1.0],
                                      "load_average": {"before": [load[0], 0, 0], "after": [load[1], 0, 0],
                                                       "cpus": 2}}}}
    path.write_text(json.dumps(data))
    return data


@pytest.fixture
def three_seeds(tmp_path):
    """Baseline and tome for seeds 0, 1, 2: each seed's baseline differs, tome loses ~10 of 400 images."""
    rng = np.random.default_rng(0)
    accs = {}
    for seed in SEEDS:
        base = rng.random(IMAGES) < 0.6 + 0.05 * seed
        pruned = base.copy()
        pruned[np.flatnonzero(base)[: 10 + seed]] = False  # the pruned model loses 10, 11, 12 images
        accs[seed] = (base.mean(), pruned.mean())
        finetune_result(tmp_path / f"base_s{seed}.json", seed=seed, correct=base, ips=100.0,
                        times=[0.08, 0.08 + 0.001 * seed, 0.09], step_seconds=[1.0, 0.5, 0.2, 0.21, 0.22])
        finetune_result(tmp_path / f"tome_s{seed}.json", seed=seed, strategy="tome", correct=pruned, ips=150.0,
                        gmacs=2.0, times=[0.05, 0.0533, 0.06], step_seconds=[1.0, 0.5, 0.1, 0.12, 0.11],
                        load=(3.5, 2.5) if seed == 2 else (0.2, 0.3))
    return tmp_path, accs


def test_three_seeds_give_mean_std_and_n_and_pair_seed_by_seed(three_seeds):
    root, accs = three_seeds
    table = compare(load_results([root]))
    for seed in SEEDS:
        run = table[(table["strategy"] == "tome") & (table["seed"] == str(seed))].iloc[0]
        assert run["baseline_file"] == str(root / f"base_s{seed}.json")
        assert run["acc1_delta"] == pytest.approx(accs[seed][1] - accs[seed][0])
    configs = aggregate(table).set_index("strategy")
    for strategy, which in (("baseline", 0), ("tome", 1)):
        values = [accs[s][which] for s in SEEDS]
        row = configs.loc[strategy]
        assert row["n"] == 3
        assert row["acc1_mean"] == pytest.approx(np.mean(values))
        assert row["acc1_std"] == pytest.approx(np.std(values, ddof=1))
    deltas = [accs[s][1] - accs[s][0] for s in SEEDS]
    assert configs.loc["tome", "acc1_delta_mean"] == pytest.approx(np.mean(deltas))
    assert configs.loc["tome", "delta_method"] == "images + seeds" and configs.loc["tome", "delta_significant"]


def test_report_markdown_shows_mean_std_n_timing_spread_training_time_and_load(three_seeds, tmp_path):
    root, accs = three_seeds
    write_report(compare(load_results([root])), tmp_path / "out" / "r", with_plot=False)
    text = (tmp_path / "out" / "r.md").read_text()
    tome_values = [accs[s][1] * 100 for s in SEEDS]
    assert f"{np.mean(tome_values):.2f} ± {np.std(tome_values, ddof=1):.2f}" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny") and "tome" in line)
    cells = [c.strip() for c in row.split("|")]
    assert "3" in cells and "**significant**" in row and "images + seeds" in row
    # images/s: median timed repeat with the slowest and fastest: batch 8 over 0.0533 / 0.06 / 0.05 s
    assert f"{8 / 0.0533:.1f} [{8 / 0.06:.1f}–{8 / 0.05:.1f}]" in row and "⚠ load" in row
    # training seconds per step without the two warm-up steps: median 0.11, range 0.10-0.12
    assert "0.110 [0.100–0.120]" in row
    assert "Timings taken under load" in text and "tome_s2.json" in text.split("Timings taken under load")[1]
    configs = pd.read_csv(tmp_path / "out" / "r_configurations.csv")
    assert set(configs["n"]) == {3}


def test_a_gain_inside_the_noise_is_not_called_out(tmp_path):
    rng = np.random.default_rng(1)
    base = rng.random(IMAGES) < 0.7
    pruned = base.copy()
    flip = rng.choice(IMAGES, 6, replace=False)
    pruned[flip] = ~pruned[flip]  # a handful of images change either way
    for name, correct, strategy in (("b", base, None), ("p", pruned, "tome")):
        finetune_result(tmp_path / f"{name}.json", seed=0, strategy=strategy, correct=correct, ips=100.0,
                        times=[0.1], step_seconds=[0.1, 0.1, 0.1])
    configs = aggregate(compare(load_results([tmp_path]))).set_index("strategy")
    low, high = configs.loc["tome", ["acc1_delta_low", "acc1_delta_high"]]
    assert low < 0 < high and not configs.loc["tome", "delta_significant"]


def test_paired_bootstrap_matches_the_spread_of_a_paired_difference():
    rng = np.random.default_rng(2)
    base = rng.random(2000) < 0.7
    pruned = np.where(rng.random(2000) < 0.1, ~base, base)
    low, high = paired_bootstrap([(pruned, base)], draws=2000)
    gain = pruned.astype(float) - base.astype(float)
    se = gain.std() / math.sqrt(len(gain))  # the normal approximation of the same interval
    assert (high - low) / 2 == pytest.approx(1.96 * se, rel=0.15)
    assert low < gain.mean() < high
    assert (unpack_correct(pack_correct(base)["correct"], 2000) == base).all()


def test_agreement_alone_gives_no_interval_for_single_probe_runs(tmp_path):
    """One run whose file holds its unpruned accuracy and agreement but no per-image outcomes: agreement bounds the
    paired error but does not calibrate it, so there is no interval, whatever the size of the difference."""
    for name, strategy, acc, agreement in (("b", None, 0.70, 1.0), ("p", "tome", 0.60, 0.85), ("q", "cls_topk", 0.695, 0.9)):
        data = {"dataset": "d", "model": "m", "pretrained": "w", "task": "probe", "language": "en", "seed": 0,
                "metrics": {"acc1": acc, "acc1_unpruned": 0.70, "agreement": agreement, "images": 2000},
                "pruning": {"strategy": strategy, "params": {}} if strategy else None}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    configs = aggregate(compare(load_results([tmp_path]))).set_index("strategy")
    for strategy in ("tome", "cls_topk"):
        assert configs.loc[strategy, "delta_method"] == "none: per-image outcomes missing"
        assert pd.isna(configs.loc[strategy, "delta_significant"]) and np.isnan(configs.loc[strategy, "acc1_delta_high"])
    assert configs.loc["tome", "acc1_delta_mean"] == pytest.approx(-0.1)


def test_fidelity_and_retrieval_columns_under_their_own_names(tmp_path):
    base = {"dataset": "d", "model": "m", "pretrained": "w", "language": "en"}
    fid = {"cosine": 0.97, "cosine_centred": 0.81, "relative_mse": 0.05, "agreement": 0.9, "images": 100}
    (tmp_path / "f0.json").write_text(json.dumps({**base, "task": "fidelity", "metrics": {**fid, "cosine": 1.0}}))
    (tmp_path / "f1.json").write_text(json.dumps({**base, "task": "fidelity", "metrics": fid,
                                                  "pruning": {"strategy": "tome", "params": {"r": 4}}}))
    recall = {"image_retrieval_recall@1": 0.31, "text_retrieval_recall@1": 0.42, "image_retrieval_recall@5": 0.6}
    (tmp_path / "r.json").write_text(json.dumps({**base, "task": "zeroshot_retrieval", "metrics": recall}))
    table = compare(load_results([tmp_path]))
    write_report(table, tmp_path / "out", with_plot=False)
    text = (tmp_path / "out.md").read_text()
    fidelity = text.split("### fidelity")[1].split("###")[0]
    for column in ("cosine", "cosine_centred", "relative_mse", "agreement"):
        assert column in fidelity
    assert "0.8100" in fidelity and "0.0500" in fidelity
    retrieval = text.split("### zeroshot_retrieval")[1].split("##")[0]
    assert "image recall@1 (%)" in retrieval and "text recall@1 (%)" in retrieval and "42.00" in retrieval
    assert "acc1" not in retrieval


def test_report_reads_a_clip_benchmark_build_csv(three_seeds, tmp_path, monkeypatch):
    root, _ = three_seeds
    build = tmp_path / "bench.csv"
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "build", str(root), "--output", str(build)])
    cb_cli.main()
    from_json = aggregate(compare(load_results([root])))
    from_csv = aggregate(compare(load_results([build])))
    columns = ["strategy", "n", "acc1_mean", "acc1_std", "acc1_delta_mean", "delta_method", "images_per_second_min"]
    key = ["strategy"]
    pd.testing.assert_frame_equal(from_json[columns].sort_values(key).reset_index(drop=True),
                                  from_csv[columns].sort_values(key).reset_index(drop=True))
    renamed = tmp_path / "bench.txt"  # detected by content too
    renamed.write_text(build.read_text())
    assert len(load_results([renamed])) == 6


def test_chance_level_configuration_is_never_best(tmp_path):
    """The issue's case: a run at chance "gains" over a worse one; it must not be crowned."""
    base = {"dataset": "wds/cifar10", "model": "m", "pretrained": "w", "task": "zeroshot_classification",
            "language": "en", "data": {"test": {"split": "test", "images": 2000, "classes": 10}}}
    for name, strategy, acc, gmacs in (("b", None, 0.80, 4.0), ("chance", "tome", 0.105, 0.9), ("ok", "cls_topk", 0.09, 0.95)):
        (tmp_path / f"{name}.json").write_text(json.dumps({
            **base, "metrics": {"acc1": acc}, "pruning": {"strategy": strategy, "params": {"r": 64}} if strategy else None,
            "efficiency": {"gmacs": gmacs, "images_per_second": 10.0}}))
    board = leaderboard(load_results([tmp_path]))
    best = best_within_budget(board, budgets=[0.25])
    assert pd.isna(best["strategy"].iloc[0]) and best["at_chance"].iloc[0] == 2


def test_a_lead_inside_the_noise_is_a_tie(tmp_path):
    """Per-image outcomes on 500 images: the best two differ on 95 images, 50 against 45 (a tie); the third loses
    105 more images than the best and gains none (not a tie)."""
    base = {"dataset": "wds/cifar10", "model": "m", "pretrained": "w", "task": "zeroshot_classification",
            "language": "en", "data": {"test": {"split": "test", "images": 500, "classes": 10}}}
    correct = np.random.default_rng(10).permutation(np.arange(500) < 400)  # the baseline at 80%
    for name, strategy, lost in (("b", None, []), ("a", "tome", range(45)), ("c", "cls_topk", range(45, 95)),
                                 ("d", "random_drop", range(150))):
        outcome = correct.copy()
        outcome[np.flatnonzero(correct)[list(lost)]] = False
        (tmp_path / f"{name}.json").write_text(json.dumps({
            **base, "metrics": {"acc1": float(outcome.mean())}, "per_image": pack_correct(outcome),
            "pruning": {"strategy": strategy, "params": {}} if strategy else None,
            "efficiency": {"gmacs": 4.0 if strategy is None else 2.0, "images_per_second": 10.0}}))
    best = best_within_budget(leaderboard(load_results([tmp_path])), budgets=[0.5]).iloc[0]
    assert best["strategy"] == "tome" and best["verdict"] == "tied within noise"
    assert "cls_topk" in best["tied_with"] and "random_drop" not in best["tied_with"]


# ---------------------------------------------------------------- throughput record


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_throughput_keeps_every_repeat_warmups_and_load(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(throughput, "_clock", clock)
    monkeypatch.setattr(throughput.os, "getloadavg", lambda: (5.0, 1.0, 0.5))
    costs = iter([3.0, 2.0, 1.0, 1.5, 1.2])

    def model(x):
        clock.now += next(costs)

    record = throughput.measure_throughput(model, torch.zeros(2, 3, 4, 4), warmup=2, repeats=3, progress=False)
    assert record["warmup_times"] == pytest.approx([3.0, 2.0]) and record["times"] == pytest.approx([1.0, 1.5, 1.2])
    load = record["load_average"]
    assert load["before"] == [5.0, 1.0, 0.5] and load["after"] == [5.0, 1.0, 0.5]
    assert load["under_load"] == (5.0 > load["cpus"])


def test_progress_goes_to_stderr_and_can_be_switched_off(monkeypatch):
    for progress, expect in ((True, True), (False, False)):
        err = io.StringIO()
        monkeypatch.setattr(sys, "stderr", err)
        throughput.measure_throughput(lambda x: x, torch.zeros(1, 3, 4, 4), warmup=1, repeats=2, progress=progress)
        assert ("timing" in err.getvalue()) == expect


def test_eval_per_image_record_round_trips_into_the_bootstrap(tmp_path):
    from pruning_bench.evaluate.results import per_image

    labels = np.arange(300) % 10
    base_pred, pruned_pred = labels.copy(), labels.copy()
    pruned_pred[:30] = (pruned_pred[:30] + 1) % 10  # 30 of 300 images now wrong
    for name, pred, strategy in (("b", base_pred, None), ("p", pruned_pred, "tome")):
        data = {"dataset": "d", "model": "m", "pretrained": "w", "task": "zeroshot_classification", "language": "en",
                "metrics": {"acc1": float((pred == labels).mean())}, "per_image": per_image(pred, labels),
                "pruning": {"strategy": strategy, "params": {}} if strategy else None}
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    row = aggregate(compare(load_results([tmp_path]))).set_index("strategy").loc["tome"]
    assert row["delta_method"] == "bootstrap" and row["delta_significant"]
    assert row["acc1_delta_low"] <= -0.1 <= row["acc1_delta_high"]


# ---------------------------------------------------------------- plots


def test_a_line_joins_only_one_parameters_sweep():
    from pruning_bench.report.plots import is_one_sweep

    x = pd.Series([3.0, 2.0, 1.0])
    assert is_one_sweep(pd.Series(["r=4", "r=8", "r=16"]), x)
    assert is_one_sweep(pd.Series(["k=5, m=30", "k=10, m=50"]), pd.Series([1.0, 2.0]))  # knobs moved together
    assert not is_one_sweep(pd.Series(["keep=90, start_layer=1", "keep=60, start_layer=3"]), pd.Series([2.0, 1.0]))
    assert not is_one_sweep(pd.Series(["importance=fisher", "importance=magnitude"]), pd.Series([1.0, 2.0]))


def test_seed_error_bars_shared_ranges_and_labels_apart(three_seeds, tmp_path):
    import matplotlib.pyplot as plt
    from pruning_bench.report.plots import accuracy_figure

    root, accs = three_seeds
    for path in root.glob("*.json"):  # the same runs under a second model: same dataset and task, same y range
        data = json.loads(path.read_text())
        data["model"] = "tiny2"
        data["metrics"]["acc1"] -= 0.2
        (root / f"m2_{path.name}").write_text(json.dumps(data))
    for r, acc in ((4, 0.5), (5, 0.5005)):  # two labels on nearly the same point
        finetune_result(root / f"tome_r{r}.json", seed=0, strategy="tome", correct=np.arange(IMAGES) < IMAGES * acc,
                        ips=150.0, gmacs=2.0, times=[0.05], step_seconds=[0.1, 0.1, 0.1])
        data = json.loads((root / f"tome_r{r}.json").read_text())
        data["pruning"]["params"] = {"r": r}
        (root / f"tome_r{r}.json").write_text(json.dumps(data))
    fig = accuracy_figure(compare(load_results([root])), "gmacs")
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(axes) == 2 and axes[0].get_ylim() == axes[1].get_ylim()
    bars = [c for ax in axes for c in ax.containers if c.has_yerr]
    spreads = {round(float(seg[1][1] - seg[0][1]), 6) for bar in bars for col in bar.lines[2] for seg in col.get_segments()}
    tome_std = np.std([accs[s][1] for s in SEEDS], ddof=1) * 100
    assert any(abs(s - 2 * tome_std) < 1e-6 for s in spreads)  # ± one std over the three seeds
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for ax in axes for t in ax.texts]
    assert len(boxes) >= 2 and not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    plt.close(fig)


def test_a_run_that_pruned_nothing_is_marked_in_tables_and_plots(tmp_path):
    import json

    from pruning_bench.report.compare import compare as compare_runs
    from pruning_bench.report.load import load_results as load
    from pruning_bench.report.write import write_report as write

    common = {"dataset": "d", "model": "m", "pretrained": "", "task": "zeroshot_classification", "language": "en"}
    efficiency = {"gmacs": 4.4, "images_per_second": 10.0, "batch_size": 8, "dtype": "float32", "device": "cpu"}
    (tmp_path / "base.json").write_text(json.dumps({**common, "metrics": {"acc1": 0.5}, "pruning": None,
                                                    "efficiency": efficiency}))
    (tmp_path / "noop.json").write_text(json.dumps({**common, "metrics": {"acc1": 0.5}, "efficiency": {
        **efficiency, "images_per_second": 6.3}, "pruning": {"strategy": "anchor_diversity", "params": {"top_m": 50},
                                                             "notes": ["budget clamped"], "effective": False}}))
    table = compare_runs(load([tmp_path]))
    assert table.set_index("strategy").loc["anchor_diversity", "pruned_nothing"]
    paths = write(table, tmp_path / "out" / "r")
    text = (tmp_path / "out" / "r.md").read_text()
    assert "anchor_diversity (PRUNED NOTHING)" in text and "Runs that pruned nothing" in text
    assert any(p.suffix == ".png" for p in paths)
