"""evit against EViT as the paper states it (Liang et al., ICLR 2022, Sec. 3), one image and one token at a time.

After a pruning block's attention, the class token's attention (averaged over heads) ranks the patch
tokens; the top ceil(keep_rate * (N - 1)) stay, and the dropped ones are fused into one token, their sum
weighted by that attention. Then the MLP runs on what is left.
"""
import math

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def attention_and_mix(block, x):
    """(softmax attention (heads, N, N), the block's attention output) for one image's tokens (N, C)."""
    attn = block.attn
    n, heads = x.shape[0], attn.num_heads
    q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)
    weights = (torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5).softmax(dim=-1)
    mixed = torch.einsum("hnm,mhd->nhd", weights, v).reshape(n, -1)
    return weights, block.ls1(attn.proj(mixed))


def paper_evit_forward(model, image, prune_layers, keep_rate, fuse):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    for index, block in enumerate(model.blocks):
        weights, out = attention_and_mix(block, x)
        x = x + out
        if index in prune_layers:
            cls_attention = weights[:, 0].mean(dim=0)  # (N,)
            patches = list(range(1, x.shape[0]))
            keep = math.ceil(keep_rate * len(patches))
            ranked = sorted(patches, key=lambda i: -cls_attention[i].item())
            kept = sorted(ranked[:keep])
            dropped = sorted(ranked[keep:])
            rows = [x[0]] + [x[i] for i in kept]
            if fuse:
                rows.append(sum(cls_attention[i] * x[i] for i in dropped))
            x = torch.stack(rows)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x[None]))[0]


@pytest.mark.parametrize("keep_rate,fuse", [(0.5, True), (0.7, True), (0.5, False)])
def test_equals_the_paper_token_by_token(keep_rate, fuse):
    model = tiny_timm()
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([paper_evit_forward(model, image, [1, 2], keep_rate, fuse) for image in x])
        with pb.prune(model, "evit", prune_layers=[1, 2], keep_rate=keep_rate, fuse=fuse):
            got = model(x)
        assert not torch.allclose(got, model(x), atol=1e-3)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


def test_vit_b16_token_schedule():
    import timm

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    with pb.prune(model, "evit") as h, torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert h.stats()["tokens_per_layer"] == [197] * 4 + [140] * 3 + [100] * 3 + [72] * 2
    assert h.describe()[0]["params"] == {"keep_rate": 0.7, "prune_layers": [3, 6, 9], "fuse": True}


def test_fused_token_holds_every_dropped_patch():
    model = tiny_timm(global_pool="avg")
    with pb.prune(model, "evit", prune_layers=[1, 2], keep_rate=0.5) as h, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        size = h.token_run.size[..., 0]
    # 64 patches -> 32 kept + 1 fused (32 patches) -> 17 kept + 1 fused (the other 16 tokens' patches)
    assert size.shape == (2, 1 + 17 + 1)
    assert torch.equal(size.sum(dim=1), torch.full((2,), 65.0))
    assert bool((size[:, -1] >= 16).all())


def test_needs_a_class_token():
    model = tiny_timm(class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="class token"):
        pb.prune(model, "evit", prune_layers=[1], keep_rate=0.5)


@pytest.mark.parametrize("params,match", [({"fuse": "sometimes"}, "fuse must be a boolean"),
                                          ({"keep_rate": 0}, "keep_rate=0.0 is out of range"),
                                          ({"start_layer": 1}, "unknown parameter")])
def test_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), "evit", **params)
