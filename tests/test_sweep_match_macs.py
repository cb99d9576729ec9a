"""`pruning-bench sweep --match_macs`: every grid entry's compute knob matched per target MAC ratio.

The model the sweep matches on is built from the evaluation arguments (a random-init timm ViT with
16 patches and 2 blocks, or a tiny open_clip CLIP through clip_benchmark's loader); the tests compare
what the sweep plans with `pb.match_macs` run directly on an independently built copy.
"""
import json
import re
import shlex
import subprocess
import warnings

import pytest
import torch

import pruning_bench as pb
from pruning_bench import registry, sweep
from pruning_bench.sweep import matched_grids as sweep_match
from pruning_bench.cli import main
import tiny_clip as tiny
from pruning_bench.run_config import PruningConfig
from pruning_bench.record import result as record
from pruning_bench.strategies.base import TokenStrategy

MODEL_ARGS = ["--model", "vit_tiny_patch16_224", "--img_size", "16", "--model_arg", "patch_size=4",
              "--model_arg", "depth=2"]
MATCHED = re.compile(r"MACs target (\S+): (\w+)=(\S+) achieves (\S+)")


def same_model():
    """What `pruning-bench eval` builds from MODEL_ARGS, built here without the sweep's code."""
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=4, depth=2).eval()


