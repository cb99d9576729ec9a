"""ats (Adaptive Token Sampling) written out independently, one image at a time, against the strategy.

The reference below runs a timm ViT block by block with explicit attention and samples each image on its
own (no padding, a Python loop over the sampling points): the strategy's padded, masked batch must give
the same logits in float64 and the same per-image token counts.
"""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def _sampled(attention_cls, value_norms, k):
    """Distinct patch positions (ascending) nearest in CDF to the points 1/(2k), 3/(2k), ... below 1 - 1/(2k)."""
    score = (attention_cls[:, 1:] * value_norms[:, 1:]).sum(0)
    cdf = torch.cumsum(score / (score.sum() + 1e-6), 0)
    points = torch.arange(1 / (2 * k), (2 * k - 1) / (2 * k), 1 / k, dtype=cdf.dtype)
    return sorted({int((cdf - r).abs().argmin()) for r in points})


def reference_logits(vit, image, layers, keep_rate):
    x = vit._pos_embed(vit.patch_embed(image[None]))[0]
    patches = x.shape[0] - 1
    for i, block in enumerate(vit.blocks):
        attn = block.attn
        heads = attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(len(x), 3, heads, -1).permute(1, 2, 0, 3)
        weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)
        x = x + attn.proj((weights @ v).transpose(0, 1).reshape(len(x), -1))
        if i in layers:
            stage = layers.index(i)
            kept = _sampled(weights[:, 0], v.norm(dim=-1), int(keep_rate ** (stage + 1) * patches) + 1)
            x = x[[0] + [j + 1 for j in kept]]
        x = x + block.mlp(block.norm2(x))
    return vit.head(vit.norm(x)[0]), len(x)


def _peaky_model(scale):
    model = tiny_timm(depth=5).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:128] *= scale
    return model


@pytest.mark.parametrize("scale,keep_rate", [(1, 0.5), (12, 0.5), (12, 0.8)])
def test_ats_equals_the_algorithm_written_out_per_image(scale, keep_rate):
    model = _peaky_model(scale)
    torch.manual_seed(3)
    x = torch.randn(5, 3, 32, 32, dtype=torch.float64)
    x[::2, :, :12, :12] *= 5
    layers = [1, 2, 4]
    with torch.no_grad():
        expected = [reference_logits(model, image, layers, keep_rate) for image in x]
        with pb.prune(model, "ats", prune_layers=layers, keep_rate=keep_rate) as h:
            got = model(x)
            stats = h.stats()
    torch.testing.assert_close(got, torch.stack([e[0] for e in expected]), rtol=0, atol=1e-12)
    assert [row[-1] for row in stats["mlp_tokens_per_image"]] == [e[1] for e in expected]
    if scale > 1:
        assert len({e[1] for e in expected}) > 1  # peaked attention: the count differs per image


def test_ats_widths_follow_the_reference_rule_and_keep_all_is_a_noop():
    model = tiny_timm()  # 64 patches: K = 33, 17 -> 32 and 16 sampling points
    with pb.prune(model, "ats", prune_layers=[1, 2], keep_rate=0.5) as h:
        model(torch.randn(2, 3, 32, 32))
        assert h.strategies[0].widths() == {1: 32, 2: 16}
        assert max(h.stats()["mlp_tokens_per_layer"]) <= 65 and h.stats()["tokens_per_layer"][-1] <= 17
    with pytest.warns(UserWarning, match="keep_rate=1.0"):
        pb.prune(model, "ats", prune_layers=[1], keep_rate=1.0).restore()


@pytest.mark.parametrize("params,match", [({"keep_rate": 0}, "keep_rate"), ({"prune_layers": [3, 2]}, "prune_layers"),
                                          ({"sample_count": 3}, "unknown")])
def test_ats_bad_parameters_name_themselves(params, match):
    with warnings.catch_warnings(), pytest.raises(ValueError, match=match):
        warnings.simplefilter("ignore")
        pb.prune(tiny_timm(), "ats", **params)
