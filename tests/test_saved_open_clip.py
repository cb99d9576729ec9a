"""pb.save_pruned / pb.load_pruned on open_clip CLIP models: the whole model (text tower included) comes back
bit-identical in a fresh process, through `pruning-bench eval --pretrained` and `clip_benchmark eval --pretrained`."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from clip_benchmark import cli as clip_benchmark_cli
from safetensors import safe_open
from safetensors.torch import save_file

import pruning_bench as pb
from conftest import tiny_open_clip
import tiny_clip as tiny

warnings.filterwarnings("ignore", message=".*shardshuffle.*")

# The loading process knows nothing of the tiny config at first (a fresh machine: the model is built from the
# config recorded in the file); then it registers the config and loads again (open_clip.create_model(name)).
LOAD_AND_RUN = """
import json, sys, torch, open_clip, pruning_bench as pb
x, tokens = torch.load(sys.argv[1], weights_only=True)
config, paths = sys.argv[2], sys.argv[3:]
for registered in (False, True):
    if registered:
        open_clip.add_model_config(config)
    assert (open_clip.get_model_config("pb-tiny-vit") is not None) == registered
    for path in paths:
        model = pb.load_pruned(path)
        with torch.no_grad():
            torch.save((model.encode_image(x), model.encode_text(tokens)), f"{path}.{registered}.out.pt")
        blocks = model.visual.transformer.resblocks
        print(json.dumps([registered, [b.attn.num_heads for b in blocks], [b.mlp.c_fc.out_features for b in blocks],
                          blocks.pb_kept_indices]))