def direct(model, strategy, ratio, **fixed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return pb.match_macs(model, strategy, ratio, **fixed)


def eval_args(tmp_path, *extra):
    root = tmp_path / "wds"
    if not root.exists():
        tiny.write_webdataset(root, n_test=2, n_train=0)
    return [*MODEL_ARGS, "--dataset", "wds/tiny", "--dataset_root", str(root), "--task", "fidelity",
            "--test_samples", "2", "--batch_size", "2", "--efficiency_batch_size", "2", "--throughput_repeats", "1",
            "--no_progress", "--output", str(tmp_path / "res" / "{model}_{pruning}.json"), *extra]


def sweep_args(tmp_path, *options):
    return ["sweep", "--driver", "pruning-bench", "--quiet", "--log_dir", str(tmp_path / "logs"), *options, "--",
            *eval_args(tmp_path)]


# ---------------------------------------------------------------- planning


def test_dry_run_lists_one_point_per_entry_and_ratio_with_match_macs_values(tmp_path, capsys):
    status = main(sweep_args(tmp_path, "--match_macs", "0.8,0.6", "--grid", "tome", "--grid", "cls_topk start_layer=1",
                             "--dry_run"))
    out = capsys.readouterr().out
    assert status == 0, out
    listed = [(float(t), k, json.loads(v), float(a)) for t, k, v, a in MATCHED.findall(out)]
    model = same_model()
    expected = []
    for strategy, fixed in (("tome", {}), ("cls_topk", {"start_layer": 1})):
        for ratio in (0.8, 0.6):
            found = direct(model, strategy, ratio, **fixed)
            expected.append((ratio, found.knob, found[found.knob], found.ratio))
    assert [(t, k, v) for t, k, v, _ in listed] == [(t, k, v) for t, k, v, _ in expected]
    assert [a for *_, a in listed] == pytest.approx([a for *_, a in expected], abs=5e-5)  # printed to 4 decimals
    assert "5 point(s), 5 to run" in out  # the baseline plus 2 entries x 2 targets
    assert "cls_topk start_layer=1 keep=" in out and "[MACs target 0.6]" in out


def test_planned_commands_carry_the_target_and_read_back_as_the_same_point(tmp_path):
    fake = tmp_path / "bin" / "pruning-bench"  # prints what a driver would read from its environment
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\nprintf "%s" "${record.MATCH_ENV}"\n')
    fake.chmod(0o755)
    matcher = sweep_match.Matcher([0.7], model=same_model())
    points = sweep.expand_grids(["tome prop_attn=true,false"], matcher=matcher, baseline=False)
    assert [dict(p.params) for p in points] == [{"prop_attn": True, "r": points[0].match["value"]},
                                                {"prop_attn": False, "r": points[1].match["value"]}]
    for run in sweep.plan(points, eval_args(tmp_path), executable=str(fake)):
        seen = subprocess.run(["bash", "-c", run.shell], capture_output=True, text=True, check=True).stdout
        assert json.loads(seen) == run.point.match  # the emitted shell line hands the target to the driver
        words = shlex.split(run.shell)
        assert words[0] == "env" and words[1].startswith(record.MATCH_ENV + "=")
        carried = json.loads(words[1].split("=", 1)[1])
        assert carried == run.point.match and carried["target_ratio"] == 0.7 and carried["knob"] == "r"
        config = sweep.parse_eval_args(words[4:], "pruning-bench")
        from pruning_bench import run_config as flags

        resolved = flags.resolve(config)
        assert resolved.strategy == "tome" and resolved.resolved == run.point.resolved
        assert resolved.resolved["r"] == carried["value"]


def test_multi_stage_entry_matches_keep_rate_and_seeds_reuse_one_search(tmp_path):
    model = same_model()
    matcher = sweep_match.Matcher([0.75], model=model, tolerance=0.05)
    points = sweep.expand_grids(["random_drop prune_layers=[0,1]"], matcher=matcher, baseline=False, strategy_seeds=[0, 1],
                                seeds=[3, 4])
    found = direct(model, "random_drop", 0.75, tolerance=0.05, prune_layers=[0, 1])
    assert found.knob == "keep_rate"
    assert [(p.seed, dict(p.params)) for p in points] == [
        (s, {"prune_layers": [0, 1], "keep_rate": found["keep_rate"], "seed": k}) for s in (3, 4) for k in (0, 1)]
    assert all(p.match["achieved_ratio"] == found.ratio for p in points)
    assert len(matcher._found) == 1  # one search for the entry and the target, whatever the seeds


def test_targets_that_resolve_to_one_value_run_once_and_say_so():
    notes = []
    matcher = sweep_match.Matcher([0.8, 0.799], model=same_model())
    points = sweep.expand_grids(["tome"], matcher=matcher, baseline=False, notes=notes)
    assert len(points) == 1 and points[0].match["target_ratio"] == 0.8
    assert len(notes) == 1 and "0.799" in notes[0] and "run once" in notes[0]


def test_clip_benchmark_model_is_built_by_its_loader(tmp_path):
    model_dir = tmp_path / "tinyclip"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    args = ["--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model", f"local-dir:{model_dir}",
            "--pretrained", "", "--task", "zeroshot_classification", "--output", str(tmp_path / "r_{pruning}.json")]
    built = sweep_match.build_model(args, "clip_benchmark")
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = open_clip.create_model(f"local-dir:{model_dir}", pretrained="")
    assert type(built) is type(reference) and not built.training
    size = tiny.TINY_CLIP_CONFIG["vision_cfg"]["image_size"]
    images = torch.zeros(1, 3, size, size)
    assert pb.count_flops(built, images).macs == pb.count_flops(reference, images).macs
    two = [*args, "--pretrained", "", "other"]
    with pytest.raises(ValueError, match="one model; the evaluation arguments name 2"):
        sweep_match.build_model(two, "clip_benchmark")


# ---------------------------------------------------------------- bad input, before anything runs


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **kw):
        raise AssertionError("a model was built for a sweep that should have been refused")

    monkeypatch.setattr(sweep_match, "build_model", refuse)


