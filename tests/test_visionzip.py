"""VisionZip against its algorithm written one image and one token at a time (Yang et al., CVPR 2025):
in one block, the class token plus the dominant - 1 patches it attends to most, then contextual tokens
(uniformly strided targets among the rest, each plus the mean of the remaining tokens whose keys are
closest to it), taken at the block's exit as the authors do; the contract (restore, no-op, per-image, MACs on every family) runs from test_contract.py."""
import pytest
import torch

import pruning_bench as pb
from macs_at_scale import (
    check_macs_follow_schedule,
    tiny_timm,
)


def paper_visionzip_step(x, cls_attention, keys, dominant, contextual):
    """One image: x (N, C), cls_attention (N,) head-summed, keys (N, d) head-averaged; x[0] is the class token."""
    patches = list(range(1, x.shape[0]))
    top = sorted(patches, key=lambda i: -cls_attention[i].item())[: dominant - 1]
    kept = [0] + sorted(top)
    rest = [i for i in patches if i not in top]
    step = max(1, len(rest) // contextual)
    targets = rest[::step][:contextual]
    joined = {t: [] for t in targets}
    for i in rest:
        if i not in targets:
            closest = max(targets, key=lambda t: torch.cosine_similarity(keys[i], keys[t], dim=0).item())
            joined[closest].append(i)
    context = [x[t] + (sum(x[i] for i in joined[t]) / len(joined[t]) if joined[t] else 0) for t in targets]
    return torch.stack([x[i] for i in kept] + context)


def paper_visionzip_forward(model, image, dominant, contextual, layer):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    for index, block in enumerate(model.blocks):
        attn = block.attn
        n, heads = x.shape[0], attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)
        weights = (torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5).softmax(-1)
        x = x + block.ls1(attn.proj(torch.einsum("hnm,mhd->nhd", weights, v).reshape(n, -1)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
        if index == layer:  # the block's output, with its own attention and keys
            x = paper_visionzip_step(x, weights[:, 0].sum(0), k.mean(dim=1), dominant, contextual)
    return model.forward_head(model.norm(x[None]))[0]


@pytest.mark.parametrize("dominant,contextual,layer", [(17, 8, 1), (30, 5, 2), (5, 20, 0), (11, 53, 2)])
def test_visionzip_equals_the_papers_algorithm(dominant, contextual, layer):
    model = tiny_timm()
    torch.manual_seed(5)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([paper_visionzip_forward(model, im, dominant, contextual, layer) for im in images])
        with pb.prune(model, "visionzip", dominant=dominant, contextual=contextual, layer=layer) as h:
            got = model(images)
    kept = dominant + contextual
    assert h.stats()["tokens_per_layer"] == [65] * (layer + 1) + [kept] * (3 - layer)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


def test_visionzip_default_layer_is_the_second_to_last():
    model = tiny_timm()
    with pb.prune(model, "visionzip", dominant=10, contextual=4) as h, torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [65, 65, 65, 14]



def test_visionzip_macs_follow_its_schedule():
    stats = check_macs_follow_schedule("visionzip", {"dominant": 54, "contextual": 10, "layer": 0})
    assert stats["tokens_per_layer"] == [197, 64, 64]


@pytest.mark.parametrize("params,match", [
    ({"dominant": 0}, r"dominant=0 is out of range \[1, inf\]"),
    ({"contextual": -1}, r"contextual=-1 is out of range \[0, inf\]"),
    ({"layer": 4}, r"layer=4 is out of range \[0, 3\]"),
    ({"layer": 1.5}, "layer must be an integer"),
])
def test_visionzip_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), "visionzip", **params)


def test_visionzip_needs_a_class_token():
    with pytest.raises(ValueError, match="class token"):
        pb.prune(tiny_timm(class_token=False, global_pool="avg"), "visionzip")
