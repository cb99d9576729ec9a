"""ToMe against the algorithm as the paper states it (Bolya et al., ICLR 2023, Sec. 3), written here one image
and one token at a time: proportional attention with a log-size key bias, keys averaged over heads as the
matching metric, alternate tokens into sets A and B, each A token's most cosine-similar B token, the r
strongest such edges merged by size-weighted average, the class token never merged, then the MLP.

This needs nothing outside the project, so it runs everywhere; test_tome_reference.py compares with the
authors' code when it is available.
"""
import math

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def paper_tome_forward(model, image: torch.Tensor, r_per_block: list[int]) -> torch.Tensor:
    """Logits of one image (C, H, W) through a timm ViT with ToMe, by the paper's description."""
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]  # (N, C)
    size = torch.ones(x.shape[0])
    for block, r in zip(model.blocks, r_per_block):
        attn = block.attn
        n, heads = x.shape[0], attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)  # each (N, heads, d)
        logits = torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5 + size.log()[None, None, :]
        mixed = torch.einsum("hnm,mhd->nhd", logits.softmax(dim=-1), v).reshape(n, -1)
        x = x + block.ls1(attn.proj(mixed))

        if r > 0:  # a block that merges nothing leaves the token order alone
            x, size = paper_merge(x, size, k.mean(dim=1), r)
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x[None]))[0]


def paper_merge(x, size, metric, r):
    """Bipartite soft matching of one image's tokens, one edge at a time; returns tokens and their sizes."""
    n = x.shape[0]
    a_tokens, b_tokens = list(range(0, n, 2)), list(range(1, n, 2))
    edges = []  # (similarity, a, its most similar b)
    for a in a_tokens:
        if a == 0:  # the class token is never merged
            edges.append((-math.inf, a, None))
            continue
        sims = [torch.cosine_similarity(metric[a], metric[b], dim=0).item() for b in b_tokens]
        best = max(range(len(sims)), key=sims.__getitem__)
        edges.append((sims[best], a, b_tokens[best]))
    strongest = sorted(edges, key=lambda e: -e[0])[:r]
    merged = {a: b for _, a, b in strongest}
    total = {b: x[b] * size[b] for b in b_tokens}
    weight = {b: size[b].clone() for b in b_tokens}
    for a, b in merged.items():
        total[b] = total[b] + x[a] * size[a]
        weight[b] = weight[b] + size[a]
    kept_a = [a for a in a_tokens if a not in merged]  # in their original order, class token first
    x = torch.stack([x[a] for a in kept_a] + [total[b] / weight[b] for b in b_tokens])
    size = torch.stack([size[a] for a in kept_a] + [weight[b] for b in b_tokens])
    return x, size


@pytest.mark.parametrize("r", [3, 8, [0, 10, 2, 6], [12, 0, 5]])
def test_tome_equals_the_papers_algorithm(r):
    model = tiny_timm()
    torch.manual_seed(1)
    images = torch.randn(3, 3, 32, 32)
    depth = len(model.blocks)
    schedule = r + [0] * (depth - len(r)) if isinstance(r, list) else [r] * depth  # a short list: no merging after
    with torch.no_grad():
        expected = torch.stack([paper_tome_forward(model, image, schedule) for image in images])
        with pb.prune(model, "tome", r=r) as handle:
            got = model(images)
        tokens = handle.stats()["tokens_per_layer"]
    assert tokens == [65 - sum(schedule[:i]) for i in range(len(schedule))]
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()
