"""Sweep seed lists: training seeds and strategy seeds, through `pruning-bench eval` as well as clip_benchmark."""
import json
import shlex

import pytest

from pruning_bench import sweep
from pruning_bench.cli import main
from colour_webdataset import write_colour_webdataset

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32", "--model_arg", "patch_size=8",
        "--model_arg", "depth=2", "--model_arg", "embed_dim=48", "--model_arg", "num_heads=3"]


def finetune_args(tmp_path, root):
    return [*TINY, "--dataset", "wds/colours", "--dataset_root", str(root), "--task", "finetune", "--epochs", "1",
            "--batch_size", "4", "--throughput_repeats", "1", "--efficiency_batch_size", "2", "--no_progress",
            "--output", str(tmp_path / "res" / "{dataset}_{task}_{pruning}.json")]


def in_process(run, log):
    """Run the point's `pruning-bench eval` in this process (same command line, no interpreter start-up)."""
    assert run.command[0].endswith("pruning-bench") and run.command[1] == "eval"
    return main(run.command[1:])


def test_seed_lists_drive_pruning_bench_finetune(tmp_path):
    root = write_colour_webdataset(tmp_path / "wds", n_train=8, n_test=4, classes=2)
    points = sweep.expand_grids(["random_drop keep=2"], seeds=[0, 1], strategy_seeds=[3, 4])
    runs = sweep.plan(points, finetune_args(tmp_path, root), executable="pruning-bench")
    assert [p.label for p in points] == ["baseline --seed 0", "random_drop keep=2 seed=3 --seed 0",
                                         "random_drop keep=2 seed=4 --seed 0", "baseline --seed 1",
                                         "random_drop keep=2 seed=3 --seed 1", "random_drop keep=2 seed=4 --seed 1"]
    files = [r.outputs[0] for r in runs]
    assert len(set(files)) == 6  # every seed pair has its own result name
    summary = sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=in_process, progress=False)
    assert not summary.failed and len(summary.ran) == 6
    for run in runs:
        data = json.loads(run.outputs[0].read_text())
        assert data["seed"] == run.point.seed and f"_seed{run.point.seed}" in run.outputs[0].name
        if not run.point.is_baseline:
            assert data["pruning"]["params"]["seed"] == dict(run.point.params)["seed"]
    again = sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=in_process, progress=False)
    assert len(again.skipped) == 6 and not again.ran


def test_pruning_bench_finetune_sweep_is_planned_not_refused(tmp_path, capsys):
    root = write_colour_webdataset(tmp_path / "wds", n_train=4, n_test=2, classes=2)
    status = main(["sweep", "--executable", "pruning-bench", "--grid", "tome r=2", "--seeds", "0,1,2", "--dry_run",
                   "--", *finetune_args(tmp_path, root)])
    out = capsys.readouterr().out
    assert status == 0 and "6 point(s), 6 to run" in out


@pytest.mark.parametrize("task", ["probe", "fidelity"])
def test_pruning_bench_tasks_get_seed_and_seeded_names(tmp_path, task):
    root = write_colour_webdataset(tmp_path / "wds", n_train=4, n_test=2, classes=2)
    args = [*TINY, "--dataset", "wds/colours", "--dataset_root", str(root), "--task", task]
    runs = sweep.plan(sweep.expand_grids(["tome r=2"], seeds=[5, 6]), args, executable="pruning-bench")
    for run in runs:
        assert run.command[run.command.index("--seed") + 1] == str(run.point.seed)
        assert run.outputs[0].name.endswith(f"_seed{run.point.seed}.json") and task in run.outputs[0].name
    assert len({r.outputs[0] for r in runs}) == 4


def test_clip_benchmark_points_get_seed_in_flag_and_name(tmp_path):
    args = ["--dataset", "wds/tiny", "--dataset_root", str(tmp_path), "--model", "m", "--pretrained", "",
            "--task", "zeroshot_classification", "--output", str(tmp_path / "{dataset}_{seed}_{pruning}.json")]
    runs = sweep.plan(sweep.expand_grids(["tome r=2 match_fraction=0.5"], seeds=[0, 1], strategy_seeds=[0, 9]), args)
    assert len({r.outputs[0] for r in runs}) == 6
    tome = [r for r in runs if not r.point.is_baseline and r.point.seed == 1 and dict(r.point.params)["seed"] == 9]
    [run] = tome
    name = run.outputs[0].name
    assert name.startswith("tiny_1_tome-") and "-strategy_seed9" in name and "{" not in name
    assert shlex.join(run.command).count("--seed 1") == 1 and "--prune_param seed=9" in shlex.join(run.command)


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,x"], "'x' is not an integer"),
    (["--seeds", "0,0"], "seed 0 is given twice"),
    (["--seeds", str(2**63)], "out of range"),
    (["--strategy_seeds", "1", "--grid", "anchor_diversity k_anchors=2"], "none of the swept strategies"),
    (["--grid", "tome r=2 seed=1", "--strategy_seeds", "1"], "sets seed itself"),
])
def test_bad_seed_lists_are_one_line(tmp_path, capsys, argv, message):
    grid = [] if "--grid" in argv else ["--grid", "tome r=2"]
    status = main(["sweep", *grid, *argv, "--dry_run", "--", "--dataset", "wds/x"])
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1


def test_seed_among_eval_args_clashes_with_seeds(tmp_path, capsys):
    assert main(["sweep", "--grid", "tome r=2", "--seeds", "0,1", "--dry_run", "--", "--dataset", "wds/x",
                 "--seed", "3"]) == 2
    assert "give --seeds" in capsys.readouterr().err


def test_three_seed_finetune_sweep_report_has_mean_std_n_and_pairs_by_seed(tmp_path):
    """The real path: a 3-seed sweep of a tiny fine-tune (baseline + one strategy), then the report."""
    from pruning_bench.report.aggregate import aggregate
    from pruning_bench.report.compare import compare
    from pruning_bench.report.load import load_results

    root = write_colour_webdataset(tmp_path / "wds", n_train=8, n_test=4, classes=2)
    runs = sweep.plan(sweep.expand_grids(["tome r=2"], seeds=[0, 1, 2]), finetune_args(tmp_path, root),
                      executable="pruning-bench")
    summary = sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=in_process, progress=False)
    assert not summary.failed and len(summary.ran) == 6
    table = compare(load_results([tmp_path / "res"]))
    pruned = table[table["strategy"] == "tome"]
    assert len(pruned) == 3 and pruned["has_baseline"].all()
    for _, run in pruned.iterrows():  # each seed's run is paired with that seed's baseline
        baseline = json.loads(open(run["baseline_file"]).read())
        assert str(baseline["seed"]) == run["seed"] and baseline["pruning"] is None
    assert pruned["train_step_seconds_median"].notna().all()  # training time reaches the report
    configs = aggregate(table).set_index("strategy")
    assert configs.loc["tome", "n"] == 3 and configs.loc["baseline", "n"] == 3
    accs = [json.loads(open(f).read())["metrics"]["acc1"] for f in pruned["file"]]
    assert configs.loc["tome", "acc1_mean"] == pytest.approx(sum(accs) / 3)
