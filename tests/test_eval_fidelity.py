"""Label-free fidelity: raw vs centred cosine, agreement by head or nearest neighbours, the fidelity task."""
import json

import pytest
import torch

from pruning_bench.cli import main
from pruning_bench.evaluate.features import Features
from pruning_bench.measure.fidelity import cosine_metrics, fidelity_metrics, neighbour_agreement, pairwise_cosine


def test_centred_cosine_removes_the_shared_component():
    torch.manual_seed(0)
    common = torch.randn(64) * 5
    reference = common + torch.randn(50, 64)
    unrelated = common + torch.randn(50, 64)  # same common part, image-specific part replaced by noise
    m = cosine_metrics(reference, unrelated)
    assert m["cosine"] > 0.9  # raw cosine flatters a useless feature
    assert abs(m["cosine_centred"]) < 0.2
    assert pairwise_cosine(reference) > 0.9
    same = cosine_metrics(reference, reference.clone())
    assert same["cosine"] == pytest.approx(1.0) and same["cosine_centred"] == pytest.approx(1.0)


def test_neighbour_agreement_and_self_retrieval():
    torch.manual_seed(0)
    reference = torch.randn(30, 16)
    assert neighbour_agreement(reference, reference) == {"nearest_neighbour_agreement": 1.0, "self_retrieval_at1": 1.0}
    shuffled = neighbour_agreement(reference, reference[torch.randperm(30)])
    assert shuffled["self_retrieval_at1"] < 0.2
    assert neighbour_agreement(reference[:2], reference[:2])["nearest_neighbour_agreement"] is None


def test_agreement_uses_the_head_when_there_is_one():
    features = torch.randn(6, 4)
    logits = torch.eye(6, 3)  # rows 0-2 predict classes 0-2, rows 3-5 predict class 0
    flipped = logits.clone()
    flipped[0] = torch.tensor([0.0, 1.0, 0.0])
    m = fidelity_metrics(Features(features, torch.full((6,), -1)), Features(features, torch.full((6,), -1)),
                         reference_logits=logits, pruned_logits=flipped)
    assert m["agreement_kind"] == "classifier" and m["agreement"] == pytest.approx(5 / 6)


def test_fidelity_task_on_a_folder_of_unlabelled_images(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    torch.manual_seed(0)
    for i in range(5):
        pixels = (torch.rand(40, 40, 3) * 255).byte().numpy()
        Image.fromarray(pixels).save(folder / f"{i}.png")
    out = tmp_path / "out"
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
            "--model_arg", "patch_size=8", "--model_arg", "depth=3", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3", "--model_arg", "num_classes=7", "--dataset", str(folder),
            "--no_progress", "--throughput_repeats", "1", "--output", str(out / "{dataset}_{task}_{pruning}.json"),
            "--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=4",
            "--extract_attention", "--attention_images", "2"]
    assert main(argv) == 0  # --task auto: no labels, no train split -> fidelity
    (path,) = out.glob("*.json")
    result = json.loads(path.read_text())
    m = result["metrics"]
    attention = torch.load(result["attention_output"], weights_only=False)
    assert attention["tokens_per_layer"] == [17, 17, 5] and attention["task"] == "fidelity"
    assert attention["cls_attention"][0].shape == (2, 17)
    assert result["task"] == "fidelity" and path.name.startswith("photos_fidelity_cls_topk")
    assert m["agreement_kind"] == "classifier" and m["images"] == 5  # the model has a 7-way head
    assert m["cosine_centred"] < 1.0 and result["efficiency"]["tokens_per_layer"] == [17, 17, 5]
    assert result["data"]["test"]["classes"] is None


def test_a_folder_without_training_split_calibrates_on_its_images_and_says_so(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy()).save(folder / f"{i}.png")
    out = tmp_path / "out"
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
            "--model_arg", "patch_size=8", "--model_arg", "depth=3", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3", "--dataset", str(folder), "--no_progress", "--throughput_repeats", "1",
            "--output", str(out / "{pruning}.json"), "--enable_pruning", "--prune_strategy", "head_prune",
            "--prune_param", "importance=activation", "--prune_calibration", "3"]
    assert main(argv) == 0
    (path,) = out.glob("*.json")
    notes = json.loads(path.read_text())["pruning"]["notes"]
    assert any(n.startswith("calibration: the first 3 images of the test split") and "also evaluated" in n
               for n in notes)
