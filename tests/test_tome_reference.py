"""ToMe equals the authors' implementation (facebookresearch/ToMe) on a timm ViT-B/16.

The reference is not on PyPI; point TOME_REFERENCE_PATH at a checkout's root (the folder holding
`tome/`) to run this test. Without it the test is skipped, saying so.
"""
import copy

import pytest
import torch

import pruning_bench as pb

tome = pytest.importorskip("tome", reason="reference ToMe not importable; set TOME_REFERENCE_PATH to a checkout")


@pytest.fixture(scope="module")
def vit_b16():
    import timm

    torch.manual_seed(0)
    return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()


@pytest.mark.parametrize("r", [4, 8, 16])
def test_matches_reference(vit_b16, r):
    reference = copy.deepcopy(vit_b16)
    tome.patch.timm(reference)
    reference.r = r
    torch.manual_seed(r)
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(images)  # the reference hooks only forward()
        with pb.prune(vit_b16, "tome", r=r) as h:
            got = vit_b16(images)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= 1e-4
    assert h.stats()["tokens_per_layer"][-1] == 197 - 11 * r
