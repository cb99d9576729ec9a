"""zero_tprune (Zero-TPrune) written out independently, one image at a time, against the strategy.

The reference runs a timm ViT block by block with explicit attention and, after each pruning block (the
paper's pruning layer between blocks, reading the attention of the block before it), does the paper's
I' -> S -> I steps with plain loops: power iteration s <- A^T s per head, the variance head
filter and root-mean-square head combination, the importance-ordered halves matched token by token by
cosine similarity of the head-averaged keys, then the I-stage on the graph of the tokens left. The
strategy decides for the whole batch at once; logits must agree in float64. Also checked: PageRank's
fixed point (scores sum to 1 and are the stationary distribution of the column-normalised graph), and
that the S-stage prunes exact duplicates first.
"""
import math

import numpy as np
import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.registry import get_strategy
from pruning_bench.strategies.zero_tprune import combine_heads, similarity_prune, weighted_page_rank


def _page_rank(graph, iterations, cls_first):
    """Per-head scores (H, N): power iteration from the start that sums to 1."""
    H, N, _ = graph.shape
    start = torch.ones(N, dtype=graph.dtype)
    if cls_first:
        start[0] = math.sqrt(N)
    start = start / start.sum()
    scores = []
    for h in range(H):
        s = start.clone()
        for _ in range(iterations):
            s = graph[h].T @ s
        scores.append(s)
    return torch.stack(scores)


def _combine(scores, v_min, v_max):
    """VHF then EIR, head by head."""
    N = scores.shape[1]
    variances = [float(((N * s - (N * s).mean()) ** 2).mean()) for s in scores]
    kept = [h for h, v in enumerate(variances) if v_min <= v <= v_max] or list(range(len(scores)))
    return torch.stack([scores[h] ** 2 for h in kept]).mean(0).sqrt(), variances


def _prune(x, graph, keys, r_s, r_i, iterations, v_min, v_max):
    """One pruning layer on one image: the kept positions of x (N, C), in order, prefix = class token."""
    N = len(x)
    positions = list(range(N))
    variances = None
    if r_s:
        rank, variances = _combine(_page_rank(graph, 1, True), v_min, v_max)
        patches = sorted(range(1, N), key=lambda i: (float(rank[i]), i))
        group_a, group_b = patches[: (N - 1) // 2], patches[(N - 1) // 2:]
        unit = keys / keys.norm(dim=-1, keepdim=True)
        best = {a: max(float(unit[a] @ unit[b]) for b in group_b) for a in group_a}
        dropped = sorted(group_a, key=lambda a: (-best[a], group_a.index(a)))[:r_s]
        positions = [i for i in positions if i not in dropped]
        sub = graph[:, positions][:, :, positions]
        graph = sub / sub.sum(dim=-1, keepdim=True)
    score, first = _combine(_page_rank(graph, iterations, True), v_min, v_max)
    variances = variances or first
    patch_order = sorted(range(1, len(positions)), key=lambda j: -float(score[j]))
    kept = [0] + sorted(patch_order[: len(positions) - 1 - r_i])
    return [positions[j] for j in kept], variances


def reference_logits(vit, image, layers, r_s, r_i, iterations, v_min, v_max):
    x = vit._pos_embed(vit.patch_embed(image[None]))[0]
    variances = []
    for i, block in enumerate(vit.blocks):
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(x)).reshape(len(x), 3, attn.num_heads, -1).permute(1, 2, 0, 3)
        weights = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)
        x = x + attn.proj((weights @ v).transpose(0, 1).reshape(len(x), -1))
        x = x + block.mlp(block.norm2(x))
        if i in layers:  # the pruning layer between this block and the next, from this block's attention
            kept, head_variances = _prune(x, weights, k.mean(0), r_s, r_i, iterations, v_min, v_max)
            variances.append(head_variances)
            x = x[kept]
    return vit.head(vit.norm(x)[0]), variances


def _peaky_model(scale):
    model = tiny_timm(depth=5).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:128] *= scale
    return model


