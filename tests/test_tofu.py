"""ToFu against its algorithm written one image and one token at a time (Kim et al., WACV 2024):
ToMe's bipartite matching on head-averaged keys, r tokens per block; blocks before the switch drop
the matched A tokens, later blocks merge them with MLERP (mean rescaled to the largest norm among the
merged tokens); the contract (restore, no-op, per-image, MACs on every family) runs from test_contract.py."""
import math

import pytest
import torch

import pruning_bench as pb
from macs_at_scale import (
    check_macs_follow_schedule,
    tiny_timm,
)


def paper_tofu_step(x, metric, r, prune):
    """One image: x (N, C) after the attention residual, metric (N, d); the class token is x[0]."""
    n = x.shape[0]
    a_tokens, b_tokens = list(range(0, n, 2)), list(range(1, n, 2))
    edges = []
    for a in a_tokens:
        if a == 0:
            edges.append((-math.inf, a, None))
            continue
        sims = [torch.cosine_similarity(metric[a], metric[b], dim=0).item() for b in b_tokens]
        best = max(range(len(sims)), key=sims.__getitem__)
        edges.append((sims[best], a, b_tokens[best]))
    moved = {a: b for _, a, b in sorted(edges, key=lambda e: -e[0])[:r]}
    kept_a = [a for a in a_tokens if a not in moved]
    merged_b = []
    for b in b_tokens:
        group = [x[b]] + [x[a] for a, into in moved.items() if into == b]
        if prune or len(group) == 1:
            merged_b.append(x[b])  # pruning: the A tokens matched to b are simply dropped
            continue
        mean = sum(group) / len(group)
        merged_b.append(mean / mean.norm() * max(t.norm() for t in group))
    return torch.stack([x[a] for a in kept_a] + merged_b)


def paper_tofu_forward(model, image, r, merge_start):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    for layer, block in enumerate(model.blocks):
        attn = block.attn
        n, heads = x.shape[0], attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)
        logits = torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5
        x = x + block.ls1(attn.proj(torch.einsum("hnm,mhd->nhd", logits.softmax(-1), v).reshape(n, -1)))
        if r:
            x = paper_tofu_step(x, k.mean(dim=1), r, prune=layer < merge_start)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x[None]))[0]


@pytest.mark.parametrize("r,merge_start", [(8, None), (12, 1), (5, 0)])
def test_tofu_equals_the_papers_algorithm(r, merge_start):
    model = tiny_timm()
    torch.manual_seed(3)
    images = torch.randn(2, 3, 32, 32)
    params = {"r": r} if merge_start is None else {"r": r, "merge_start_layer": merge_start}
    with torch.no_grad():
        expected = torch.stack([paper_tofu_forward(model, im, r, 3 if merge_start is None else merge_start) for im in images])
        with pb.prune(model, "tofu", **params) as h:
            got = model(images)
    assert h.stats()["tokens_per_layer"] == [65 - r * i for i in range(4)]
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


def test_mlerp_keeps_the_largest_norm_where_a_mean_shrinks():
    from pruning_bench.strategies.tofu import mlerp

    b = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])
    moving = torch.tensor([[[0.0, 4.0]]])
    out = mlerp(b, moving, torch.tensor([[[0]]]))
    assert torch.allclose(out[0, 0], torch.tensor([3.0, 4.0]) / 5 * 4)  # direction of the mean, norm 4
    assert torch.equal(out[0, 1], b[0, 1])  # a B token nobody merged into is untouched



def test_tofu_macs_follow_its_schedule():
    stats = check_macs_follow_schedule("tofu", {"r": 16, "merge_start_layer": 1})
    assert stats["tokens_per_layer"] == [197, 181, 165]


@pytest.mark.parametrize("params,match", [
    ({"r": -1}, r"r=-1 is out of range \[0, inf\]"),
    ({"r": [2, "x"]}, "r\\[1\\] must be an integer"),
    ({"r": [1] * 5}, "r has 5 entries but the model has 4 blocks"),
    ({"merge_start_layer": -2}, "merge_start_layer=-2 is out of range"),
    ({"merge_start_layer": 9}, r"merge_start_layer=9 is out of range \[0, 4\]"),
    ({"prop_attn": 3}, "prop_attn must be a boolean"),
])
def test_tofu_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), "tofu", **params)
