"""A model presented as pretrained whose weights are a fresh init is flagged by `pruning-bench eval`."""
import json
import warnings

import pytest
import timm
import torch

from pruning_bench.cli import main
from pruning_bench.evaluate.models import RandomInitWarning, load_model

ARGS = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)


def test_eval_warns_when_a_pretrained_checkpoint_is_random_init(tmp_path):
    torch.manual_seed(0)
    checkpoint = tmp_path / "vit_pretrained_init.pth"
    torch.save({"state_dict": timm.create_model("vit_tiny_patch16_224", **ARGS).state_dict()}, checkpoint)
    out = tmp_path / "out"
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", str(checkpoint), "--img_size", "32",
            "--model_arg", "patch_size=8", "--model_arg", "depth=2", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3", "--dataset", "sample_images", "--no_progress",
            "--throughput_repeats", "1", "--output", str(out / "{pretrained}_{task}.json")]
    with pytest.warns(RandomInitWarning, match="looks randomly initialised"):
        assert main(argv) == 0
    result = json.loads((out / "vit_pretrained_init.pth_fidelity.json").read_text())
    check = result["checkpoint_check"]
    assert check["looks_random"] and check["claimed_pretrained"] and "warning" in check
    assert check["evidence"]


def test_no_warning_for_deliberate_random_init_or_trained_weights(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomInitWarning)
        loaded = load_model("vit_tiny_patch16_224", "none", image_size=32, model_args=ARGS)
    assert loaded.checkpoint["looks_random"] and not loaded.checkpoint["claimed_pretrained"]
    # Weights that moved away from init (heavy-tailed, norms off 1/0) pass as trained.
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", **ARGS)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.distributions.StudentT(2.5).sample(p.shape) * 0.05)
    checkpoint = tmp_path / "trained.pth"
    torch.save(model.state_dict(), checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomInitWarning)
        loaded = load_model("vit_tiny_patch16_224", str(checkpoint), image_size=32, model_args=ARGS)
    assert not loaded.checkpoint["looks_random"]
