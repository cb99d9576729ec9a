"""`clip_benchmark eval` runs in this process with a tiny CLIP: plain, pruned, every covered task."""
import json
import sys
import warnings

import numpy as np
import pytest
import torch
from clip_benchmark import cli

import pruning_bench as pb
import tiny_clip as tiny

warnings.filterwarnings("ignore", message=".*shardshuffle.*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cb")
    return {
        "model": tiny.register_tiny_clip(root),
        "classification": str(tiny.write_webdataset(root / "cls")),
        "retrieval": str(tiny.write_webdataset(root / "ret", retrieval=True)),
    }


@pytest.fixture
def loaded(monkeypatch):
    """Every model clip_benchmark loads, kept for inspection."""
    models = []
    original = cli.load_clip

    def spy(*a, **kw):
        model, transform, tokenizer = original(*a, **kw)
        models.append(model)
        return model, transform, tokenizer

    monkeypatch.setattr(cli, "load_clip", spy)
    return models


def clip_benchmark_eval(monkeypatch, data, out, *extra, task="zeroshot_classification", dataset="classification"):
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", data[dataset], "--model", data["model"],
            "--pretrained", "", "--task", task, "--batch_size", "4", "--num_workers", "0", "--no_amp", "--quiet",
            "--feature_root", str(out / "features"), "--output", str(out / "{task}_{pruning}.json"), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()


def read(path):
    return json.loads(path.read_text())


PRUNE = ["--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=4"]


@pytest.mark.parametrize("task, dataset", [
    ("zeroshot_classification", "classification"), ("zeroshot_retrieval", "retrieval"), ("linear_probe", "classification")])
def test_plain_run_is_clip_benchmarks_own_run(monkeypatch, tmp_path, data, task, dataset):
    clip_benchmark_eval(monkeypatch, data, tmp_path, task=task, dataset=dataset)
    ours = (tmp_path / f"{task}_baseline.json").read_text()
    # the same arguments straight into clip_benchmark's own `run` (its own feature folder too)
    monkeypatch.setattr(cli, "run", cli.run.__wrapped__)
    upstream_dir = tmp_path / "upstream"
    upstream_dir.mkdir()
    clip_benchmark_eval(monkeypatch, data, upstream_dir, "--output", str(upstream_dir / "plain.json"), task=task, dataset=dataset)
    assert ours == (upstream_dir / "plain.json").read_text()
    assert "pruning" not in json.loads(ours) and "efficiency" not in json.loads(ours)


@pytest.mark.parametrize("task, dataset, metric", [
    ("zeroshot_classification", "classification", "acc1"),
    ("zeroshot_retrieval", "retrieval", "image_retrieval_recall@5"),
    ("linear_probe", "classification", "lp_acc1")])
def test_pruned_run_records_pruning_and_efficiency(monkeypatch, tmp_path, data, loaded, task, dataset, metric):
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, task=task, dataset=dataset)
    result = read(tmp_path / f"{task}_cls_topk-keep4-start_layer1.json")
    assert {"dataset", "model", "pretrained", "task", "metrics", "language"} <= set(result)
    assert metric in result["metrics"]
    assert result["pruning"]["strategy"] == "cls_topk"
    assert result["pruning"]["params"] == {"keep": 4, "start_layer": 1, "prune_layers": None, "keep_rate": None}
    eff = result["efficiency"]
    assert eff["tokens_per_layer"] == [17, 17, 5, 5]  # 32x32 images, 8x8 patches: 16 + CLS, then CLS + 4
    assert eff["gmacs"] > 0 and eff["gflops"] == pytest.approx(2 * eff["gmacs"])
    assert eff["images_per_second"] > 0 and eff["batch_size"] == 4
    assert eff["device"] == "cpu" and eff["dtype"] == "float32" and eff["versions"]["clip_benchmark"] == "1.6.2"
    (model,) = loaded
    weights = sum(p.numel() * p.element_size() for p in model.visual.parameters()) / 2**20
    assert eff["memory"]["weights_mb"] == pytest.approx(weights) and eff["memory"]["peak_activation_mb"] > 0
    assert "TokenReduced" not in type(model.visual.transformer.resblocks[1]).__name__  # restored after the run


def test_pruning_is_active_during_evaluation_and_undone_after(monkeypatch, tmp_path, data, loaded):
    seen = []
    original = cli.zeroshot_classification.evaluate

    def spy(model, *a, **kw):
        seen.append(type(model.visual.transformer.resblocks[0]).__name__)
        return original(model, *a, **kw)

    monkeypatch.setattr(cli.zeroshot_classification, "evaluate", spy)
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE)
    assert seen == ["TokenReducedResidualAttentionBlock"]
    (model,) = loaded
    reference = tiny_reference(data)
    assert model.state_dict().keys() == reference.state_dict().keys()
    assert type(model.visual.transformer.resblocks[0]) is type(reference.visual.transformer.resblocks[0])
    assert type(model.visual) is type(reference.visual)


