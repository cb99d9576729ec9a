"""`pruning-bench sweep`: grid expansion, command lines clip_benchmark reads back, resume, emission, one real run."""
import json
import os
import shlex
import stat
import subprocess

import pytest

from pruning_bench import sweep
from pruning_bench.cli import main
import tiny_clip as tiny



def eval_args(tmp_path, *extra):
    return ["--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model", "ViT-B-32", "--pretrained", "",
            "--task", "zeroshot_classification", "--output", str(tmp_path / "res" / "{dataset}_{model}_{pruning}.json"),
            *extra]


# ---------------------------------------------------------------- grids


def test_grid_is_the_cartesian_product_in_order():
    points = sweep.expand_grid("anchor_diversity k_anchors=5,10 top_m=30,50")
    assert [dict(p.params) for p in points] == [
        {"k_anchors": 5, "top_m": 30}, {"k_anchors": 5, "top_m": 50},
        {"k_anchors": 10, "top_m": 30}, {"k_anchors": 10, "top_m": 50}]
    assert all(p.resolved["alpha"] == 0.5 for p in points)  # defaults resolved by the strategy itself


def test_values_are_read_like_prune_param_values():
    strategy, axes = sweep.parse_grid("tome r=[4,8,0,0],2 prop_attn=true,False match_fraction=0.5")
    assert strategy == "tome"
    assert axes == {"r": [[4, 8, 0, 0], 2], "prop_attn": [True, False], "match_fraction": [0.5]}


def test_baseline_first_and_duplicates_once():
    points = sweep.expand_grids(["tome r=4,8", "tome r=8,13", "cls_topk keep=10"])
    assert [p.label for p in points] == ["baseline", "tome r=4", "tome r=8", "tome r=13", "cls_topk keep=10"]
    assert [p.label for p in sweep.expand_grids(["tome r=4"], baseline=False)] == ["tome r=4"]


@pytest.mark.parametrize("grid, named", [
    ("tome r=-1,4", "r"),
    ("anchor_diversity alpha=0.5,2.0", "alpha"),
    ("tome r=4 r=8", "twice"),
    ("tome r", "KEY=V1"),
    ("r=4", "strategy name"),
    ("no_such_strategy x=1", "no_such_strategy"),
])
def test_bad_points_are_refused_before_anything_runs(grid, named):
    with pytest.raises(ValueError, match=named):
        sweep.expand_grid(grid)


# ---------------------------------------------------------------- command lines and result names


def test_emitted_command_is_read_back_by_clip_benchmark_as_the_same_point(tmp_path):
    points = sweep.expand_grids(["tome r=[2,1,0,0],4 prop_attn=false", "anchor_diversity k_anchors=3 alpha=0.25"])
    for run in sweep.plan(points, eval_args(tmp_path)):
        assert run.command[:2] == ["clip_benchmark", "eval"] and run.command[-1] == "--skip_existing"
        args = sweep.parse_eval_args(shlex.split(run.shell)[2:])
        config = args.pruning_config
        if run.point.is_baseline:
            assert not config.enabled and config.measure_efficiency
            assert run.outputs == [tmp_path / "res" / "tiny_ViT-B-32_baseline.json"]
        else:
            assert config.strategy == run.point.strategy and config.resolved == run.point.resolved
            assert run.outputs == [tmp_path / "res" / f"tiny_ViT-B-32_{run.point.slug}.json"]


def test_outputs_cover_every_model_dataset_and_language(tmp_path):
    args = ["--dataset", "wds/a", "wds/b", "--model", "ViT-B-32", "--pretrained", "", "x", "--language", "en", "fr",
            "--task", "zeroshot_classification", "--output", "r/{dataset}_{pretrained}_{language}.json"]
    run = sweep.plan(sweep.expand_grid("cls_topk keep=8"), args)[0]
    slug = run.point.slug
    assert sorted(map(str, run.outputs)) == sorted(
        f"r/{d}_{p}_{lang}_{slug}.json" for d in "ab" for p in ("", "x") for lang in ("en", "fr"))


def test_pruning_flags_in_eval_args_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--prune_strategy"):
        sweep.plan(sweep.expand_grids([]), eval_args(tmp_path, "--prune_strategy", "tome"))


# ---------------------------------------------------------------- resume, with a runner that only writes files


def complete_result(run):
    """What a complete run writes (the keys a resumed sweep checks)."""
    pruning = None if run.point.is_baseline else {"strategy": run.point.strategy}
    return {"dataset": "tiny", "model": "m", "task": "zeroshot_classification", "metrics": {"acc1": 0.5},
            "pruning": pruning}


