"""GTP against its algorithm written one image and one token at a time (Xu et al., WACV 2024), with the
authors' settings: a token graph built once from the first block's input (8 grid neighbours and the
`num_neighbours` most cosine-similar patches, 1 / sqrt(d_i d_j) weights), then in every block, after the
attention residual, the `num_prop` patch tokens of lowest max-over-heads self-attention times
max-over-heads received attention removed and added, times alpha and their edge weights, to their kept
neighbours; token scales follow the same rule and bias the attention logits; with `sparsity` < 1 every
block attends with (and selects from) its attention with the smallest weights zeroed. The contract (restore,
keep-all no-op, batch invariance, MACs on every family) runs from tests/test_contract.py."""
import math

import pytest
import torch

import pruning_bench as pb
from macs_at_scale import check_macs_follow_schedule, tiny_timm


def paper_graph(patches, side, num_neighbours, graph_type):
    """{(i, j): weight} over patch ids 0..P-1, from their features patches (P, C) on a side x side grid."""
    P = patches.shape[0]
    edges = set()
    if graph_type in ("Spatial", "Mixed"):
        for i in range(P):
            for j in range(P):
                if i != j and abs(i // side - j // side) <= 1 and abs(i % side - j % side) <= 1:
                    edges.add((i, j))
    if graph_type in ("Semantic", "Mixed"):
        cos = torch.cosine_similarity(patches[:, None], patches[None, :], dim=-1).tolist()
        for i in range(P):
            others = sorted((j for j in range(P) if j != i), key=lambda j: -cos[i][j])
            edges.update((i, j) for j in others[:num_neighbours])
    degree = {i: sum(1 for (a, _) in edges if a == i) for i in range(P)}
    return {(i, j): 1 / math.sqrt(degree[i] * degree[j]) for (i, j) in edges}


def sparsified(a, sparsity):
    """Each head's weights (N, N) below its int(N^2 (1 - sparsity))-th smallest one set to 0."""
    n = a.shape[-1]
    k = int(n * n * (1 - sparsity))
    if k == 0:
        return a
    heads = []
    for head in a:
        threshold = sorted(head.flatten().tolist())[k - 1]
        heads.append(torch.where(head < threshold, 0.0, head))
    return torch.stack(heads)


def paper_gtp_forward(model, image, num_prop, num_neighbours=8, alpha=0.1, token_scale=True, graph_type="Mixed",
                      sparsity=1.0):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    side = int(math.isqrt(x.shape[0] - 1))
    graph = paper_graph(x[1:], side, num_neighbours, graph_type)
    ids = [None] + list(range(x.shape[0] - 1))  # the class token, then each token's patch id
    scale = [1.0] * x.shape[0]
    for block in model.blocks:
        attn = block.attn
        n, heads = x.shape[0], attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)
        logits = torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5
        if token_scale:
            logits = logits + torch.tensor(scale, dtype=x.dtype).log()
        a = sparsified(logits.softmax(-1), sparsity)  # every block attends with, and selects from, this map
        x = x + block.ls1(attn.proj(torch.einsum("hnm,mhd->nhd", a, v).reshape(n, -1)))
        score = {t: a[:, t, t].max().item() * a[:, :, t].sum(dim=1).max().item() for t in range(1, n)}
        removed = sorted(score, key=lambda t: score[t])[:num_prop]
        kept = [t for t in range(1, n) if t not in removed]
        rows, new_scale = [x[0]], [scale[0]]
        for t in kept:
            weights = [(graph.get((ids[t], ids[p]), 0.0), p) for p in removed]
            rows.append(x[t] + alpha * sum(w * x[p] for w, p in weights))
            new_scale.append(scale[t] + alpha * sum(w * scale[p] for w, p in weights))
        x, ids = torch.stack(rows), [None] + [ids[t] for t in kept]
        scale = new_scale if token_scale else [1.0] * x.shape[0]
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x[None]))[0]


def _model(peaky=1.0):
    model = tiny_timm().double()
    with torch.no_grad():
        for block in model.blocks:  # sharper attention, so the ranking is far from uniform
            block.attn.qkv.weight[: 2 * 64] *= peaky
    return model


