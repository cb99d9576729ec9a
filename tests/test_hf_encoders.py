"""transformers DINOv2 (with and without registers), ViT and DeiT: built by hub name offline, pruned,
saved and loaded back (the strategy x family contract runs on them in test_contract.py)."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_hf_encoder
from pruning_bench.cli import main
from pruning_bench.evaluate.models import load_model
from pruning_bench.families import encode, locate


def test_a_hub_name_builds_offline_from_known_dims_and_says_so(capsys):
    loaded = load_model("hf:facebook/dinov2-with-registers-small", None, image_size=56, check=False)
    family = locate(loaded.model)
    dims = family.dims()
    assert family.name == "hf_dinov2_registers" and family.n_prefix == 5  # class token + 4 registers
    assert (dims.embed_dim, dims.depth, dims.patch_size) == (384, 12, (14, 14))
    assert family.block_widths() == ([6] * 12, [1536] * 12)
    assert loaded.image_size == (56, 56) and loaded.pretrained == "none"
    assert "built from its configuration as written in pruning_bench.evaluate.hf_models.KNOWN" in capsys.readouterr().err
    x = loaded.transform(__import__("PIL.Image", fromlist=["Image"]).new("RGB", (80, 60)))
    assert x.shape == (3, 56, 56)
    with pytest.raises(ValueError, match="no configuration in the local Hugging Face cache"):
        load_model("hf:nobody/nothing", None, check=False)


def test_pruning_bench_eval_runs_a_distilled_deit_by_name(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    torch.manual_seed(0)
    for i in range(3):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    out = tmp_path / "out"
    argv = ["eval", "--model", "hf:facebook/deit-tiny-distilled-patch16-224", "--img_size", "64",
            "--model_arg", "num_hidden_layers=3", "--dataset", str(folder), "--no_progress", "--throughput_repeats", "1",
            "--output", str(out / "{task}_{pruning}.json"), "--enable_pruning", "--prune_strategy", "tome",
            "--prune_param", "r=2"]
    assert main(argv) == 0
    (path,) = out.glob("fidelity_tome*.json")
    result = json.loads(path.read_text())
    assert result["pruning"]["stats"]["tokens_per_layer"] == [18, 16, 14]  # 16 patches + class + distillation


LOAD_AND_RUN = """
import sys, torch, pruning_bench as pb
from pruning_bench.families import locate
x = torch.load(sys.argv[1], weights_only=True)
model = pb.load_pruned(sys.argv[2])
with torch.no_grad():
    torch.save(locate(model).features(x), sys.argv[2] + ".out.pt")
print(type(model).__name__, locate(model).block_widths())
"""


@pytest.mark.parametrize("kind,strategy,params", [
    ("dinov2_registers", "head_prune", dict(head_ratio=0.5, mlp_ratio=0.3)),
    ("vit", "layer_drop", dict(drop=[1, 2])),
    ("deit_distilled", "head_prune", dict(head_ratio=0.25, mlp_ratio=0.5, scope="layerwise")),
])
def test_pruned_transformers_models_save_and_reload_bit_identical(tmp_path, kind, strategy, params):
    model = tiny_hf_encoder(kind, **({"num_register_tokens": 4, "use_swiglu_ffn": True} if kind == "dinov2_registers" else {}))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with pb.prune(model, strategy, **params) as handle, torch.no_grad():
        widths = (handle.stats()["heads_per_layer"], handle.stats()["mlp_hidden_per_layer"])
        expected = encode(model, x)
        architecture = pb.save_pruned(model, tmp_path / "m.safetensors")
    assert architecture["family"] == "transformers" and architecture["model_class"] == type(model).__name__
    torch.save(x, tmp_path / "x.pt")
    done = subprocess.run([sys.executable, "-c", LOAD_AND_RUN, str(tmp_path / "x.pt"), str(tmp_path / "m.safetensors")],
                          capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == type(model).__name__
    got = torch.load(tmp_path / "m.safetensors.out.pt", weights_only=True)
    assert torch.equal(got[0], expected[0])
    assert (got[1] is None) == (expected[1] is None) and (got[1] is None or torch.equal(got[1], expected[1]))
    assert str(list(widths)).replace(" ", "") in done.stdout.replace(" ", "").replace("(", "[").replace(")", "]")


def test_a_distilled_deit_gets_a_new_head_for_fine_tuning():
    from pruning_bench.evaluate.finetune import new_head

    model = tiny_hf_encoder("deit_distilled")
    new_head(model, 3, seed=0)
    with torch.no_grad():
        assert model(pixel_values=torch.randn(2, 3, 32, 32)).logits.shape == (2, 3)
    with pytest.raises(ValueError, match="classifier"):
        new_head(tiny_hf_encoder("dinov2"), 3, seed=0)
