"""prune_compare.sh: argument handling (with a stand-in clip_benchmark) and a real end-to-end comparison."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

import tiny_clip as tiny

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "prune_compare.sh"
BIN = Path(sys.executable).parent


def compare(*args, cwd=None, env=None):
    environment = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, env=environment,
                          timeout=1200)


@pytest.fixture
def stand_in(tmp_path):
    """A fake `clip_benchmark` that logs its argv, writes a result and fails for the tome configuration."""
    script = tmp_path / "fake_clip_benchmark"
    script.write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        argv = sys.argv[1:]
        with open({str(tmp_path / 'calls.jsonl')!r}, "a") as log:
            log.write(json.dumps(argv) + "\\n")
        strategy = argv[argv.index("--prune_strategy") + 1] if "--prune_strategy" in argv else None
        if strategy == "tome":
            sys.exit("tome run failed")
        output = argv[argv.index("--output") + 1].format(dataset="d", pretrained="p", model="m", language="en",
                                                         task="zeroshot_classification", pruning=strategy or "baseline")
        pruning = {{"strategy": strategy, "params": {{}}}} if strategy else None
        result = {{"dataset": "d", "model": "m", "pretrained": "p", "task": "zeroshot_classification",
                  "language": "en", "metrics": {{"acc1": 0.5}}, "pruning": pruning,
                  "efficiency": {{"gmacs": 2.0 if strategy else 4.0, "gflops": 4.0, "images_per_second": 10.0}}}}
        json.dump(result, open(output, "w"))
    """))
    script.chmod(0o755)
    return script


def calls(tmp_path):
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def test_help_explains_usage():
    done = compare("--help")
    assert done.returncode == 0
    for word in ("--out", "--config", "tome r=8", "anchor_diversity k_anchors=10 top_m=50 alpha=0.5", "Exit status",
                 "keep_rate=0.5"):
        assert word in done.stdout


@pytest.mark.parametrize("args, message", [
    ([], "no clip_benchmark arguments"),
    (["--", "--dataset", "x", "--output", "o.json"], "--output"),
    (["--", "--dataset", "x", "--enable_pruning"], "--config"),
    (["--config", "tome r", "--", "--dataset", "x"], "key=value"),
    (["--config", "r=8", "--", "--dataset", "x"], "strategy name"),
    (["--bogus"], "unknown option"),
])
def test_usage_errors_exit_2_before_running(tmp_path, stand_in, args, message):
    done = compare(*args, env={"CLIP_BENCHMARK": str(stand_in)})
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "calls.jsonl").exists()


def test_runs_baseline_then_each_configuration_and_fails_if_one_fails(tmp_path, stand_in):
    (tmp_path / "r=4").write_text("")  # a file a glob of r=[4,8] would match
    out = tmp_path / "cmp"
    done = compare("--out", str(out), "--config", "anchor_diversity k_anchors=4 top_m=10", "--config", "tome r=[4,8]",
                   "--config", "cls_topk keep=5", "--", "--dataset", "wds/x", "--batch_size", "2",
                   cwd=tmp_path, env={"CLIP_BENCHMARK": str(stand_in)})
    assert done.returncode == 1 and "failed: tome_r=_4_8" in done.stderr
    baseline, anchor, tome, topk = calls(tmp_path)
    template = str(out / "results" / "{dataset}_{pretrained}_{model}_{language}_{task}_{pruning}.json")
    assert baseline == ["eval", "--dataset", "wds/x", "--batch_size", "2", "--output", template, "--measure_efficiency"]
    assert anchor[-7:] == ["--enable_pruning", "--prune_strategy", "anchor_diversity", "--prune_param", "k_anchors=4",
                           "--prune_param", "top_m=10"]
    assert tome[-4:] == ["--prune_strategy", "tome", "--prune_param", "r=[4,8]"]
    assert topk[-2:] == ["--prune_param", "keep=5"]  # the run after the failure still happened
    report = pd.read_csv(out / "report.csv")
    assert sorted(report["strategy"]) == ["anchor_diversity", "baseline", "cls_topk"]
    assert (out / "report.md").is_file() and len(list((out / "logs").glob("*.log"))) == 4


