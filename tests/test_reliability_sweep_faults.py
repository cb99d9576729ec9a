"""Sweeps: locks of dead processes are cleaned, and an unwritable results folder is one line before any point runs."""
import json
import os
import subprocess

from pruning_bench import sweep
from pruning_bench.cli import main


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def result(path, **pruning):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": "d", "model": "m", "pretrained": "p", "task": "zeroshot_classification",
                                "language": "en", "metrics": {"acc1": 0.5}, "pruning": pruning or None}))


def test_locks_of_dead_processes_are_removed_also_for_finished_points(tmp_path, capsys):
    runs = [sweep.PlannedRun(sweep.SweepPoint("tome", (("r", i),), {"r": i}), ["x"], [tmp_path / f"r{i}.json"])
            for i in range(2)]
    result(runs[0].outputs[0], strategy="tome", params={"r": 0})  # finished before the sweep was killed
    for run in runs:
        run.lock_path.write_text(f"{dead_pid()}\n{dead_pid()}\n")
    leftover = runs[1].lock_path.with_name(f".{runs[1].lock_path.name}.{dead_pid()}.new")
    leftover.write_text("1\n")

    def runner(run, log):
        result(run.outputs[0], strategy="tome", params=dict(run.point.params))
        return 0
    summary = sweep.run_sweep(runs, log_dir=tmp_path / "logs", runner=runner, progress=False)
    assert [r.outputs[0].name for r in summary.ran] == ["r1.json"]
    assert not list(tmp_path.glob("*.lock")) and not leftover.exists()
    assert any("removed 2 stale lock(s)" in note for note in summary.notes)


def test_a_lock_of_a_live_process_is_kept(tmp_path):
    run = sweep.PlannedRun(sweep.SweepPoint("tome", (("r", 2),), {"r": 2}), ["x"], [tmp_path / "r.json"])
    result(run.outputs[0], strategy="tome", params={"r": 2})
    run.lock_path.write_text(f"{os.getpid()}\n")
    sweep.run_sweep([run], log_dir=tmp_path / "logs", runner=lambda r, log: 0, progress=False)
    assert run.lock_path.exists()


def test_sweep_into_a_read_only_folder_is_one_line_before_any_point(tmp_path, capsys, monkeypatch):
    from pruning_bench.sweep import control as sweep_control

    results = tmp_path / "res"
    results.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: False if str(path).startswith(str(results)) and
                        mode & os.W_OK else real_access(path, mode, *a, **k))  # as a non-root user sees chmod 555
    monkeypatch.setattr(sweep_control, "run_child", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    status = main(["sweep", "--grid", "tome r=2", "--no_baseline", "--quiet", "--log_dir", str(tmp_path / "logs"), "--",
                   "--dataset", "wds/tiny", "--dataset_root", str(tmp_path), "--model", "ViT-B-32", "--pretrained", "",
                   "--task", "zeroshot_classification", "--output", str(results / "r_{pruning}.json")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "not writable" in lines[0] and str(results) in lines[0]
    assert not list(results.iterdir())
