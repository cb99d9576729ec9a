"""Matched means matched: `match_macs` reaches its target within 1% of the baseline MACs where the knob's
finest form can, says so with the gap where it cannot, talks while it searches, and what it finds is
named briefly (4 significant digits, no key twice in a file name) and cached by the sweep."""
import json
import re
import warnings

import pytest
import torch

import pruning_bench as pb
from pruning_bench import sweep
from pruning_bench.sweep import matched_grids as sweep_match
from pruning_bench.cli import main
from pruning_bench.match import MatchGapWarning
from pruning_bench.record import naming
from conftest import tiny_timm


def model_64():
    """64 patches, 4 blocks: one more token merged in every block moves MACs by several percent."""
    return tiny_timm(img_size=32, depth=4)


def counted(model, strategy, params):
    x = torch.zeros(1, 3, 32, 32)
    base = pb.count_flops(model, x).macs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pb.prune(model, strategy, **params):
            return pb.count_flops(model, x).macs / base


@pytest.mark.parametrize("strategy", ["tome", "tofu", "mctf"])
@pytest.mark.parametrize("target", [0.8, 0.6])
def test_integer_knobs_reach_every_target_within_one_percent_with_a_per_block_schedule(strategy, target):
    model = model_64()
    with warnings.catch_warnings():
        warnings.simplefilter("error", MatchGapWarning)
        found = pb.match_macs(model, strategy, target, progress=False)
    assert abs(found.ratio - target) <= 0.01, (found["r"], found.ratio)
    assert found.ratio == pytest.approx(counted(model, strategy, dict(found)), abs=1e-12)  # what really runs
    assert found.gap == pytest.approx(found.ratio - target)
    if isinstance(found["r"], list):
        assert len(found["r"]) == 4 and max(found["r"]) - min(found["r"]) <= 2
    # the constant values that bracket the target were tried; the schedule is never worse than one r for all
    above = max((r for r, c in found.evaluated.items() if c >= target))
    assert found.evaluated[above] >= target > found.evaluated[above + 1]
    assert found.evaluated[above + 1] == pytest.approx(counted(model, strategy, {"r": above + 1}), abs=1e-12)
    assert abs(found.ratio - target) <= min(abs(c - target) for c in found.evaluated.values())


def test_a_target_the_finest_form_cannot_reach_is_returned_nearest_with_the_gap_named():
    model = model_64()
    with pytest.warns(MatchGapWarning, match=r"visionzip cannot reach MAC ratio 0.3 .*\(gap \+0\.\d{4}\)"):
        found = pb.match_macs(model, "visionzip", 0.3, progress=False)  # reduces only in block 2 of 4
    assert found.gap > 0.01 and found.knob == "dominant" and found["dominant"] == 1


def test_float_knobs_are_matched_to_four_significant_digits():
    found = pb.match_macs(model_64(), "evit", 0.7, prune_layers=[1, 2], progress=False)
    value = found["keep_rate"]
    assert float(f"{value:.4g}") == value and abs(found.ratio - 0.7) <= 0.01
    assert all(float(f"{v:.4g}") == v for v in found.evaluated)


def test_the_search_says_what_it_does_on_stderr(capsys):
    pb.match_macs(model_64(), "tome", 0.6)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) >= 3 and all(line.startswith("match_macs: ") for line in lines)
    assert "target 0.6" in lines[0] and "per block" in "\n".join(lines) and "gap" in lines[-1]


# ---------------------------------------------------------------- names


def test_labels_and_slugs_keep_four_significant_digits_and_stay_distinct():
    a = naming.pruning_slug("evit", {"keep_rate": 0.5746970663265305, "prune_layers": [3, 6, 9], "fuse": True})
    b = naming.pruning_slug("evit", {"keep_rate": 0.5747030663265305, "prune_layers": [3, 6, 9], "fuse": True})
    assert "keep_rate0.5747-" in a and "0.574697" not in a and a != b
    assert naming.pruning_slug("evit", {"keep_rate": 0.5, "fuse": True}) == "evit-fusetrue-keep_rate0.5"
    point = sweep.SweepPoint("evit", (("keep_rate", 0.5746970663265305),), {"keep_rate": 0.5746970663265305})
    assert point.label == "evit keep_rate=0.5747"


def test_a_file_name_never_holds_a_key_twice():
    points = sweep.expand_grids(["tome r=2"], baseline=False, seeds=[0])
    [run] = sweep.plan(points, ["--model", "m", "--dataset", "d", "--output", "out/{pruning}.json"],
                       executable="pruning-bench", driver="pruning-bench")
    name = run.outputs[0].name
    slug, run_seed = re.fullmatch(r"(.*)_(seed\d+)\.json", name).groups()
    keys = [re.match(r"[a-z_]*[a-z]", part).group(0) for part in [*slug.split("-")[1:], run_seed]]
    assert "strategy_seed0" in name and name.endswith("_seed0.json")
    assert len(keys) == len(set(keys)), name


# ---------------------------------------------------------------- the sweep's cache

MODEL_ARGS = ["--model", "vit_tiny_patch16_224", "--img_size", "16", "--model_arg", "patch_size=4",
              "--model_arg", "depth=2"]


def test_matched_values_are_cached_in_the_sweep_folder_and_read_back_without_a_model(tmp_path, monkeypatch, capsys):
    import tiny_clip as tiny

    root = tmp_path / "wds"
    tiny.write_webdataset(root, n_test=2, n_train=0)
    command = ["sweep", "--driver", "pruning-bench", "--log_dir", str(tmp_path / "logs"), "--match_macs", "0.8,0.6",
               "--grid", "tome", "--dry_run", "--", *MODEL_ARGS, "--dataset", "wds/tiny", "--dataset_root", str(root),
               "--task", "fidelity", "--output", str(tmp_path / "res" / "{model}_{pruning}.json")]
    assert main(command) == 0
    first = capsys.readouterr()
    cache = json.loads((tmp_path / "logs" / sweep_match.CACHE_NAME).read_text())
    assert len(cache) == 2 and "match_macs: tome, target 0.8" in first.err

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built again")

    monkeypatch.setattr(sweep_match, "build_model", refuse)
    monkeypatch.setattr("pruning_bench.match.match_macs", refuse)
    assert main(command) == 0  # a second dry run (or a resume) reads the values back
    second = capsys.readouterr()
    assert second.out == first.out and "matched before" in second.err