def tiny_reference(data):
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_clip.create_model(data["model"], pretrained="")


def test_pruning_changes_what_the_encoder_computes(monkeypatch, tmp_path, data):
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--measure_efficiency")
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE)
    base = read(tmp_path / "zeroshot_classification_baseline.json")
    pruned = read(tmp_path / "zeroshot_classification_cls_topk-keep4-start_layer1.json")
    assert base["pruning"] is None
    assert base["efficiency"]["tokens_per_layer"] == [17] * 4
    assert pruned["efficiency"]["gmacs"] < base["efficiency"]["gmacs"]


def test_linear_probe_features_are_keyed_by_the_pruning(monkeypatch, tmp_path, data):
    clip_benchmark_eval(monkeypatch, data, tmp_path, task="linear_probe")
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, task="linear_probe")
    folders = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert folders == ["pb-tiny-vit--wds_tiny", "pb-tiny-vit--wds_tiny__cls_topk-keep4-start_layer1__seed0"]  # random init: seeded
    base, pruned = (torch.load(tmp_path / "features" / f / "features_test.pt") for f in folders)
    assert not torch.equal(base, pruned)  # the pruned run computed its own features
    result = read(tmp_path / "linear_probe_cls_topk-keep4-start_layer1.json")
    assert result["pruning"]["feature_cache"] == folders[1]


def test_skip_existing_skips_pruned_runs_too(monkeypatch, tmp_path, data, loaded):
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE)
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, "--skip_existing")
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--enable_pruning", "--prune_strategy", "cls_topk",
                        "--prune_param", "keep=8", "--skip_existing")
    assert len(loaded) == 2  # the repeated configuration did not even load the model
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_default_output_name_carries_the_configuration(monkeypatch, tmp_path, data):
    monkeypatch.chdir(tmp_path)
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", data["classification"], "--model",
            data["model"], "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "4",
            "--num_workers", "0", "--no_amp", "--quiet", *PRUNE]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    monkeypatch.setattr(sys, "argv", argv[: -len(PRUNE)])
    cli.main()
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert names == ["tiny__pb-tiny-vit_en_zeroshot_classification.json",
                     "tiny__pb-tiny-vit_en_zeroshot_classification_cls_topk-keep4-start_layer1.json"]


def test_attention_file_layout(monkeypatch, tmp_path, data):
    path = tmp_path / "attention.pt"
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, "--extract_attention", "--attention_output", str(path),
                        "--attention_images", "5")
    saved = torch.load(path)
    assert [tuple(a.shape) for a in saved["cls_attention"]] == [(5, 17), (5, 17), (5, 5), (5, 5)]
    assert all(a.dtype == torch.float32 for a in saved["cls_attention"])
    for rows in saved["cls_attention"]:
        assert torch.allclose(rows.sum(dim=1), torch.ones(5), atol=1e-5)
    kept = saved["kept_index"]
    assert kept[0] is None and kept[2] is None and kept[3] is None
    assert kept[1].shape == (5, 5) and kept[1].dtype == torch.int64
    assert (kept[1][:, 0] == 0).all() and (kept[1].diff(dim=1) > 0).all()  # CLS kept, positions sorted
    # the kept tokens are the four patches the class token attends to most in block 1
    top = saved["cls_attention"][1][:, 1:].topk(4, dim=1).indices + 1
    assert torch.equal(top.sort(dim=1).values, kept[1][:, 1:])
    assert saved["tokens_per_layer"] == [17, 17, 5, 5]
    assert saved["strategy"] == "cls_topk" and saved["params"] == {"keep": 4, "start_layer": 1, "prune_layers": None, "keep_rate": None}
    assert saved["images"].shape == (5, 32, 32, 3) and saved["images"].dtype == torch.uint8
    rng = np.random.default_rng(0)  # tiny.write_webdataset draws the test images first, in order
    written = torch.from_numpy(np.stack([rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]))
    assert (saved["images"].int() - written.int()).abs().max() <= 1  # the pixels the encoder saw
    result = read(tmp_path / "zeroshot_classification_cls_topk-keep4-start_layer1.json")
    assert result["attention_output"] == str(path)


def test_attention_of_a_plain_model(monkeypatch, tmp_path, data):
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--extract_attention", "--attention_images", "3")
    saved = torch.load(tmp_path / "zeroshot_classification_baseline.attention.pt")
    assert [tuple(a.shape) for a in saved["cls_attention"]] == [(3, 17)] * 4
    assert saved["kept_index"] == [None] * 4 and saved["strategy"] is None


def test_error_at_attach_stops_before_data(monkeypatch, tmp_path, data, capsys):
    built = []
    monkeypatch.setattr(cli, "build_dataset", lambda *a, **kw: built.append(1))
    with pytest.raises(SystemExit) as stop:
        clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE, "--prune_param", "start_layer=9")
    assert stop.value.code == 2 and not built
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start_layer=9" in err[0]


