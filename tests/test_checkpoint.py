"""check_checkpoint must call random init random, and real pretrained weights trained."""
import math

import pytest
import torch
import torch.nn.functional as F

from pruning_bench.checkpoint import check_checkpoint


@pytest.fixture(scope="module")
def reference():
    pytest.importorskip("onnx")
    from pruning_bench.reference import reference_model

    return reference_model()


def test_random_timm_vit_looks_random():
    import timm

    torch.manual_seed(0)
    report = check_checkpoint(timm.create_model("vit_small_patch16_224", pretrained=False))
    assert report.looks_random
    assert report["looks_random"]  # dict-like access
    assert report.norms_at_init
    assert report.init_like_share > 0.9
    assert any("normal(std=0.02)" in line for line in report.evidence)


def test_random_open_clip_visual_tower_looks_random():
    open_clip = pytest.importorskip("open_clip")
    torch.manual_seed(0)
    visual = open_clip.create_model("ViT-B-32", pretrained="").visual
    report = check_checkpoint(visual)
    assert report.looks_random
    assert report.init_like_share > 0.9
    assert any("xavier_uniform" in line for line in report.evidence)  # attention in-projection


def test_jax_style_init_with_cut_normals_looks_random():
    import timm

    torch.manual_seed(0)
    report = check_checkpoint(timm.create_model("vit_tiny_patch16_224", pretrained=False, weight_init="jax"))
    assert report.looks_random
    assert any("cut at 2 std" in (s.init_match or "") for s in report.tensors)  # lecun_normal_ patch embedding


def test_reference_model_looks_trained(reference):
    report = check_checkpoint(reference)
    assert not report.looks_random, str(report)
    assert report.init_like_share < 0.1
    assert report.norms_at_init is False
    assert [s.name for s in report.tensors if s.init_match] == []


def test_state_dict_input(reference):
    import timm

    assert not check_checkpoint(reference.state_dict()).looks_random
    random_state = timm.create_model("vit_tiny_patch16_224", pretrained=False).state_dict()
    assert check_checkpoint(random_state).looks_random
    assert check_checkpoint({"epoch": 0, "state_dict": random_state}).looks_random  # checkpoint file layout
    frame = check_checkpoint(random_state).to_frame()
    assert {"name", "mean", "std", "kurtosis", "init_match"} <= set(frame.columns)
    assert len(frame) == len([t for t in random_state.values() if t.is_floating_point()])


def test_random_model_with_classifier_and_first_batch_loss():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    images, labels = torch.randn(8, 3, 224, 224), torch.arange(8) % 10
    with torch.no_grad():
        loss = F.cross_entropy(model(images), labels).item()
    report = check_checkpoint(model, num_classes=10, first_batch_loss=loss)
    assert report.looks_random
    assert abs(report.loss_over_chance - 1) < 0.1  # a random model's loss is ln(10)
    assert report.classifier_cosine_ratio < 1.5  # class rows as unrelated as random vectors
    assert any("head.weight" in line and "|cos|" in line for line in report.evidence)


def test_loss_far_below_chance_is_reported():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10)
    report = check_checkpoint(model, first_batch_loss=0.2)
    assert report.loss_over_chance == pytest.approx(0.2 / math.log(10))
    assert any("away from chance level" in line for line in report.evidence)


def test_trained_backbone_with_fresh_head_is_not_random(reference):
    from pruning_bench.reference import reference_model

    torch.manual_seed(0)
    model = reference_model()
    model.reset_classifier(10)
    torch.nn.init.trunc_normal_(model.head.weight, std=0.02)
    report = check_checkpoint(model, first_batch_loss=math.log(10) + 0.01)
    assert not report.looks_random, str(report)
    assert any("freshly initialised" in line and "head.weight" in line for line in report.evidence)


def test_a_rare_clamped_value_does_not_hide_an_init_draw():
    torch.manual_seed(0)
    weight = torch.randn(1536, 384) * 0.02
    weight[3, 7] = 2.0  # what timm's trunc_normal_ returns when its uniform draw hits the bound
    (stats,) = [s for s in check_checkpoint({"fc.weight": weight}).tensors if s.name == "fc.weight"]
    assert stats.kurtosis > 100 and stats.outliers == 1
    assert stats.init_match == "normal(std=0.02)"


def test_heavy_tailed_weights_do_not_match_an_init():
    torch.manual_seed(0)
    # Student t with 30 degrees of freedom: kurtosis 3.23, tails as light as the least trained-looking
    # reference tensors (3.29), scaled to the std 0.02 of timm's init.
    weight = torch.distributions.StudentT(30.0).sample((1536, 384)) * 0.02 / math.sqrt(30 / 28)
    (stats,) = check_checkpoint({"fc.weight": weight}).tensors
    assert stats.std == pytest.approx(0.02, rel=0.03)
    assert stats.init_match is None


def test_rejects_what_is_not_a_model_or_state_dict():
    with pytest.raises(TypeError):
        check_checkpoint([torch.zeros(3)])
    with pytest.raises(ValueError):
        check_checkpoint({"step": torch.tensor(3)})


def test_zero_initialised_head_counts_as_untrained():
    torch.manual_seed(0)
    state = {"head.weight": torch.zeros(10, 384), "head.bias": torch.zeros(10)}
    report = check_checkpoint(state, first_batch_loss=math.log(10))
    assert any("all zeros" in line for line in report.evidence)
    assert report.looks_random  # zero head + chance loss, and no trained weights to say otherwise