"""


@pytest.fixture(scope="module")
def name(tmp_path_factory):
    return tiny.register_tiny_clip(tmp_path_factory.mktemp("config"))


def tiny_clip(name):
    torch.manual_seed(0)
    return open_clip.create_model(name, pretrained=None).eval()


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 32, 32, generator=generator), torch.randint(0, 49408, (3, 77), generator=generator)


def encode(model, inputs):
    with torch.no_grad():
        return model.encode_image(inputs[0]), model.encode_text(inputs[1])


def calibration():
    return [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))]


def save_head_pruned(tmp_path, name, inputs):
    """Global ranking: blocks keep different head counts (and MLP widths)."""
    model = tiny_clip(name)
    with pb.prune(model, "head_prune", head_ratio=0.4, mlp_ratio=0.3, scope="global", importance="fisher",
                  calibration=calibration()) as handle:
        stats = handle.stats()
        expected = encode(model, inputs)
        record = pb.save_pruned(model, tmp_path / "head.safetensors", model_name=name)
    assert len(set(stats["heads_per_layer"])) > 1 and record["heads_per_block"] == stats["heads_per_layer"]
    assert record["family"] == "open_clip" and record["open_clip_model"] == name
    return tmp_path / "head.safetensors", expected, [stats["heads_per_layer"], stats["mlp_hidden_per_layer"], [0, 1, 2, 3]]


def save_layer_dropped(tmp_path, name, inputs):
    model = tiny_clip(name)
    with pb.prune(model, "layer_drop", drop=[1, 2]):
        expected = encode(model, inputs)
        record = pb.save_pruned(model, tmp_path / "drop.safetensors", model_name=name)
    assert record["blocks_kept"] == [0, 3]
    return tmp_path / "drop.safetensors", expected, [[4, 4], [256, 256], [0, 3]]


def save_mlp_pruned_fine_tuned(tmp_path, name, inputs):
    """MLP neurons cut layer-wise, then a few training steps with the slices in place."""
    model = tiny_clip(name).train()
    with pb.prune(model, "head_prune", head_ratio=0.0, mlp_ratio=0.5, scope="layerwise") as handle:
        optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            loss = model.encode_image(inputs[0]).square().mean() + model.encode_text(inputs[1]).square().mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        model.eval()
        expected = encode(model, inputs)
        pb.save_pruned(model, tmp_path / "mlp.safetensors", model_name=name)
        hidden = handle.stats()["mlp_hidden_per_layer"]
    assert not torch.equal(expected[1], encode(tiny_clip(name), inputs)[1])  # the training changed the text tower too
    return tmp_path / "mlp.safetensors", expected, [[4, 4, 4, 4], hidden, [0, 1, 2, 3]]


def test_saved_open_clip_models_reload_bit_identical_in_a_new_process(tmp_path, name, inputs):
    saved = [save(tmp_path, name, inputs) for save in (save_head_pruned, save_layer_dropped, save_mlp_pruned_fine_tuned)]
    torch.save(inputs, tmp_path / "inputs.pt")
    config = tmp_path / f"{name}.json"
    config.write_text(json.dumps(tiny.TINY_CLIP_CONFIG))
    done = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "inputs.pt"), str(config),
                           *(str(p) for p, _, _ in saved)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    printed = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(printed) == 2 * len(saved)
    for i, registered in enumerate((False, True)):
        for (path, expected, shape), line in zip(saved, printed[i * len(saved):]):
            image, text = torch.load(f"{path}.{registered}.out.pt", weights_only=True)
            assert torch.equal(image, expected[0]) and torch.equal(text, expected[1]), (path.name, registered)
            assert line == [registered, *shape]


def test_compact_copy_of_an_open_clip_model(name, inputs):
    model = tiny_clip(name)
    with pb.prune(model, "head_prune", head_ratio=0.5, scope="global", calibration=calibration(), importance="fisher"):
        expected = encode(model, inputs)
        copy = pb.saved.compact_copy(model, model_name=name)
    assert torch.equal(encode(copy, inputs)[0], expected[0]) and torch.equal(encode(copy, inputs)[1], expected[1])
    assert encode(model, inputs)[0].shape == expected[0].shape  # restored
    assert copy.pb_saved_architecture["open_clip_model"] == name  # so the next round saves without model_name=
    pb.saved.compact_copy(copy)


def test_the_config_name_is_required_and_unsupported_models_are_named(tmp_path, name):
    with pytest.raises(ValueError, match=r"pass model_name=NAME") as caught:
        pb.save_pruned(tiny_open_clip(), tmp_path / "a.safetensors")
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=r"model_name='no-such-config' is not an open_clip model config"):
        pb.save_pruned(tiny_open_clip(), tmp_path / "a.safetensors", model_name="no-such-config")
    with pytest.raises(pb.UnsupportedModelError, match=r"does not reproduce|cannot be rebuilt"):
        pb.save_pruned(tiny_open_clip(), tmp_path / "a.safetensors", model_name=name)  # the wrong config
    with pytest.raises(pb.UnsupportedModelError, match=r"open_clip CLIP.*got VisionTransformer$"):
        pb.save_pruned(tiny_open_clip().visual, tmp_path / "a.safetensors")  # an image tower alone: no config name
    assert not (tmp_path / "a.safetensors").exists()


def _rewrite(source: Path, target: Path, edit) -> None:
    with safe_open(str(source), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    record = json.loads(metadata["pruning_bench"])
    edit(record)
    save_file(tensors, str(target), metadata={"pruning_bench": json.dumps(record)})


def test_tampered_or_foreign_files_are_one_line_value_errors(tmp_path, name):
    model = tiny_clip(name)
    with pb.prune(model, "layer_drop", drop=[2]):
        pb.save_pruned(model, tmp_path / "good.safetensors", model_name=name)
    good = tmp_path / "good.safetensors"
    cases = {
        "text.safetensors": lambda p: p.write_text("not a model"),
        "truncated.safetensors": lambda p: p.write_bytes(good.read_bytes()[:-100]),
        "plain.safetensors": lambda p: save_file({"w": torch.zeros(2)}, str(p)),
        "heads.safetensors": lambda p: _rewrite(good, p, lambda r: r["heads_per_block"].__setitem__(0, 2)),
        "blocks.safetensors": lambda p: _rewrite(good, p, lambda r: r.__setitem__("blocks_kept", [0, 1, 9])),
        "format.safetensors": lambda p: _rewrite(good, p, lambda r: r.__setitem__("format", "other/2")),
        "family.safetensors": lambda p: _rewrite(good, p, lambda r: r.__setitem__("family", "keras")),
        "missing.safetensors": lambda p: _rewrite(good, p, lambda r: r.pop("model_cfg")),
    }
    expected = {"text": "not a safetensors file", "truncated": "", "plain": "no 'pruning_bench' metadata",
                "heads": "do not fit", "blocks": "blocks_kept", "format": "format 'other/2'",
                "family": "family 'keras'", "missing": "incomplete or malformed"}
    for file, make in cases.items():
        make(tmp_path / file)
        with pytest.raises(ValueError) as caught:
            pb.load_pruned(tmp_path / file)
        message = str(caught.value)
        assert "\n" not in message and expected[file.split(".")[0]] in message, (file, message)
        assert pb.saved.is_saved_model(tmp_path / file) == (file.split(".")[0] in ("heads", "blocks", "family", "missing"))
    pb.load_pruned(good)


def test_pruning_bench_eval_saves_and_loads_an_open_clip_model(tmp_path, name):
    from pruning_bench.cli import main
    from pruning_bench.evaluate.models import load_model
    from colour_webdataset import write_colour_webdataset

    root = write_colour_webdataset(tmp_path / "wds", n_train=9, n_test=6, classes=3)
    common = ["--dataset", "wds/colours", "--dataset_root", str(root), "--task", "probe", "--train_samples", "9",
              "--batch_size", "4", "--throughput_repeats", "1", "--efficiency_batch_size", "2", "--no_progress"]
    saved = tmp_path / "m.safetensors"
    assert main(["eval", "--model", f"open_clip:{name}", *common, "--enable_pruning", "--prune_strategy", "head_prune",
                 "--prune_param", "head_ratio=0.5", "--prune_param", "scope=global", "--save_model", str(saved),
                 "--output", str(tmp_path / "a" / "{pruning}.json")]) == 0
    (first,) = (tmp_path / "a").glob("*.json")
    record = json.loads(first.read_text())
    heads = record["saved_model"]["heads_per_block"]
    assert sum(heads) == 8 and len(set(heads)) > 1  # 8 of 16 heads, ranked globally
    assert main(["eval", "--model", name, "--pretrained", str(saved), *common,
                 "--output", str(tmp_path / "b" / "{pruning}.json")]) == 0
    (second,) = (tmp_path / "b").glob("*.json")
    result = json.loads(second.read_text())
    assert result["pretrained"] == str(saved) and result["image_size"] == [32, 32]
    assert 0 <= result["metrics"]["acc1"] <= 1
    loaded = load_model(name, str(saved), check=False)
    assert [b.attn.num_heads for b in loaded.model.visual.transformer.resblocks] == heads
    assert main(["eval", "--model", name, "--pretrained", str(saved), "--img_size", "64", *common]) == 2


def clip_benchmark_eval(monkeypatch, dataset, out, model, pretrained, *extra):
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", dataset, "--model", model,
            "--pretrained", pretrained, "--task", "zeroshot_classification", "--batch_size", "4", "--num_workers", "0",
            "--no_amp", "--quiet", "--output", str(out / "{pretrained}_{pruning}.json"), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    clip_benchmark_cli.main()


def test_clip_benchmark_evaluates_a_saved_open_clip_model(monkeypatch, tmp_path, name, capsys):
    dataset = str(tiny.write_webdataset(tmp_path / "cls"))
    model = tiny_clip(name)
    with pb.prune(model, "layer_drop", drop=[1, 2]):
        pb.save_pruned(model, tmp_path / "dropped.safetensors", model_name=name)
    out = tmp_path / "out"
    clip_benchmark_eval(monkeypatch, dataset, out / "full", name, "", "--measure_efficiency")
    clip_benchmark_eval(monkeypatch, dataset, out / "dropped", name, str(tmp_path / "dropped.safetensors"),
                        "--measure_efficiency")
    clip_benchmark_eval(monkeypatch, dataset, out / "plain", name, str(tmp_path / "dropped.safetensors"))
    (full,), (dropped,), (plain,) = ([json.loads(p.read_text()) for p in (out / run).glob("*.json")]
                                     for run in ("full", "dropped", "plain"))
    assert len(dropped["efficiency"]["tokens_per_layer"]) == 2 and len(full["efficiency"]["tokens_per_layer"]) == 4
    assert dropped["efficiency"]["gmacs"] < full["efficiency"]["gmacs"]
    assert "acc1" in dropped["metrics"] and plain["metrics"] == dropped["metrics"] and "efficiency" not in plain
    timm_file = tmp_path / "timm.safetensors"
    from conftest import tiny_timm

    pb.save_pruned(tiny_timm(img_size=32), timm_file)
    for model_name, path, message in ((name, timm_file, "pruning-bench eval --pretrained"),
                                      ("ViT-B-32", tmp_path / "dropped.safetensors", f"(give --model {name})")):
        with pytest.raises(SystemExit):
            clip_benchmark_eval(monkeypatch, dataset, out, model_name, str(path))
        assert message in capsys.readouterr().err


def test_clip_benchmark_saves_the_pruned_model_it_evaluated(monkeypatch, tmp_path, name, capsys):
    dataset = str(tiny.write_webdataset(tmp_path / "cls"))
    out, saved = tmp_path / "out", tmp_path / "models" / "heads.safetensors"
    clip_benchmark_eval(monkeypatch, dataset, out / "pruned", name, "", "--enable_pruning",
                        "--prune_strategy", "head_prune", "--prune_param", "head_ratio=0.5",
                        "--prune_param", "mlp_ratio=0.25", "--prune_save_model", str(saved))
    (pruned,) = [json.loads(p.read_text()) for p in (out / "pruned").glob("*.json")]
    assert pruned["saved_model"]["path"] == str(saved) and saved.is_file()  # its folder was created first
    original = [b.attn.num_heads for b in tiny_clip(name).visual.transformer.resblocks]
    assert pruned["saved_model"]["heads_per_block"] == [h - h // 2 for h in original]  # half the heads, per block
    assert pruned["saved_model"]["token_strategy"] is None
    clip_benchmark_eval(monkeypatch, dataset, out / "reloaded", name, str(saved))
    (reloaded,) = [json.loads(p.read_text()) for p in (out / "reloaded").glob("*.json")]
    assert reloaded["metrics"] == pruned["metrics"]  # the saved model evaluates exactly as the pruned one did
    for extra, message in ((["--prune_save_model", str(saved)], "without --enable_pruning"),
                           (["--enable_pruning", "--prune_save_model", str(tmp_path / "m.pt")], "must end in .safetensors")):
        with pytest.raises(SystemExit):
            clip_benchmark_eval(monkeypatch, dataset, out / "bad", name, "", *extra)
        assert message in capsys.readouterr().err
