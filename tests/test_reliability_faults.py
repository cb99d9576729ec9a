"""Faults and bad inputs of the second battery: one line naming the culprit, or handled right."""
import json
import re
import warnings

import pytest
import torch

import pruning_bench as pb
from pruning_bench.cli import main
import tiny_clip as tiny
from tests.conftest import tiny_open_clip, tiny_timm

warnings.filterwarnings("ignore", message=".*shardshuffle.*")

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32", "--model_arg", "patch_size=8",
        "--model_arg", "depth=1", "--model_arg", "embed_dim=48", "--model_arg", "num_heads=3",
        "--task", "fidelity", "--test_samples", "2", "--batch_size", "2",
        "--efficiency_batch_size", "1", "--throughput_repeats", "1", "--no_progress"]


def one_error(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------- calibration images


@pytest.mark.parametrize("strategy, params", [
    ("head_prune", {"head_ratio": 0.5, "importance": "fisher"}),
    ("head_prune", {"head_ratio": 0.5, "importance": "taylor"}),
    ("layer_drop", {"keep_layers": 1, "importance": "cosine"}),
])
def test_non_finite_calibration_images_are_refused_before_any_ranking(strategy, params):
    model = tiny_timm(depth=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    good = torch.randn(2, 3, 32, 32)
    bad = good.clone()
    bad[1, 0, 3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"calibration batch 1 holds 1 of 2 image\(s\) with NaN or infinite values "
                                         r"\(first: image 1\)"):
        pb.prune(model, strategy, calibration=[good, bad], **params)
    assert type(model.blocks[0]).__name__ == "Block"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    infinite = good.clone()
    infinite[0] = float("inf")
    with pytest.raises(ValueError, match="calibration batch 0"):
        pb.prune(model, strategy, calibration=[infinite], **params)


# ---------------------------------------------------------------- count_flops / match_macs


@pytest.mark.parametrize("build", [lambda: tiny_timm(depth=2), lambda: tiny_open_clip(layers=2)], ids=["timm", "open_clip"])
def test_count_flops_and_match_macs_name_images_that_do_not_fit(build):
    model = build()
    with pytest.raises(ValueError, match=r"images have 1 channel\(s\) .* takes 3"):
        pb.count_flops(model, torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"images of size 48x48 do not fit the model, built for 32x32"):
        pb.count_flops(model, torch.randn(2, 3, 48, 48))
    with pytest.raises(ValueError, match=r"images of size 48x48 do not fit"):
        pb.match_macs(model, "tome", 0.7, images=torch.randn(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"1 channel"):
        pb.match_macs(model, "tome", 0.7, images=torch.randn(1, 1, 32, 32))
    assert pb.count_flops(model, torch.randn(1, 3, 32, 32)).gmacs > 0


def test_a_model_that_takes_other_sizes_still_counts_them():
    model = tiny_timm(depth=2, dynamic_img_size=True)
    assert pb.count_flops(model, torch.randn(1, 3, 48, 48)).gmacs > pb.count_flops(model, torch.randn(1, 3, 32, 32)).gmacs


# ---------------------------------------------------------------- head_prune on a head-pruned open_clip model


def test_head_prune_twice_on_open_clip_runs_and_restores():
    model = tiny_open_clip(layers=2)
    x = torch.randn(2, 3, 32, 32)
    reference = model.encode_image(x)
    with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
        once = model.encode_image(x)
        with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude") as again:
            twice = model.encode_image(x)
            assert again.stats()["heads_per_layer"] == [1, 1] and twice.isfinite().all()
        assert torch.equal(model.encode_image(x), once)
    assert torch.equal(model.encode_image(x), reference)


def test_head_prune_on_a_saved_head_pruned_open_clip_model(tmp_path):
    import open_clip

    name = tiny.register_tiny_clip(tmp_path)
    model = open_clip.create_model(name).eval()
    with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
        pb.save_pruned(model, tmp_path / "m.safetensors", model_name=name)
    loaded = pb.load_pruned(tmp_path / "m.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with pb.prune(loaded, "head_prune", head_ratio=0.5, importance="magnitude") as handle:
        assert loaded.encode_image(x).isfinite().all()
        assert handle.stats()["heads_per_layer"] == [1] * 4


# ---------------------------------------------------------------- --feature_cache


def _cache_run(tmp_path, name):
    return main(["eval", *TINY, "--dataset", "sample_images", "--feature_cache", str(tmp_path / "cache"),
                 "--output", str(tmp_path / f"{name}.json")])


@pytest.mark.parametrize("damage", ["truncated", "foreign", "empty"])
def test_a_damaged_feature_cache_entry_is_recomputed_with_a_note(tmp_path, capsys, damage):
    assert _cache_run(tmp_path, "first") == 0
    [entry] = (tmp_path / "cache").glob("*.pt")
    good = entry.read_bytes()
    if damage == "truncated":
        entry.write_bytes(good[: len(good) // 2])
    elif damage == "foreign":
        torch.save([1, 2, 3], entry)
    else:
        entry.write_bytes(b"")
    capsys.readouterr()
    assert _cache_run(tmp_path, "second") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"feature cache entry {entry} unusable" in err and "recomputed" in err
    result = json.loads((tmp_path / "second.json").read_text())
    assert result["feature_cache"]["reused"] == [] and "recomputed" in result["feature_cache"]["notes"][0]
    assert torch.load(entry, weights_only=True)["features"].shape[0] == 2  # rewritten whole
    assert _cache_run(tmp_path, "third") == 0
    assert json.loads((tmp_path / "third.json").read_text())["feature_cache"]["reused"] == ["disk"]


def test_feature_cache_entries_are_written_atomically(tmp_path, monkeypatch):
    from pruning_bench.evaluate import features

    def killed(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"PK\x03\x04 half")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", killed)
    cache = features.FeatureCache(str(tmp_path / "cache"))
    compute = lambda: features.Features(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))  # noqa: E731
    with pytest.raises(KeyboardInterrupt):
        cache.get("k", compute)
    assert list((tmp_path / "cache").iterdir()) == []


# ---------------------------------------------------------------- image folders


def test_an_unreadable_image_file_is_named(tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    from PIL import Image

    Image.new("RGB", (40, 40), "red").save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    assert main(["eval", *TINY, "--dataset", str(folder), "--output", str(tmp_path / "r.json")]) == 2
    line = one_error(capsys)
    assert str(folder / "b.jpg") in line and "not a readable image" in line


# ---------------------------------------------------------------- clip_benchmark: shards, workers, empty splits


def _cb(monkeypatch, tmp_path, root, *extra):
    import sys

    from clip_benchmark import cli

    name = tiny.register_tiny_clip(tmp_path)
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", str(root), "--model", name,
            "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "2", "--no_amp", "--quiet",
            "--output", str(tmp_path / "res" / "r.json"), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()


@pytest.mark.slow
@pytest.mark.parametrize("pruned", [False, True], ids=["plain", "pruned"])
def test_default_workers_on_a_one_shard_split_are_capped_with_a_note(monkeypatch, tmp_path, capsys, pruned):
    root = tiny.write_webdataset(tmp_path / "wds", n_test=4, n_train=0)
    extra = ["--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=2", "--throughput_repeats", "1"] \
        if pruned else []
    _cb(monkeypatch, tmp_path, root, *extra)  # clip_benchmark's default --num_workers 4
    err = capsys.readouterr().err
    assert "--num_workers 4 capped at 1, the number of shards of the test split" in err and "Traceback" not in err
    [result] = (tmp_path / "res").glob("r*.json")
    assert json.loads(result.read_text())["metrics"]["acc1"] >= 0


def test_an_empty_split_through_clip_benchmark_is_one_line(monkeypatch, tmp_path, capsys):
    import tarfile

    root = tiny.write_webdataset(tmp_path / "wds", n_test=4, n_train=0)
    tarfile.open(root / "test" / "0.tar", "w").close()
    from clip_benchmark import cli

    loads = []
    monkeypatch.setattr(cli, "load_clip", lambda *a, **k: loads.append(1))
    with pytest.raises(SystemExit) as stop:
        _cb(monkeypatch, tmp_path, root, "--num_workers", "0", "--enable_pruning", "--prune_strategy", "tome")
    assert stop.value.code == 2 and not loads
    line = one_error(capsys)
    assert "'test' split" in line and "holds no sample" in line and str(root) in line


# ---------------------------------------------------------------- sweep --match_macs over a saved open_clip model


def test_sweep_match_macs_over_a_saved_open_clip_model(tmp_path, capsys):
    import open_clip

    name = tiny.register_tiny_clip(tmp_path)
    model = open_clip.create_model(name).eval()
    with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
        pb.save_pruned(model, tmp_path / "m.safetensors", model_name=name)
    root = tiny.write_webdataset(tmp_path / "wds", n_test=2, n_train=0)
    status = main(["sweep", "--match_macs", "0.8", "--grid", "tome", "--dry_run", "--log_dir", str(tmp_path / "logs"),
                   "--", "--dataset", "wds/tiny",
                   "--dataset_root", str(root), "--model", name, "--pretrained", str(tmp_path / "m.safetensors"),
                   "--task", "zeroshot_classification", "--output", str(tmp_path / "res" / "{pruning}.json")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    found = re.search(r"MACs target 0.8: r=(\[[\d, ]+\]|\d+)", captured.out)
    expected = pb.match_macs(pb.load_pruned(tmp_path / "m.safetensors"), "tome", 0.8)
    assert found and json.loads(found.group(1)) == expected["r"]


# ---------------------------------------------------------------- non-finite images counted for MACs


def test_count_flops_and_match_macs_refuse_non_finite_images():
    model = tiny_timm()
    images = torch.randn(2, 3, 32, 32)
    images[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"count_flops: images holds 1 of 2 image\(s\) with NaN or infinite values \(first: image 1\)"):
        pb.count_flops(model, images)
    with pytest.raises(ValueError, match="NaN or infinite"):
        pb.match_macs(model, "ats", 0.8, images=images[1:])
