"""pb.save_pruned / pb.load_pruned: a compact model comes back bit-identical in a fresh process, never unpickled."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm

LOAD_AND_RUN = """
import sys, torch, pruning_bench as pb
x = torch.load(sys.argv[1], weights_only=True)
for path in sys.argv[2:]:
    model = pb.load_pruned(path)
    with torch.no_grad():
        torch.save(model(x), path + ".out.pt")
    print(path, [b.attn.num_heads for b in model.blocks], len(model.blocks))
"""


def outputs_in_new_process(paths: list[Path], images: torch.Tensor, tmp_path: Path):
    """Each saved model's outputs on `images`, computed by a fresh Python process that only loads the files."""
    torch.save(images, tmp_path / "x.pt")
    done = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "x.pt"), *map(str, paths)],
                          capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    return [torch.load(f"{p}.out.pt", weights_only=True) for p in paths], lines


@pytest.fixture
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def save_head_pruned(tmp_path, images):
    """Global ranking: blocks keep different head counts."""
    model = tiny_timm()
    calibration = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))]
    with pb.prune(model, "head_prune", head_ratio=0.4, mlp_ratio=0.3, scope="global", importance="fisher",
                  calibration=calibration) as handle, torch.no_grad():
        heads = handle.stats()["heads_per_layer"]
        expected = model(images)
        architecture = pb.save_pruned(model, tmp_path / "head.safetensors")
    assert len(set(heads)) > 1 and architecture["heads_per_block"] == heads
    raw = (tmp_path / "head.safetensors").read_bytes()  # safetensors: a JSON header, then raw tensor bytes
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header.pop("__metadata__")["pruning_bench"])["heads_per_block"] == heads
    assert all(set(entry) == {"dtype", "shape", "data_offsets"} for entry in header.values())  # nothing pickled
    return tmp_path / "head.safetensors", expected, f"{heads} 4"


def save_layer_dropped(tmp_path, images):
    model = tiny_timm(depth=5, init_values=0.1, reg_tokens=2)
    with pb.prune(model, "layer_drop", drop=[1, 3]), torch.no_grad():
        expected = model(images)
        architecture = pb.save_pruned(model, tmp_path / "drop.safetensors")
    assert architecture["blocks_kept"] == [0, 2, 4]
    return tmp_path / "drop.safetensors", expected, "[4, 4, 4] 3"


def save_tome_fine_tuned(tmp_path, images):
    model = tiny_timm().train()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    with pb.prune(model, "tome", r=4):
        for _ in range(2):
            loss = model(images).logsumexp(1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            architecture = pb.save_pruned(model.eval(), tmp_path / "live.safetensors")
        assert architecture["token_strategy"]["strategy"] == "tome"
        assert any("runs without it" in str(w.message) for w in caught)
    pb.save_pruned(model, tmp_path / "tome.safetensors")
    with torch.no_grad():
        expected = model(images)
        assert not torch.equal(expected, tiny_timm()(images))  # the training changed the weights
        assert torch.equal(pb.load_pruned(tmp_path / "live.safetensors", reapply=False)(images), expected)
    return tmp_path / "tome.safetensors", expected, "[4, 4, 4, 4] 4"


def test_saved_models_reload_bit_identical_in_a_new_process(tmp_path, images):
    saved = [save(tmp_path, images) for save in (save_head_pruned, save_layer_dropped, save_tome_fine_tuned)]
    outputs, printed = outputs_in_new_process([p for p, _, _ in saved], images, tmp_path)
    for (path, expected, shape), got, line in zip(saved, outputs, printed):
        assert torch.equal(got, expected), path.name
        assert line == f"{path} {shape}"


def test_unsupported_model_is_refused_before_writing(tmp_path):
    with pytest.raises(pb.UnsupportedModelError, match="timm VisionTransformer"):
        pb.save_pruned(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


def test_eval_saves_and_loads_a_pruned_model(tmp_path):
    from pruning_bench.cli import main
    from colour_webdataset import write_colour_webdataset

    root = write_colour_webdataset(tmp_path / "wds", n_train=8, n_test=4, classes=2)
    common = ["--dataset", "wds/colours", "--dataset_root", str(root), "--task", "finetune", "--epochs", "1",
              "--batch_size", "4", "--throughput_repeats", "1", "--efficiency_batch_size", "2", "--no_progress"]
    saved = tmp_path / "m.safetensors"
    assert main(["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
                 "--model_arg", "patch_size=8", "--model_arg", "depth=2", "--model_arg", "embed_dim=48",
                 "--model_arg", "num_heads=3", *common, "--enable_pruning", "--prune_strategy", "head_prune",
                 "--prune_param", "head_ratio=0.34", "--save_model", str(saved),
                 "--output", str(tmp_path / "a" / "{pruning}.json")]) == 0
    (result,) = (tmp_path / "a").glob("*.json")
    first = json.loads(result.read_text())
    assert first["saved_model"]["heads_per_block"] == [2, 2]
    from pruning_bench.evaluate.models import load_model

    loaded = load_model("vit_tiny_patch16_224", str(saved), check=False)
    assert [b.attn.num_heads for b in loaded.model.blocks] == [2, 2] and loaded.model.num_classes == 2
