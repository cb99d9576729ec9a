"""Bad input gives one line naming the culprit (exit 2 on the command line), before any expensive work."""
import json
import math
import warnings

import pytest
import torch

import pruning_bench as pb
from pruning_bench.cli import main
from tests.conftest import tiny_timm


def one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "Warning" not in line and line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"pruning-bench {command}: error: "), err
    return lines[0]


# ---------------------------------------------------------------- strategies


@pytest.mark.parametrize("strategy", ["random_drop", "cls_topk"])
def test_keep_zero_refused_where_the_output_pools_patch_tokens(strategy):
    model = tiny_timm(global_pool="avg", depth=2)
    with pytest.raises(ValueError, match=rf"{strategy}: keep=0 leaves no patch token.*keep is out of range \[1"):
        pb.prune(model, strategy, keep=0)
    assert type(model.blocks[0]).__name__ == "Block"  # nothing was patched
    with pb.prune(tiny_timm(depth=2), strategy, keep=0):  # class-token pooling: only the class token is needed
        pass


def test_keep_zero_refused_without_a_class_token():
    model = tiny_timm(class_token=False, global_pool="avg", depth=3)
    with pytest.raises(ValueError, match="keep=0"):
        pb.prune(model, "random_drop", keep=0)
    with pb.prune(model, "random_drop", keep=1) as h:
        out = model(torch.randn(2, 3, 32, 32))
    assert h.stats()["tokens_per_layer"][-1] == 1 and not out.isnan().any()


@pytest.mark.parametrize("strategy", ["random_drop", "tome"])
def test_seed_beyond_torch_generators_is_refused_at_once(strategy):
    with pytest.raises(ValueError, match=rf"{strategy}: seed=9223372036854775808 is out of range \[0, 9223372036854775807\]"):
        pb.prune(tiny_timm(depth=2), strategy, seed=2**63)


@pytest.mark.parametrize("calibration", [5, "images", torch.randn(3, 32, 32)])
def test_calibration_that_is_not_batches_is_refused(calibration):
    with pytest.raises(ValueError, match="calibration must be an iterable of image batches"):
        pb.prune(tiny_timm(depth=2), "head_prune", head_ratio=0.5, importance="fisher", calibration=calibration)


def test_calibration_images_of_the_wrong_size_are_named_as_calibration():
    model = tiny_timm(depth=2)
    wrong = [torch.randn(2, 3, 48, 48)]
    with pytest.raises(ValueError, match=r"head_prune: the model failed on calibration batch 0 \(shape \(2, 3, 48, 48\)\)"):
        pb.prune(model, "head_prune", head_ratio=0.5, importance="fisher", calibration=wrong)
    with pytest.raises(ValueError, match=r"layer_drop: the model failed on calibration batch 0"):
        pb.prune(model, "layer_drop", keep_layers=1, importance="cosine", calibration=iter(wrong))


def test_short_tome_r_list_is_warned_and_recorded(tmp_path, capsys):
    with pytest.warns(UserWarning, match=r"r has 1 entries for a 2-block model; blocks 1-1 merge nothing"):
        pb.prune(tiny_timm(depth=2), "tome", r=[2]).restore()


def test_count_flops_refuses_none_and_unbatched_images():
    model = tiny_timm(depth=2)
    with pytest.raises(ValueError, match=r"images must be a tensor of shape \(B, C, H, W\), got NoneType"):
        pb.count_flops(model, None)
    with pytest.raises(ValueError, match=r"got \(3, 32, 32\) \(one image: add the batch dimension"):
        pb.count_flops(model, torch.randn(3, 32, 32))


def test_batchnorm_buffers_are_fingerprinted():
    """A hybrid ViT (ResNet stem with BatchNorm: 0-d num_batches_tracked buffers) gets a feature-cache key."""
    import timm

    from pruning_bench.evaluate.models import LoadedModel

    model = timm.create_model("vit_small_resnet26d_224", pretrained=False, depth=1, img_size=64).eval()
    assert any(b.ndim == 0 for b in model.buffers())
    loaded = LoadedModel(model, None, "hybrid", "none", (64, 64))
    assert len(loaded.fingerprint()) == 40
    next(b for b in model.buffers() if b.ndim == 0).add_(1)
    assert len(loaded.fingerprint()) == 40


# ---------------------------------------------------------------- report / leaderboard


def result(path, **over):
    data = {"dataset": "wds/cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
            "language": "en", "metrics": {"acc1": 0.5}, "pruning": None,
            "efficiency": {"gmacs": 4.0, "images_per_second": 10.0, "batch_size": 8}}
    data.update(over)
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("content, reason", [
    ("", "is empty"),
    ('{"dataset": "x", "metrics": {"acc1"', "is not valid JSON"),
    ('{"name": "package.json of something else"}', "lacks the key(s) dataset, model, task, metrics"),
    ("[1, 2, 3]", "holds a JSON list"),
])
@pytest.mark.parametrize("command", ["report", "leaderboard"])
def test_unusable_result_files_are_named_and_skipped(tmp_path, capsys, content, reason, command):
    result(tmp_path / "base.json")
    (tmp_path / "bad.json").write_text(content)
    assert main([command, str(tmp_path), "-o", str(tmp_path / "out" / "r")]) == 0
    err = capsys.readouterr().err
    assert f"pruning-bench {command}: warning: skipped {tmp_path / 'bad.json'} " in err and reason in err
    assert "Traceback" not in err
    (tmp_path / "base.json").unlink()
    assert main([command, str(tmp_path / "bad.json"), "-o", str(tmp_path / "out" / "r")]) == 2
    assert str(tmp_path / "bad.json") in one_error_line(capsys, command)