@pytest.mark.parametrize("options, named", [
    (["--match_macs", "0", "--grid", "tome"], "--match_macs: target ratio 0 is out of range (0, 1]"),
    (["--match_macs", "0.8,1.5", "--grid", "tome"], "--match_macs: target ratio 1.5 is out of range (0, 1]"),
    (["--match_macs", "0.8,x", "--grid", "tome"], "'x' is not a number"),
    (["--match_macs", "0.8,0.8", "--grid", "tome"], "0.8 is given twice"),
    (["--match_macs", "0.8", "--grid", "tome r=4,8"], "r is the compute knob --match_macs sets for tome"),
    (["--match_macs", "0.8", "--grid", "cls_topk prune_layers=[1] keep_rate=0.5"], "keep_rate is the compute knob"),
    (["--match_macs", "0.8", "--grid", "tome prop_attn=maybe"], "prop_attn"),
    (["--match_macs", "0.8"], "needs at least one --grid"),
    (["--match_macs", "0.8", "--grid", "no_such_strategy"], "unknown strategy 'no_such_strategy'"),
])
def test_bad_match_input_is_one_line_before_any_model(tmp_path, capsys, no_model, options, named):
    assert main(sweep_args(tmp_path, *options)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err, err
    assert not (tmp_path / "res").exists() and not (tmp_path / "logs").exists()


def test_strategy_without_a_knob_is_refused(tmp_path, capsys, monkeypatch, no_model):
    monkeypatch.setattr(registry, "_STRATEGIES", dict(registry._STRATEGIES))  # gone again after this test

    @pb.register_strategy("knobless_test")
    class Knobless(TokenStrategy):
        defaults = {"stride": 2}

    assert getattr(Knobless, "compute_knob", None) is None
    assert main(sweep_args(tmp_path, "--match_macs", "0.8", "--grid", "knobless_test")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "knobless_test declares no compute knob" in err


def test_stale_match_variable_is_not_recorded(monkeypatch):
    config = PruningConfig(enabled=True, strategy="tome", resolved={"r": 3, "prop_attn": True})
    match = {"strategy": "tome", "knob": "r", "value": 3, "target_ratio": 0.8, "achieved_ratio": 0.79}
    monkeypatch.setenv(record.MATCH_ENV, json.dumps(match))
    assert record.matched_target(config) == match
    monkeypatch.setenv(record.MATCH_ENV, json.dumps({**match, "value": 4}))  # another point's target
    assert record.matched_target(config) is None
    monkeypatch.setenv(record.MATCH_ENV, json.dumps({**match, "strategy": "cls_topk"}))
    assert record.matched_target(config) is None


# ---------------------------------------------------------------- resume


def complete_result(run):
    return {"dataset": "tiny", "model": "m", "task": "fidelity", "metrics": {"cosine": 1.0},
            "pruning": None if run.point.is_baseline else {"strategy": run.point.strategy}}


def test_a_resumed_sweep_resolves_to_the_same_points_and_skips_finished_ones(tmp_path):
    args = eval_args(tmp_path)

    def planned():  # a fresh model and a fresh search, as a second `pruning-bench sweep` does
        matcher = sweep_match.Matcher([0.8, 0.6], model=sweep_match.build_model(args, "pruning-bench"))
        points = sweep.expand_grids(["tome"], matcher=matcher)
        return sweep.plan(points, args, executable="pruning-bench")

    first = planned()
    ran = []

    def runner(run, log):
        ran.append(run.point.label)
        for path in run.outputs:
            path.write_text(json.dumps(complete_result(run)))
        return 0

    sweep.run_sweep(first[:2], log_dir=tmp_path / "logs", runner=runner, progress=False)
    second = planned()
    assert [(r.point, r.point.match, r.outputs) for r in second] == [(r.point, r.point.match, r.outputs) for r in first]
    assert [r.finished for r in second] == [True, True, False]
    ran.clear()
    summary = sweep.run_sweep(second, log_dir=tmp_path / "logs", runner=runner, progress=False)
    assert ran == [first[2].point.label] and len(summary.skipped) == 2


# ---------------------------------------------------------------- one real run


def test_real_matched_run_records_its_target_and_reaches_the_promised_macs(tmp_path, capsys):
    """One point through `pruning-bench eval` as a subprocess; then the same command finds it finished."""
    command = sweep_args(tmp_path, "--match_macs", "0.6", "--grid", "tome", "--no_baseline")
    status = main(command)
    logs = "".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert status == 0, logs
    [result] = (tmp_path / "res").glob("*.json")
    data = json.loads(result.read_text())
    match = data["pruning"]["match"]
    promised = direct(same_model(), "tome", 0.6)
    assert match["target_ratio"] == 0.6 and data["match_target_ratio"] == 0.6
    assert match["knob"] == "r" and match["value"] == promised["r"] == data["pruning"]["params"]["r"]
    assert match["achieved_ratio"] == pytest.approx(promised.ratio, abs=1e-12)
    baseline = pb.count_flops(same_model(), torch.zeros(1, 3, 16, 16)).gmacs
    assert data["efficiency"]["gmacs"] / baseline == pytest.approx(promised.ratio, abs=1e-4)
    stamp = result.stat().st_mtime_ns
    capsys.readouterr()
    assert main(command) == 0
    assert "1 already finished, 0 run" in capsys.readouterr().err
    assert result.stat().st_mtime_ns == stamp
