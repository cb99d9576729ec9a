"""The researcher's workflow end to end, on a tiny random CLIP: a 2-seed matched-MACs sweep through
clip_benchmark with `--max_samples`, interrupted and resumed, reported from the result files and from
`clip_benchmark build`'s CSV of the same runs with identical numbers, every pruned run paired with its
own seed's baseline (random-init weights differ by seed, so another seed's baseline is a wrong answer)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import tiny_clip as tiny
from pruning_bench.cli import main
from pruning_bench.report import compare, load_results
from test_run_identity import assert_same_tables

BIN = Path(sys.executable).parent


def results_in(folder):
    """The finished result files (not the hidden temporary file of one being written)."""
    return sorted(p.name for p in folder.glob("*.json") if not p.name.startswith("."))


@pytest.mark.slow
def test_two_seed_matched_sweep_interrupted_resumed_and_reported_alike(tmp_path):
    tiny.write_webdataset(tmp_path / "wds", n_test=12, n_train=0)
    model_dir = tmp_path / "tinyclip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    results = tmp_path / "res"
    command = [str(BIN / "pruning-bench"), "sweep", "--match_macs", "0.8", "--seeds", "0,1", "--grid", "tome",
               "--quiet", "--log_dir", str(tmp_path / "logs"), "--",
               "--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model", f"local-dir:{model_dir}",
               "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "4", "--num_workers", "0",
               "--no_amp", "--quiet", "--throughput_repeats", "1", "--max_samples", "8",
               "--output", str(results / "{pruning}.json")]
    sweep = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not results_in(results) and time.time() < deadline and sweep.poll() is None:
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)  # interrupted after its first finished point
    _, err = sweep.communicate(timeout=120)
    finished = results_in(results)
    assert sweep.returncode != 0 and 1 <= len(finished) < 4, err
    assert main(command[1:]) == 0  # resumed: only the points left are run
    names = sorted(p.name for p in results.glob("*.json"))  # temporary files of the stopped point included
    assert len(names) == 4 and set(finished) <= set(names)
    for path in results.glob("*.json"):
        result = json.loads(path.read_text())
        assert result["data"]["test"]["images"] == 8 and result["data"]["test"]["subset"] == "first 8"
        assert result["seed"] in (0, 1) and result["per_image"]["n"] == 8
        assert path.stat().st_mode & 0o777 == 0o666 & ~_umask()
    build = subprocess.run([str(BIN / "clip_benchmark"), "build", str(results), "--output", str(tmp_path / "b.csv")],
                           capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    from_json, from_csv = compare(load_results([results])), compare(load_results([tmp_path / "b.csv"]))
    assert_same_tables(from_json, from_csv, tmp_path / "b.csv")
    pruned = from_json[from_json["strategy"] == "tome"]
    assert len(pruned) == 2
    for _, row in pruned.iterrows():  # its own seed's baseline, and the difference against it
        baseline = from_json.set_index("file").loc[row["baseline_file"]]
        assert baseline["strategy"] == "baseline" and baseline["seed"] == row["seed"]
        assert row["acc1_delta"] == pytest.approx(row["acc1"] - baseline["acc1"])
    for source, prefix in ((results, tmp_path / "from_json"), (tmp_path / "b.csv", tmp_path / "from_csv")):
        assert main(["report", str(source), "-o", str(prefix), "--no-plot"]) == 0
    configs = [pd.read_csv(f"{p}_configurations.csv").drop(columns=["files"]) for p in (tmp_path / "from_json",
                                                                                          tmp_path / "from_csv")]
    pd.testing.assert_frame_equal(*configs)
    # two seeds sharing the test images, with per-image outcomes: the interval that uses them
    assert configs[0].set_index("strategy").loc["tome", "delta_method"] in ("bootstrap", "images + seeds")


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
