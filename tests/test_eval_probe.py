"""`pruning-bench eval --task probe` end to end on a tiny random timm ViT and colour-coded images."""
import json

import pytest

from pruning_bench.cli import main
from colour_webdataset import write_colour_webdataset

TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
        "--model_arg", "patch_size=8", "--model_arg", "depth=3", "--model_arg", "embed_dim=48",
        "--model_arg", "num_heads=3", "--no_progress", "--batch_size", "8", "--efficiency_batch_size", "4",
        "--throughput_repeats", "1"]


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return write_colour_webdataset(tmp_path_factory.mktemp("wds"), n_train=30, n_test=12, classes=3)


def run_eval(tmp_path, root, *extra, task="probe"):
    out = tmp_path / "out"
    argv = ["eval", *TINY, "--dataset", "wds/colours", "--dataset_root", str(root), "--task", task,
            "--output", str(out / "{dataset}_{task}_{pruning}.json"), *extra]
    assert main(argv) == 0
    files = sorted(out.glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(files[-1].read_text()), files[-1]


def test_probe_separates_colours_and_baseline_agrees_with_itself(tmp_path, colours):
    result, path = run_eval(tmp_path, colours)
    m = result["metrics"]
    assert path.name == "colours_probe_baseline.json"
    assert result["task"] == "probe" and result["pretrained"] == "none" and result["pruning"] is None
    assert m["acc1"] >= 0.9, m  # flat colours are separable even by random features
    assert m["agreement"] == 1.0 and m["agreement_kind"] == "classifier"
    assert m["cosine"] == pytest.approx(1.0) and m["cosine_centred"] == pytest.approx(1.0)
    assert result["data"]["test"]["images"] == 12 and result["data"]["train"]["images"] == 30
    assert result["data"]["train"]["images_per_class"] == {"min": 10, "max": 10}
    eff = result["efficiency"]
    assert eff["gmacs"] > 0 and eff["images_per_second"] > 0 and eff["tokens_per_layer"] == [17, 17, 17]


def test_noop_pruning_gives_exact_agreement_and_cosine(tmp_path, colours):
    result, path = run_eval(tmp_path, colours, "--enable_pruning", "--prune_strategy", "random_drop",
                            "--prune_param", "keep=1000")
    m = result["metrics"]
    assert m["agreement"] == 1.0
    assert m["cosine"] == pytest.approx(1.0, abs=1e-12) and m["cosine_centred"] == pytest.approx(1.0, abs=1e-12)
    assert m["acc1"] == m["acc1_unpruned"]
    pruning = result["pruning"]
    assert pruning["strategy"] == "random_drop" and pruning["params"]["keep"] == 1000
    assert pruning["requested"] == {"keep": 1000}
    assert any("clamped" in note for note in pruning["notes"])
    assert path.name == f"colours_probe_{pruning['slug']}.json"


def test_pruned_run_records_blocks_like_clip_benchmark_path(tmp_path, colours):
    result, _ = run_eval(tmp_path, colours, "--enable_pruning", "--k_anchors", "2", "--top_m", "3")
    pruning, eff = result["pruning"], result["efficiency"]
    assert set(pruning) >= {"strategy", "params", "requested", "stages", "slug", "notes"}
    assert pruning["strategy"] == "anchor_diversity"
    assert pruning["params"] == {"k_anchors": 2, "top_m": 3, "alpha": 0.5, "start_layer": 1,
                                 "importance_direction": "anchor_to_token", "prune_layers": None, "keep_rate": None}
    assert eff["tokens_per_layer"] == [17, 17, 6]
    assert set(eff) >= {"gmacs", "gflops", "images_per_second", "batch_size", "device", "versions"}
    assert 0 <= result["metrics"]["agreement"] <= 1 and result["metrics"]["cosine_centred"] < 1


def test_unpruned_features_are_reused_from_the_disk_cache(tmp_path, colours):
    cache = ["--feature_cache", str(tmp_path / "cache")]
    first, _ = run_eval(tmp_path, colours, *cache)
    second, _ = run_eval(tmp_path, colours, *cache, "--enable_pruning", "--prune_strategy", "tome",
                         "--prune_param", "r=2")
    assert first["feature_cache"]["reused"] == []
    assert second["feature_cache"]["reused"] == ["disk", "disk"]
    assert second["metrics"]["acc1_unpruned"] == first["metrics"]["acc1"]
    from pruning_bench.report.fidelity_table import rows

    table = rows([tmp_path / "out"])
    assert table["strategy"].tolist() == ["baseline", "tome"] and table["cosine_centred"].iloc[0] == 1.0


def test_calibration_is_supplied_for_data_driven_importance(tmp_path, colours):
    result, _ = run_eval(tmp_path, colours, "--enable_pruning", "--prune_strategy", "head_prune",
                         "--prune_param", "head_ratio=0.34", "--prune_param", "importance=activation",
                         "--prune_calibration", "6")
    pruning = result["pruning"]
    assert "calibration" not in pruning["requested"] and "calibration" not in pruning["slug"]
    assert any("calibration: the first 6 images of the train split" in n for n in pruning["notes"])


def test_fidelity_calibrates_on_the_training_split_when_there_is_one(tmp_path, colours):
    result, _ = run_eval(tmp_path, colours, "--enable_pruning", "--prune_strategy", "layer_drop",
                         "--prune_param", "keep_layers=2", "--prune_calibration", "4", task="fidelity")
    notes = result["pruning"]["notes"]
    assert "calibration: the first 4 images of the train split" in notes
    assert result["pruning"]["params"]["calibration"]["images"] == 4


def test_bad_flags_stop_before_anything_runs(tmp_path, colours, capsys):
    argv = ["eval", *TINY, "--dataset", "wds/colours", "--dataset_root", str(colours),
            "--output", str(tmp_path / "x.json")]
    assert main([*argv, "--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=-1"]) == 2
    assert "r" in capsys.readouterr().err
    assert main([*argv, "--top_m", "5"]) == 2  # pruning flag without --enable_pruning
    assert "without --enable_pruning" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_probe_needs_labels(tmp_path):
    folder = tmp_path / "imgs"
    write_colour_webdataset(tmp_path / "w", n_train=3, n_test=3)
    folder.mkdir()
    import shutil
    import tarfile

    with tarfile.open(tmp_path / "w" / "test" / "0.tar") as tar:
        tar.extractall(folder, filter="data")
    for cls in folder.glob("*.cls"):
        cls.unlink()
    argv = ["eval", *TINY, "--dataset", str(folder), "--task", "probe", "--output", str(tmp_path / "o.json")]
    assert main(argv) == 2
    shutil.rmtree(folder)


def test_two_class_probe_scores_one_column_per_class(tmp_path):
    two = write_colour_webdataset(tmp_path / "wds2", n_train=20, n_test=8, classes=2)
    result, _ = run_eval(tmp_path, two, "--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=8")
    m = result["metrics"]
    assert 0.0 <= m["acc1"] <= 1.0 and m["acc1_unpruned"] >= 0.9  # two flat colours: separable
    assert 0.0 <= m["agreement"] <= 1.0
