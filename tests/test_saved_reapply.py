"""A saved token-pruned model stays pruned: the file records the token strategy, loading re-applies it.

`pb.load_pruned` (reapply=True by default), `pruning-bench eval --pretrained PATH` and `clip_benchmark eval
--pretrained PATH` put the recorded strategy back, say so in one line, and record it in the result; the
opt-out (`reapply=False`, `--prune_no_reapply`) is recorded too, so the report never calls that run a baseline.
"""
import json
import sys
import warnings

import open_clip
import pytest
import torch
from clip_benchmark import cli as clip_benchmark_cli
from conftest import tiny_timm

import pruning_bench as pb
import tiny_clip as tiny
from pruning_bench.report import load_results

warnings.filterwarnings("ignore", message=".*shardshuffle.*")


def saved_with_tome(path, model, **kw):
    with pb.prune(model, "tome", r=2), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        pb.save_pruned(model, path, **kw)
    return path


def test_load_pruned_reapplies_the_recorded_token_strategy(tmp_path):
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = tiny_timm()
    with torch.no_grad():
        plain = model(images)
        with pb.prune(model, "tome", r=2) as handle:
            live, tokens = model(images), handle.stats()["tokens_per_layer"]
    path = saved_with_tome(tmp_path / "tome.safetensors", model)
    loaded = pb.load_pruned(path)
    with torch.no_grad():
        assert torch.equal(loaded(images), live) and not torch.equal(live, plain)
    assert loaded.pb_token_handle.stats()["tokens_per_layer"] == tokens
    loaded.pb_token_handle.restore()
    with torch.no_grad():
        assert torch.equal(loaded(images), plain)
        assert torch.equal(pb.load_pruned(path, reapply=False)(images), plain)


@pytest.fixture(scope="module")
def name(tmp_path_factory):
    return tiny.register_tiny_clip(tmp_path_factory.mktemp("config"))


def clip_benchmark_eval(monkeypatch, dataset, out, model, pretrained, *extra):
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", dataset, "--model", model,
            "--pretrained", pretrained, "--task", "zeroshot_classification", "--batch_size", "4", "--num_workers", "0",
            "--no_amp", "--quiet", "--throughput_repeats", "1", "--output", str(out / "{pruning}.json"), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    clip_benchmark_cli.main()


def test_clip_benchmark_reapplies_a_saved_token_strategy_and_records_it(monkeypatch, tmp_path, name, capsys):
    dataset = str(tiny.write_webdataset(tmp_path / "cls"))
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None).eval()
    path = saved_with_tome(tmp_path / "tome.safetensors", model, model_name=name)
    clip_benchmark_eval(monkeypatch, dataset, tmp_path / "live", name, str(path))
    err = capsys.readouterr().err
    assert sum("re-applied" in line for line in err.splitlines()) == 1 and "tome" in err
    [result] = [json.loads(p.read_text()) for p in (tmp_path / "live").glob("*.json")]
    assert result["pruning"]["strategy"] == "tome" and result["pruning"]["params"]["r"] == 2
    assert result["pruning"]["reapplied_from"] == str(path)
    assert result["efficiency"]["tokens_per_layer"] == [17, 15, 13, 11]  # ToMe merges 2 per block again
    clip_benchmark_eval(monkeypatch, dataset, tmp_path / "bare", name, str(path), "--prune_no_reapply")
    assert "evaluated without it" in capsys.readouterr().err
    [bare] = [json.loads(p.read_text()) for p in (tmp_path / "bare").glob("*.json")]
    assert bare.get("pruning") is None and bare["token_strategy_not_applied"]["strategy"] == "tome"
    strategies = set(load_results([tmp_path / "live", tmp_path / "bare"])["strategy"])
    assert strategies == {"tome", "none (saved with tome, not re-applied)"}  # neither is called baseline
    with pytest.raises(SystemExit):
        clip_benchmark_eval(monkeypatch, dataset, tmp_path / "x", name, str(path), "--enable_pruning",
                            "--prune_strategy", "cls_topk", "--prune_param", "keep=4")
    assert "--prune_no_reapply" in capsys.readouterr().err


def test_pruning_bench_eval_reapplies_a_saved_token_strategy(tmp_path, capsys):
    from pruning_bench.cli import main
    from colour_webdataset import write_colour_webdataset

    root = write_colour_webdataset(tmp_path / "wds", n_train=9, n_test=6, classes=3)
    path = saved_with_tome(tmp_path / "tome.safetensors", tiny_timm(num_classes=0))
    common = ["--model", "vit", "--pretrained", str(path), "--dataset", "wds/colours", "--dataset_root", str(root),
              "--task", "probe", "--train_samples", "9", "--batch_size", "4", "--throughput_repeats", "1",
              "--efficiency_batch_size", "2", "--no_progress"]
    assert main(["eval", *common, "--output", str(tmp_path / "a" / "{pruning}.json")]) == 0
    assert "re-applied" in capsys.readouterr().err
    [result] = [json.loads(p.read_text()) for p in (tmp_path / "a").glob("*.json")]
    assert result["pruning"]["strategy"] == "tome" and result["pruning"]["reapplied_from"] == str(path)
    assert result["efficiency"]["tokens_per_layer"] == [65, 63, 61, 59]
    assert main(["eval", *common, "--prune_no_reapply", "--output", str(tmp_path / "b" / "{pruning}.json")]) == 0
    [bare] = [json.loads(p.read_text()) for p in (tmp_path / "b").glob("*.json")]
    assert bare["pruning"] is None and bare["token_strategy_not_applied"]["strategy"] == "tome"
    assert set(load_results([tmp_path / "b"])["strategy"]) == {"none (saved with tome, not re-applied)"}