def test_model_is_restored_when_the_evaluation_fails(monkeypatch, tmp_path, data, loaded):
    def broken(model, *a, **kw):
        raise RuntimeError("evaluation failed")

    monkeypatch.setattr(cli.zeroshot_classification, "evaluate", broken)
    with pytest.raises(RuntimeError, match="evaluation failed"):
        clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE)
    (model,) = loaded
    assert type(model.visual.transformer.resblocks[1]).__name__ == "ResidualAttentionBlock"
    assert not list(tmp_path.glob("*.json"))
    assert cli.load_clip.__name__ == "spy" and cli.json.__name__ == "json"  # the swapped names are back


def test_reloading_the_cli_extends_it_again():
    import importlib

    importlib.reload(cli)
    assert getattr(cli.run, "_pruning_bench", False) and getattr(cli.get_parser_args, "_pruning_bench", False)
    assert not getattr(cli.run.__wrapped__, "_pruning_bench", False)


def test_structured_strategy_through_clip_benchmark(monkeypatch, tmp_path, data):
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--measure_efficiency")
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--enable_pruning", "--prune_strategy", "head_prune",
                        "--prune_param", "head_ratio=0.5")
    (path,) = tmp_path.glob("*head_prune*.json")
    assert "calibration" not in path.name  # unset options stay out of the name
    pruned, base = read(path), read(tmp_path / "zeroshot_classification_baseline.json")
    assert pruned["pruning"]["params"]["head_ratio"] == 0.5
    assert pruned["pruning"]["stats"]["heads_per_layer"] == [2] * 4  # 4 heads of width 16, half kept
    # per-neuron importances stay in handle.stats(), out of the file; the per-block totals stay in
    assert "mlp_importance" not in pruned["pruning"]["stats"]
    assert pruned["pruning"]["stats"]["heads_total_per_layer"] == [4] * 4
    from pruning_bench.report.layers import structure_frame, structure_of

    frame = structure_frame(structure_of(pruned))
    assert frame["head_sparsity"].tolist() == [0.5] * 4 and frame["mlp_hidden_total"].notna().all()
    assert pruned["efficiency"]["tokens_per_layer"] == [17] * 4
    assert pruned["efficiency"]["gmacs"] < base["efficiency"]["gmacs"]


def test_data_driven_importance_is_calibrated_on_the_training_split(monkeypatch, tmp_path, data):
    from clip_benchmark.datasets import builder

    splits = []
    real_build = builder.build_dataset

    def spy(*a, **kw):
        splits.append(kw.get("split"))
        return real_build(*a, **kw)

    monkeypatch.setattr(builder, "build_dataset", spy)  # what the calibration reads
    monkeypatch.setattr(cli, "build_dataset", spy)  # what clip_benchmark evaluates
    clip_benchmark_eval(monkeypatch, data, tmp_path, "--enable_pruning", "--prune_strategy", "layer_drop",
                        "--prune_param", "keep_layers=2", "--prune_calibration", "5")
    (path,) = tmp_path.glob("*layer_drop*.json")
    pruning = read(path)["pruning"]
    assert "calibration" not in path.name and "calibration" not in pruning["requested"]
    assert "calibration: the first 5 images of the train split" in pruning["notes"]
    assert pruning["params"]["calibration"]["images"] == 5  # what the strategy actually scored on
    assert len(pruning["stats"]["layers_kept"]) == 2
    assert splits == ["train", "test"]  # calibrated on training images before the evaluated split is read


@pytest.mark.parametrize("extra, message", [
    (["--prune_calibration", "0"], "--prune_calibration=0 must be at least 1"),
    (["--train_split", "test"], "is the evaluated split"),
])
def test_bad_calibration_requests_stop_the_run(monkeypatch, tmp_path, data, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        clip_benchmark_eval(monkeypatch, data, tmp_path, "--enable_pruning", "--prune_strategy", "head_prune",
                            "--prune_param", "importance=activation", *extra)
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.glob("*.json"))


def test_a_failing_memory_tracker_is_recorded_not_fatal(monkeypatch, tmp_path, data):
    from pruning_bench.measure import memory

    def broken(*a, **kw):
        raise RuntimeError("tracker unavailable")

    monkeypatch.setattr(memory, "measure_memory", broken)
    monkeypatch.setattr(pb, "measure_memory", broken, raising=False)
    clip_benchmark_eval(monkeypatch, data, tmp_path, *PRUNE)
    result = read(tmp_path / "zeroshot_classification_cls_topk-keep4-start_layer1.json")
    assert result["efficiency"]["memory"] == {"error": "RuntimeError: tracker unavailable"}
    assert result["efficiency"]["gmacs"] > 0 and "acc1" in result["metrics"]