@pytest.mark.parametrize("params,peaky", [
    ({"num_prop": 6}, 1.0),
    ({"num_prop": 12}, 3.0),
    ({"num_prop": 9, "token_scale": False, "alpha": 0.4}, 3.0),
    ({"num_prop": 6, "graph_type": "Semantic", "num_neighbours": 3}, 3.0),
    ({"num_prop": 6, "graph_type": "Spatial"}, 1.0),
    ({"num_prop": 8, "sparsity": 0.6}, 3.0),
    ({"num_prop": 3, "sparsity": 0.9, "token_scale": False}, 1.0),
])
def test_gtp_equals_the_papers_algorithm(params, peaky):
    model = _model(peaky)
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        plain = model(images)
        expected = torch.stack([paper_gtp_forward(model, image, **params) for image in images])
        with pb.prune(model, "gtp", **params) as h:
            got = model(images)
    assert h.stats()["tokens_per_layer"] == [65 - i * params["num_prop"] for i in range(4)]
    assert (got - plain).abs().max() > 1e-3  # the propagation changed the output
    assert (got - expected).abs().max() < 1e-10, (got - expected).abs().max()


def test_gtp_alpha_zero_is_plain_pruning_of_the_same_tokens():
    """alpha=0 propagates nothing: the kept tokens are as they were, so dropping them by the same score is equal."""
    model = _model(3.0)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad(), pb.prune(model, "gtp", num_prop=10, alpha=0.0, token_scale=False):
        got = model(images)
    expected = torch.stack([paper_gtp_forward(model, image, 10, alpha=0.0, token_scale=False) for image in images])
    assert (got - expected).abs().max() < 1e-10


@pytest.mark.parametrize("sparsity", [1.0, 0.8])
def test_gtp_macs_follow_its_schedule(sparsity):
    """Beyond the formula: the graph's similarities in block 0, the propagation products and, unless sparsified
    attention was formed from it anyway, the attention map."""
    def extra(dims, n):
        attn, width, removed = dims.blocks[0].attn_dim, dims.embed_dim, 8
        kept = n - removed - 1
        graph = (n - 1) ** 2 * width if n == 197 else 0
        return n * n * attn * (sparsity == 1.0) + kept * removed * (width + 1) + graph

    stats = check_macs_follow_schedule("gtp", {"num_prop": 8, "sparsity": sparsity}, extra_per_block=extra)
    assert stats["tokens_per_layer"] == [197, 189, 181]


def test_gtp_sparsity_alone_changes_every_block_and_removes_nothing():
    model = _model(3.0)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        plain = model(images)
        with pb.prune(model, "gtp", num_prop=0, sparsity=0.7) as h:
            got = model(images)
    expected = torch.stack([paper_gtp_forward(model, image, 0, sparsity=0.7) for image in images])
    assert h.stats()["tokens_per_layer"] == [65] * 4
    assert (got - plain).abs().max() > 1e-3
    assert (got - expected).abs().max() < 1e-10


def test_gtp_caps_a_budget_larger_than_the_patches():
    model = tiny_timm()
    with pytest.warns(UserWarning, match="capped"), torch.no_grad(), pb.prune(model, "gtp", num_prop=40) as h:
        model(torch.randn(1, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [65, 25, 2, 2]  # one patch token is always kept


@pytest.mark.parametrize("params,match", [
    ({"num_prop": -1}, r"num_prop=-1 is out of range"),
    ({"num_prop": [4, -2]}, r"num_prop\[1\]=-2 is out of range"),
    ({"num_prop": [1, 1, 1, 1, 1]}, "num_prop has 5 entries but the model has 4 blocks"),
    ({"num_neighbours": 0}, r"num_neighbours=0 is out of range \[1, inf\]"),
    ({"alpha": -0.1}, r"alpha=-0.1 is out of range \[0.0, inf\)"),
    ({"token_scale": "maybe"}, "token_scale must be a boolean"),
    ({"graph_type": "Knn"}, "graph_type='Knn' is not one of Mixed, Spatial, Semantic"),
    ({"sparsity": 0.0}, r"sparsity=0.0 is out of range \(0.0, 1.0\]"),
    ({"sparsity": 1.5}, r"sparsity=1.5 is out of range"),
    ({"sparse": 0.5}, "unknown parameter"),
])
def test_gtp_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), "gtp", **params)


def test_gtp_refuses_more_neighbours_than_patches():
    model = tiny_timm()
    with pytest.raises(ValueError, match=r"num_neighbours=64 is out of range \[1, 63\] for 64 patch tokens"):
        with torch.no_grad(), pb.prune(model, "gtp", num_neighbours=64):
            model(torch.randn(1, 3, 32, 32))