@pytest.mark.parametrize("over, key", [
    ({"metrics": "high"}, "'metrics' is str"),
    ({"efficiency": [1, 2]}, "'efficiency' is list"),
    ({"efficiency": {"gmacs": "four"}}, "'efficiency.gmacs' is str"),
    ({"pruning": "tome"}, "'pruning' is str"),
    ({"model": 3}, "'model' is int"),
])
def test_wrong_types_are_refused_with_the_key_named(tmp_path, capsys, over, key):
    result(tmp_path / "typed.json", **over)
    assert main(["report", str(tmp_path / "typed.json"), "-o", str(tmp_path / "r")]) == 2
    assert key in one_error_line(capsys, "report")


@pytest.mark.parametrize("command", ["report", "leaderboard"])
def test_output_into_an_impossible_place_is_one_line(tmp_path, capsys, command):
    result(tmp_path / "base.json")
    (tmp_path / "file").write_text("not a folder")
    assert main([command, str(tmp_path / "base.json"), "-o", str(tmp_path / "file" / "sub" / "r")]) == 2
    assert "cannot create the folder" in one_error_line(capsys, command)


# ---------------------------------------------------------------- pruning-bench eval / visualize

TINY = ["--pretrained", "none", "--img_size", "32", "--model_arg", "patch_size=8", "--model_arg", "embed_dim=48",
        "--model_arg", "num_heads=3", "--dataset", "sample_images", "--task", "fidelity", "--test_samples", "2",
        "--batch_size", "2", "--efficiency_batch_size", "1", "--throughput_repeats", "1", "--no_progress"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "no_such_model"], "--model 'no_such_model' is neither `reference` nor a timm model name"),
    (["--model", "vit_tiny_patch16_224", "--model_arg", "depth=abc"], "does not accept the arguments given"),
    (["--model", "vit_tiny_patch16_224", "--model_arg", "depth=2", "--model_arg", "depth=3"],
     "--model_arg depth is given twice"),
    (["--model", "vit_tiny_patch16_224", "--model_arg", "depth=2", "--enable_pruning", "--prune_strategy",
      "random_drop", "--prune_param", "start_layer=5"], "start_layer=5 is out of range [0, 1] for a 2-block model"),
    (["--model", "vit_tiny_patch16_224", "--model_arg", "depth=2", "--model_arg", "global_pool=avg",
      "--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=0"], "keep=0 leaves no patch token"),
    (["--model", "resnet18", "--enable_pruning", "--prune_strategy", "tome"], "cannot patch ResNet"),
    (["--model", "vit_tiny_patch16_224", "--seed", str(2**63)], "--seed=9223372036854775808 is out of range"),
])
def test_pruning_bench_eval_bad_input_is_one_line(tmp_path, capsys, argv, message):
    argv = ["eval", *TINY, *argv, "--output", str(tmp_path / "r_{pruning}.json")]
    if "resnet18" in argv:
        argv = [a for a in argv if a not in ("--img_size", "32")]
        argv = [a for i, a in enumerate(argv) if not (a.startswith(("patch_size", "embed_dim", "num_heads")) or
                                                      (a == "--model_arg" and argv[i + 1].startswith(("patch", "embed", "num_h"))))]
    assert main(argv) == 2
    assert message in one_error_line(capsys, "eval")
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.parametrize("argv, message", [
    (["--attention_file", "JUNK"], "is not an attention file written by --extract_attention"),
    (["--model", "no_such_model", "--dataset", "sample_images"], "is neither `reference` nor a timm model name"),
    (["--model", "open_clip:NoSuchNet", "--dataset", "sample_images"], "is not an open_clip model"),
    (["--model", "vit_tiny_patch16_224", "--dataset", "sample_images", "--n_images", "0"], "--n_images=0 must be at least 1"),
])
def test_visualize_bad_input_is_one_line(tmp_path, capsys, argv, message):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01 not a torch file")
    argv = [str(junk) if a == "JUNK" else a for a in argv]
    assert main(["visualize", *argv, "-o", str(tmp_path / "maps.png")]) == 2
    assert message in one_error_line(capsys, "visualize")
    assert not (tmp_path / "maps.png").exists()


def test_output_folders_checked_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["eval", "--model", "no_such_model", "--dataset", "sample_images",
                 "--output", str(tmp_path / "file" / "sub" / "{pruning}.json")]) == 2
    assert "cannot create the folder" in one_error_line(capsys, "eval")  # before the unknown model is noticed
    assert main(["visualize", "--model", "vit_tiny_patch16_224", "--dataset", "sample_images",
                 "-o", str(tmp_path / "file" / "maps.png")]) == 2
    assert "cannot create the folder" in one_error_line(capsys, "visualize")


def test_eval_skip_existing_reruns_an_incomplete_result(tmp_path, capsys):
    out = tmp_path / "r_{pruning}.json"
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--model_arg", "depth=1", *TINY, "--output", str(out),
            "--skip_existing"]
    target = tmp_path / "r_baseline.json"
    target.write_text('{"dataset": "sample_images", "metrics": {"cos')
    assert main(argv) == 0
    assert "not a finished run, running it again" in capsys.readouterr().err
    data = json.loads(target.read_text())
    assert data["metrics"] and not math.isnan(data["metrics"]["cosine"] if "cosine" in data["metrics"] else 0.0)
    assert main(argv) == 0 and "exists, skipped" in capsys.readouterr().err
