"""Sweeps under signals and concurrency: stopped children, one-line endings, exactly-once resume, locks.

A stand-in evaluation (tests/sweep_fake_child.py) starts in milliseconds, so each sweep here is a
plain Python process running `commands.sweep.run_planned`, the code path of `pruning-bench sweep`.
"""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pruning_bench.record import check as result_check
from pruning_bench.sweep.control import PointLock, pid_alive

FAKE = Path(__file__).with_name("sweep_fake_child.py")
LABELS = ["p0", "p1", "p2"]
HARNESS = """
import sys
from pathlib import Path
from pruning_bench import sweep
from pruning_bench.commands.sweep import run_planned
out, fake = Path(sys.argv[1]), sys.argv[2]
runs = [sweep.PlannedRun(sweep.SweepPoint("tome", (("r", i),), {"r": i}), [sys.executable, fake, f"p{i}"],
                         [out / "res" / f"p{i}.json"]) for i in range(3)]
sys.exit(run_planned(runs, log_dir=out / "logs", progress=False))
"""


def start_sweep(tmp_path, **env):
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), str(FAKE)], stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "FAKE_STATE": str(tmp_path / "state"), **env})


def events(tmp_path):
    path = tmp_path / "state" / "events"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def wait_for(condition, timeout=30.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def child_pids(tmp_path):
    return [int(p.name) for p in (tmp_path / "state" / "pids").iterdir()]


def assert_every_point_once(tmp_path):
    for label in LABELS:
        assert result_check.is_complete(tmp_path / "res" / f"{label}.json", pruned=True)
        assert [e[0] for e in events(tmp_path) if e[1] == label].count("end") == 1
    assert sorted(p.name for p in (tmp_path / "res").glob("*.json")) == [f"{x}.json" for x in LABELS]
    assert not list((tmp_path / "res").glob("*.lock"))
    wait_for(lambda: not any(pid_alive(pid) for pid in child_pids(tmp_path)), 10)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGKILL", "SIGTERM", "SIGINT", "SIGHUP"])
def test_sweep_stopped_mid_point_then_resumed_has_every_result_once(tmp_path, signum):
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "slow_p1").write_text("")
    sweep = start_sweep(tmp_path)
    wait_for(lambda: any(e[:2] == ["start", "p1"] for e in events(tmp_path)))  # p0 done, p1 mid-point
    sweep.send_signal(signum)
    _, err = sweep.communicate(timeout=30)
    [child] = [pid for pid in child_pids(tmp_path) if (tmp_path / "state" / "pids" / str(pid)).read_text() == "p1"]
    wait_for(lambda: not pid_alive(child), 10)  # the running point stopped with the sweep, even on SIGKILL
    assert not any(e[:2] == ["end", "p1"] for e in events(tmp_path))
    if signum != signal.SIGKILL:
        assert sweep.returncode == 128 + signum
        assert "Traceback" not in err
        assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
        assert f"stopped by {signal.Signals(signum).name}" in err and "1 of 3 point(s) finished" in err
    assert result_check.file_problem(tmp_path / "res" / "p1.json", pruned=True)  # the truncated file is not a result
    if signum != signal.SIGKILL:  # the stopped child's temporary result goes with it (after SIGKILL: on resume)
        assert not list((tmp_path / "res").glob(".p1.json.*"))

    (tmp_path / "state" / "slow_p1").unlink()
    resumed = start_sweep(tmp_path)
    _, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0, err
    assert "p1.json is not valid JSON" in err and "re-running" in err
    assert [e[1] for e in events(tmp_path) if e[0] == "start"] == ["p0", "p1", "p1", "p2"]  # only what was missing
    assert_every_point_once(tmp_path)


def test_two_sweeps_never_run_the_same_point_at_once(tmp_path):
    first = start_sweep(tmp_path, FAKE_SECONDS="0.6")
    wait_for(lambda: events(tmp_path))
    second = start_sweep(tmp_path, FAKE_SECONDS="0.6")
    for sweep in (first, second):
        _, err = sweep.communicate(timeout=60)
        assert sweep.returncode == 0, err
    assert [e[1] for e in events(tmp_path) if e[0] == "start"].count("p0") == 1
    for label in LABELS:
        mine = [(e[0], float(e[2])) for e in events(tmp_path) if e[1] == label]
        assert [kind for kind, _ in mine] == ["start", "end"]  # once, never overlapping
    assert_every_point_once(tmp_path)


def test_lock_of_a_live_process_is_respected_and_a_stale_one_taken_over(tmp_path):
    lock = PointLock(tmp_path / "r.json.lock")
    alive = subprocess.Popen(["sleep", "30"])
    try:
        lock.path.write_text(f"{alive.pid}\n")
        assert not lock.acquire() and lock.live_holders() == [alive.pid]
    finally:
        alive.kill()
        alive.wait()
    assert lock.acquire()  # the recorded process is gone: stale
    assert lock.holders() == [os.getpid()]
    lock.set_child(alive.pid)
    assert lock.holders() == [os.getpid(), alive.pid]
    lock.release()
    assert not lock.path.exists()


def test_pruning_bench_sweep_command_ends_with_one_line_on_sigterm(tmp_path):
    """The real command line: clip_benchmark-style planning, a stand-in executable, SIGTERM mid-point."""
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "slow_--skip_existing").write_text("")  # the stand-in takes its last argument as label
    args = ["--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model", "m", "--pretrained", "",
            "--task", "zeroshot_classification", "--output", str(tmp_path / "res" / "r_{pruning}.json")]
    command = [sys.executable, "-m", "pruning_bench.cli", "sweep", "--grid", "tome r=2", "--no_baseline", "--quiet",
               "--executable", f"{sys.executable} {FAKE}", "--log_dir", str(tmp_path / "logs"), "--", *args]
    sweep = subprocess.Popen(command, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "FAKE_STATE": str(tmp_path / "state")})
    wait_for(lambda: events(tmp_path), 120)
    sweep.send_signal(signal.SIGTERM)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    wait_for(lambda: not any(pid_alive(pid) for pid in child_pids(tmp_path)), 10)
    [result] = (tmp_path / "res").glob("r_*.json")
    assert result_check.file_problem(result, pruned=True)  # the stopped point left no result a resume would trust