@pytest.mark.parametrize("scale, filtered", [(1, False), (4, False), (4, True)])
def test_zero_tprune_equals_the_algorithm_written_out_per_image(scale, filtered):
    model = _peaky_model(scale)
    torch.manual_seed(3)
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    x[::2, :, :12, :12] *= 5
    layers, r, iterations = [1, 3], 10, 4
    v_min, v_max = 0.01, 0.7
    with torch.no_grad():
        if filtered:  # thresholds between the heads' variances, so that some heads are filtered out
            found = sorted(v for image in x for v in reference_logits(model, image, layers, 5, 5, iterations,
                                                                      0.0, math.inf)[1][0])
            v_min, v_max = found[len(found) // 4], found[3 * len(found) // 4]
        expected = [reference_logits(model, image, layers, 5, 5, iterations, v_min, v_max) for image in x]
        with pb.prune(model, "zero_tprune", r=r, prune_layers=layers, iterations=iterations,
                      v_min=v_min, v_max=v_max) as h:
            got = model(x)
            tokens = h.stats()["tokens_per_layer"]
            mlp_tokens = h.stats()["mlp_tokens_per_layer"]
    if filtered:
        passing = [v_min <= v <= v_max for e in expected for v in e[1][0]]
        assert 0 < sum(passing) < len(passing)
    assert tokens == [65, 65, 55, 55, 45]
    assert mlp_tokens == tokens  # a pruning block's MLP still sees every token: the layer follows the block
    torch.testing.assert_close(got, torch.stack([e[0] for e in expected]), rtol=0, atol=1e-12)


def test_page_rank_keeps_sum_one_and_reaches_the_stationary_distribution():
    torch.manual_seed(0)
    graph = torch.rand(2, 3, 9, 9, dtype=torch.float64).pow(3).softmax(dim=-1)  # rows sum to 1
    start = torch.full((2, 9), 1 / 9, dtype=torch.float64)
    few = weighted_page_rank(graph, start, 3)
    torch.testing.assert_close(few.sum(-1), torch.ones(2, 3, dtype=torch.float64), rtol=0, atol=1e-14)
    limit = weighted_page_rank(graph, start, 200)
    for b in range(2):
        for h in range(3):
            values, vectors = np.linalg.eig(graph[b, h].numpy().T)  # column-normalised graph A^T
            one = np.argmin(np.abs(values - 1))
            stationary = np.real(vectors[:, one]) / np.real(vectors[:, one]).sum()
            np.testing.assert_allclose(limit[b, h].numpy(), stationary, rtol=0, atol=1e-12)
    assert not torch.allclose(few, limit, atol=1e-6)  # three steps are not yet the fixed point


def test_s_stage_prunes_exact_duplicates_first():
    torch.manual_seed(1)
    metric = torch.randn(2, 11, 8, dtype=torch.float64)  # a class token and 10 patch tokens
    rank = torch.arange(11, dtype=torch.float64).expand(2, 11).clone()  # group A = tokens 1-5, B = 6-10
    metric[0, 2] = metric[0, 9]  # exact duplicates of a B token
    metric[0, 4] = 3 * metric[0, 7]  # same direction: cosine similarity 1
    metric[1, 5] = metric[1, 6]
    kept = similarity_prune(metric, rank, 1, 2)
    assert 2 not in kept[0] and 4 not in kept[0] and kept.shape == (2, 9)
    assert 5 not in kept[1]
    assert kept[:, 0].eq(0).all()


def test_variance_filter_and_root_mean_square():
    scores = torch.tensor([[[0.25, 0.25, 0.25, 0.25], [0.7, 0.1, 0.1, 0.1], [0.4, 0.3, 0.2, 0.1]]],
                          dtype=torch.float64)
    # variances of 4 s: 0 (uniform, filtered), 1.08 (above 0.7, filtered), 0.2 (kept)
    torch.testing.assert_close(combine_heads(scores, 0.01, 0.7), scores[:, 2], rtol=0, atol=1e-15)
    both = ((scores[:, 1] ** 2 + scores[:, 2] ** 2) / 2).sqrt()
    torch.testing.assert_close(combine_heads(scores, 0.01, 2.0), both, rtol=0, atol=1e-15)
    everything = (scores ** 2).mean(dim=1).sqrt()  # no head passes: all are used
    torch.testing.assert_close(combine_heads(scores, 5.0, 6.0), everything, rtol=0, atol=1e-15)


def test_schedule_clamp_and_bad_parameters():
    model = tiny_timm()
    with pytest.warns(UserWarning, match="clamped to 63"):
        with pb.prune(model, "zero_tprune", r=80, prune_layers=[1], iterations=2) as h:
            model(torch.randn(1, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [65, 65, 2, 2]
    default = get_strategy("zero_tprune")()
    default.check_model(12, 1)
    assert [default.iterations_at(i) for i in range(12)] == [30] * 3 + [5] * 6 + [1] * 3
    assert [default.prunes_at(i) for i in range(12)] == [True] * 11 + [False]  # between blocks, none after the last
    for params, match in (({"v_min": 0.5, "v_max": 0.1}, "v_max"), ({"prune_layers": [9]}, "prune_layers"),
                          ({"r": -2}, "r"), ({"iterations": 0}, "iterations"), ({"init": "x"}, "init"),
                          ({"s_fraction": 1.5}, "s_fraction")):
        with pytest.raises(ValueError, match=match):
            pb.prune(model, "zero_tprune", **params)
