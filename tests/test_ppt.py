"""ppt (token Pruning and Pooling) written out independently, one image at a time, against the strategy.

The reference below runs a timm ViT block by block with explicit (proportional) attention and, in each
listed block, pools one image with ToMe's bipartite merge or prunes it by its significance scores, as its
score variance says. The strategy decides for the whole batch at once; logits must agree in float64, in a
batch where some images are pooled and others pruned.
"""
import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def _pool(x, size, keys, r):
    """ToMe's bipartite soft matching of one image (class token never merged): size-weighted averages."""
    metric = keys / keys.norm(dim=-1, keepdim=True)
    a, b = list(range(0, len(x), 2)), list(range(1, len(x), 2))
    similarity = metric[a] @ metric[b].T
    similarity[0] = float("-inf")
    best, best_b = similarity.max(dim=-1)
    order = best.argsort(descending=True)
    moved, stay = order[:r].tolist(), sorted(order[r:].tolist())
    total, weight = (x * size)[b].clone(), size[b].clone()
    for i in moved:
        total[best_b[i]] += x[a[i]] * size[a[i]]
        weight[best_b[i]] += size[a[i]]
    kept = [a[i] for i in stay]
    return torch.cat([x[kept], total / weight]), torch.cat([size[kept], weight])


def reference_logits(vit, image, layers, r, threshold):
    x = vit._pos_embed(vit.patch_embed(image[None]))[0]
    size = torch.ones(len(x), 1, dtype=x.dtype)
    variances = []
    for i, block in enumerate(vit.blocks):
        attn = block.attn
        heads = attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(len(x), 3, heads, -1).permute(1, 2, 0, 3)
        weights = ((q @ k.transpose(-2, -1)) * attn.scale + size.log()[:, 0]).softmax(-1)
        x = x + attn.proj((weights @ v).transpose(0, 1).reshape(len(x), -1))
        if i in layers:
            score = weights[:, 0].sum(0) * v.transpose(0, 1).reshape(len(x), -1).norm(dim=-1)
            score = score[1:] / score[1:].sum()
            variance = float(score.var())
            variances.append(variance)
            if variance < threshold:
                x, size = _pool(x, size, k.mean(0), r)
            else:
                keep = [0] + (score.argsort(descending=True)[: len(score) - r] + 1).tolist()
                x, size = x[keep], size[keep]
        x = x + block.mlp(block.norm2(x))
    return vit.head(vit.norm(x)[0]), variances


@pytest.mark.parametrize("scale", [1, 3])
def test_ppt_equals_the_algorithm_written_out_per_image(scale):
    model = tiny_timm(depth=5).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:128] *= scale
    torch.manual_seed(3)
    x = torch.randn(6, 3, 32, 32, dtype=torch.float64)
    x[::2, :, :12, :12] *= 5
    layers, r = [1, 3], 8
    with torch.no_grad():
        first = sorted(reference_logits(model, image, layers, r, 0.0)[1][0] for image in x)
        threshold = (first[2] + first[3]) / 2  # half the images pooled at the first stage, half pruned
        expected = [reference_logits(model, image, layers, r, threshold) for image in x]
        with pb.prune(model, "ppt", r=r, pp_loc_list=layers, threshold=threshold) as h:
            got = model(x)
            tokens = h.stats()["tokens_per_layer"]
            mlp_tokens = h.stats()["mlp_tokens_per_layer"]
    pooled = [e[1][0] < threshold for e in expected]
    assert 0 < sum(pooled) < len(pooled)
    assert tokens == [65, 65, 57, 57, 49]
    assert mlp_tokens == [65, 57, 57, 49, 49]  # as the reference: a listed block's MLP runs on the reduced tokens
    torch.testing.assert_close(got, torch.stack([e[0] for e in expected]), rtol=0, atol=1e-12)


def test_ppt_r_is_capped_like_the_reference_and_names_bad_parameters():
    model = tiny_timm()
    with pytest.warns(UserWarning, match="clamped to 32"):
        with pb.prune(model, "ppt", r=40, pp_loc_list=[1]) as h:
            model(torch.randn(1, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [65, 65, 33, 33]
    for params, match in (({"threshold": -1}, "threshold"), ({"pp_loc_list": [9]}, "pp_loc_list"), ({"r": -2}, "r")):
        with pytest.raises(ValueError, match=match):
            pb.prune(model, "ppt", **params)