class FakeRunner:
    """Writes each point's result files (or a truncated one, or fails), recording what it was asked to run."""

    def __init__(self, fail=(), interrupt_at=None):
        self.calls, self.fail, self.interrupt_at = [], set(fail), interrupt_at

    def __call__(self, run, log):
        assert all(p.parent.is_dir() for p in run.outputs)  # clip_benchmark does not create its output folder
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            run.outputs[0].write_text('{"metrics": {"acc1"')  # killed while writing
            raise KeyboardInterrupt
        self.calls.append(run.point.label)
        log.write_text("ran\n")
        if run.point.label in self.fail:
            return 1
        for path in run.outputs:
            path.write_text(json.dumps(complete_result(run)))
        return 0


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    runs = sweep.plan(sweep.expand_grids(["tome r=2,4,6"]), eval_args(tmp_path))
    first = FakeRunner(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=first, progress=False)
    assert first.calls == ["baseline", "tome r=2"]
    assert not runs[2].finished  # a half-written file is not a result

    second = FakeRunner()
    summary = sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=second, progress=False)
    assert second.calls == ["tome r=4", "tome r=6"]
    assert [r.point.label for r in summary.skipped] == ["baseline", "tome r=2"]
    assert not summary.failed and sorted(summary.outputs) == sorted(p for r in runs for p in r.outputs)

    third = FakeRunner()
    assert not sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=third, progress=False).ran
    assert third.calls == []
    forced = FakeRunner()
    sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=forced, progress=False, force=True)
    assert len(forced.calls) == 4


def test_a_failing_point_does_not_stop_the_sweep(tmp_path):
    runs = sweep.plan(sweep.expand_grids(["tome r=2,4"], baseline=False), eval_args(tmp_path))
    runner = FakeRunner(fail={"tome r=2"})
    summary = sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=runner, progress=False)
    assert runner.calls == ["tome r=2", "tome r=4"]
    assert [r.point.label for r in summary.failed] == ["tome r=2"]
    assert (tmp_path / "logs" / f"{runs[0].point.slug}.log").read_text() == "ran\n"
    assert summary.outputs == runs[1].outputs


# ---------------------------------------------------------------- emission


def test_command_list_has_one_pending_command_per_line(tmp_path, capsys):
    args = eval_args(tmp_path)
    done = sweep.plan(sweep.expand_grid("tome r=4"), args)[0].outputs[0]
    done.parent.mkdir(parents=True)
    done.write_text(json.dumps({"dataset": "tiny", "model": "m", "task": "zeroshot_classification",
                                "metrics": {"acc1": 0.1}, "pruning": {"strategy": "tome"}}))
    assert main(["sweep", "--grid", "tome r=4,8", "--emit", "commands", "--", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2  # baseline and r=8; r=4 is finished
    assert lines[0].endswith("--measure_efficiency --skip_existing")
    assert shlex.split(lines[1])[-4:] == ["tome", "--prune_param", "r=8", "--skip_existing"]


def test_slurm_array_runs_command_i_as_task_i(tmp_path):
    """The script is valid bash, and task i runs exactly the i-th command (with a stand-in clip_benchmark)."""
    fake = tmp_path / "bin" / "clip_benchmark"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_FILE"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    runs = sweep.plan(sweep.expand_grids(["tome r=4,8"]), eval_args(tmp_path), executable=str(fake))
    script = tmp_path / "sweep.sbatch"
    script.write_text(sweep.slurm_script(runs, sbatch=["--gres=gpu:1"], max_parallel=2, log_dir=str(tmp_path / "logs")))
    text = script.read_text()
    assert "#SBATCH --array=0-2%2" in text and "#SBATCH --gres=gpu:1" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    for i, run in enumerate(runs):
        out = tmp_path / f"args{i}.txt"
        done = subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": str(i), "ARGS_FILE": str(out)})
        assert done.returncode == 0
        assert out.read_text().splitlines() == run.command[1:]
    assert subprocess.run(["bash", str(script)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "3"},
                          capture_output=True).returncode == 2


def test_nothing_to_schedule_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="finished"):
        sweep.slurm_script([])


# ---------------------------------------------------------------- one real run


def test_real_tiny_sweep_runs_then_resumes(tmp_path, capsys):
    """clip_benchmark on a tiny random CLIP (open_clip local-dir config) and a 4-image webdataset, one point."""
    tiny.write_webdataset(tmp_path / "wds", n_test=4, n_train=0)
    model_dir = tmp_path / "tinyclip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    args = ["--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model", f"local-dir:{model_dir}",
            "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "2", "--num_workers", "0",
            "--no_amp", "--quiet", "--throughput_repeats", "1", "--output", str(tmp_path / "res" / "r_{pruning}.json")]
    command = ["sweep", "--grid", "tome r=2", "--no_baseline", "--quiet", "--log_dir", str(tmp_path / "logs"), "--", *args]
    status = main(command)  # the sweep in this process, clip_benchmark as its subprocess
    assert status == 0, "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    [result] = (tmp_path / "res").glob("r_*.json")
    data = json.loads(result.read_text())
    assert data["pruning"]["params"]["r"] == 2 and data["efficiency"]["tokens_per_layer"] == [17, 15, 13, 11]
    stamp = result.stat().st_mtime_ns
    capsys.readouterr()
    assert main(command) == 0
    assert "1 already finished, 0 run" in capsys.readouterr().err
    assert result.stat().st_mtime_ns == stamp
