"""PiToMe against its algorithm written one image and one token at a time (Tran et al., NeurIPS 2024),
with the authors' schedule: r = floor(T - T * ratio) patch tokens merge per block, margin
0.75 - 0.75 * l / L, plain bipartite matching in energy order for the first half of the blocks and
energy protection after, size-weighted merges, no proportional attention; the contract (restore, no-op, per-image, MACs on every family) runs from test_contract.py."""
import math

import pytest
import torch

import pruning_bench as pb
from macs_at_scale import (
    check_macs_follow_schedule,
    tiny_timm,
)


def elu(v, alpha):
    return v if v > 0 else alpha * (math.exp(v) - 1)


def paper_pitome_merge(x, size, metric, ratio, margin, alpha, protect):
    """One image: x (N, C) after the attention residual, metric (N, d); the class token is x[0]."""
    patches = list(range(1, x.shape[0]))
    T = len(patches)
    r = math.floor(T - T * ratio)
    pairwise = torch.cosine_similarity(metric[:, None], metric[None, :], dim=-1).tolist()
    cos = {(i, j): pairwise[i][j] for i in patches for j in patches}
    energy = {i: sum(elu(cos[i, j] - margin, alpha) for j in patches) / T for i in patches}
    order = sorted(patches, key=lambda i: -energy[i])  # highest energy (most redundant) first
    if protect:
        candidates, kept = order[: 2 * r], order[2 * r :]
        a_set, b_set = candidates[0::2], candidates[1::2]
        merged = {a: max(b_set, key=lambda b: cos[a, b]) for a in a_set}
    else:
        a_set, b_set = order[0::2], order[1::2]
        best = {a: max(b_set, key=lambda b: cos[a, b]) for a in a_set}
        edges = sorted(a_set, key=lambda a: -cos[a, best[a]])
        merged = {a: best[a] for a in edges[:r]}
        kept = edges[r:]
    total = {b: x[b] * size[b] for b in b_set}
    weight = {b: size[b].clone() for b in b_set}
    for a, b in merged.items():
        total[b] = total[b] + x[a] * size[a]
        weight[b] = weight[b] + size[a]
    x_new = torch.stack([x[0]] + [x[i] for i in kept] + [total[b] / weight[b] for b in b_set])
    size_new = torch.stack([size[0]] + [size[i] for i in kept] + [weight[b] for b in b_set])
    return x_new, size_new


def paper_pitome_forward(model, image, ratio, alpha=1.0):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    size = torch.ones(x.shape[0], 1)
    depth = len(model.blocks)
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        n, heads = x.shape[0], attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)
        logits = torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5  # no size bias
        x = x + block.ls1(attn.proj(torch.einsum("hnm,mhd->nhd", logits.softmax(-1), v).reshape(n, -1)))
        margin = 0.75 - 0.75 * layer / depth
        x, size = paper_pitome_merge(x, size, k.mean(dim=1), ratio, margin, alpha, protect=layer >= math.ceil(depth / 2))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x[None]))[0]


@pytest.mark.parametrize("ratio", [0.9, 0.7, 0.5])
def test_pitome_equals_the_papers_algorithm(ratio):
    model = tiny_timm()
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([paper_pitome_forward(model, image, ratio) for image in images])
        with pb.prune(model, "pitome", ratio=ratio) as h:
            got = model(images)
    tokens = h.stats()["tokens_per_layer"]
    for before, after in zip(tokens, tokens[1:]):
        assert after == before - math.floor((before - 1) - (before - 1) * ratio)
    assert tokens[1] < 65
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()



def test_pitome_macs_follow_its_schedule():
    stats = check_macs_follow_schedule("pitome", {"ratio": 0.8})
    assert stats["tokens_per_layer"] == [197, 158, 127]


@pytest.mark.parametrize("params,match", [
    ({"ratio": 0.4}, r"ratio=0.4 is out of range \[0.5, 1.0\]"),
    ({"ratio": 1.5}, "ratio=1.5 is out of range"),
    ({"margin": 2.0}, r"margin=2.0 is out of range \[-1.0, 1.0\]"),
    ({"alpha": 0.0}, "alpha=0.0 is out of range"),
    ({"prop_attn": "maybe"}, "prop_attn must be a boolean"),
    ({"r": 8}, "unknown parameter"),
])
def test_pitome_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), "pitome", **params)