def test_default_configurations(tmp_path, stand_in):
    done = compare("--out", str(tmp_path / "cmp"), "--", "--dataset", "x", env={"CLIP_BENCHMARK": str(stand_in)})
    assert done.returncode == 1  # the stand-in fails tome on purpose
    strategies = [c[c.index("--prune_strategy") + 1] for c in calls(tmp_path) if "--prune_strategy" in c]
    assert strategies == ["anchor_diversity", "tome"]
    anchor = calls(tmp_path)[1]
    assert " ".join(anchor).endswith("--prune_param k_anchors=10 --prune_param prune_layers=[1] "
                                     "--prune_param keep_rate=0.5 --prune_param alpha=0.5")


def test_end_to_end_with_clip_benchmark(tmp_path):
    """Real clip_benchmark, open_clip ViT-B-32 with random weights, a 2-image webdataset written here."""
    data = tiny.write_webdataset(tmp_path / "wds", n_test=2, n_train=0)
    out = tmp_path / "cmp"
    done = compare("--out", str(out), "--config", "anchor_diversity k_anchors=4 top_m=10 alpha=0.5", "--",
                   "--dataset", "wds/tiny", "--dataset_root", str(data), "--model", "ViT-B-32", "--pretrained", "",
                   "--task", "zeroshot_classification", "--batch_size", "2", "--num_workers", "0", "--no_amp",
                   "--quiet", "--throughput_repeats", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    loaded = [json.loads(p.read_text()) for p in (out / "results").glob("*.json")]
    results = {(r["pruning"] or {"strategy": "baseline"})["strategy"]: r for r in loaded}
    assert sorted(results) == ["anchor_diversity", "baseline"]
    base, anchor = results["baseline"], results["anchor_diversity"]
    for result in (base, anchor):
        assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(result)
        assert set(result["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
        assert {"gmacs", "gflops", "images_per_second", "tokens_per_layer", "batch_size", "dtype", "device",
                "versions"} <= set(result["efficiency"])
    assert base["pruning"] is None
    assert base["efficiency"]["tokens_per_layer"] == [50] * 12  # ViT-B/32 at 224: 7x7 patches + CLS
    assert anchor["efficiency"]["tokens_per_layer"] == [50, 50] + [15] * 10
    assert anchor["pruning"]["params"] == {"k_anchors": 4, "top_m": 10, "alpha": 0.5, "start_layer": 1,
                                           "importance_direction": "anchor_to_token", "prune_layers": None,
                                           "keep_rate": None}

    report = pd.read_csv(out / "report.csv")
    required = ["model", "pretrained", "dataset", "task", "strategy", "params", "acc1", "acc1_baseline", "acc1_delta",
                "gmacs", "gmacs_ratio", "images_per_second", "speedup", "efficiency"]
    assert set(required) <= set(report.columns)
    assert report["has_baseline"].all() and list(report["strategy"]) == ["baseline", "anchor_diversity"]
    row = report.set_index("strategy").loc["anchor_diversity"]
    assert row["gmacs_ratio"] == pytest.approx(anchor["efficiency"]["gmacs"] / base["efficiency"]["gmacs"])
    assert 0.2 < row["gmacs_ratio"] < 0.5  # 15 of 50 tokens in 10 of 12 blocks
    assert row["acc1_delta"] == pytest.approx(anchor["metrics"]["acc1"] - base["metrics"]["acc1"])
    assert row["speedup"] == pytest.approx(anchor["efficiency"]["images_per_second"] / base["efficiency"]["images_per_second"])
    markdown = (out / "report.md").read_text()
    assert "| anchor_diversity" in markdown and "acc1_baseline" in markdown and "speedup" in markdown
