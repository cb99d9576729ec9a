"""dpc_knn and kmedoids against the clustering algorithms as Haurum et al. describe them, one image and one
token at a time (DPC-KNN from TCFormer with equal token weights; K-Medoids started from the tokens that
receive the most attention). As the authors do, the reduction runs between blocks: before each listed
block, on the previous block's output, with the previous block's attention.
"""
import math

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm


def distance(a, b):
    return (a - b).norm().item()


def paper_dpc_knn(tokens, n_clusters, k):
    """Cluster means (K, C) of one image's patch tokens (P, C), clusters in the order of their centres."""
    P, C = tokens.shape
    d = [[distance(tokens[i], tokens[j]) / math.sqrt(C) for j in range(P)] for i in range(P)]
    density = [math.exp(-sum(v * v for v in sorted(d[i])[:k]) / k) for i in range(P)]
    farthest = max(max(row) for row in d)

    def outranks(j, i):  # denser, ties going to the earlier token
        return density[j] > density[i] or (density[j] == density[i] and j < i)

    delta = [min([d[i][j] for j in range(P) if outranks(j, i)], default=farthest) for i in range(P)]
    score = [delta[i] * density[i] for i in range(P)]
    centres = sorted(sorted(range(P), key=lambda i: -score[i])[:n_clusters])
    members = {c: [] for c in centres}
    for i in range(P):
        home = i if i in members else min(centres, key=lambda c: d[i][c])
        members[home].append(i)
    return torch.stack([tokens[members[c]].mean(dim=0) for c in centres])


def paper_kmedoids(tokens, weight, n_clusters, iterations):
    """Medoid tokens (K, C) of one image, kept in their original order."""
    P = tokens.shape[0]
    d = [[distance(tokens[i], tokens[j]) for j in range(P)] for i in range(P)]
    cost = [weight[i].item() * sum(d[i]) for i in range(P)]
    medoids = sorted(range(P), key=lambda i: -weight[i].item())[:n_clusters]
    for _ in range(iterations):
        assign = [min(range(n_clusters), key=lambda c: d[i][medoids[c]]) for i in range(P)]
        for c in range(n_clusters):
            members = [i for i in range(P) if assign[i] == c]
            medoids[c] = min(members, key=lambda i: cost[i]) if members else 0
    return tokens[sorted(medoids)]


def paper_forward(model, image, prune_layers, keep_rate, method, **params):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    weights = None
    for index, block in enumerate(model.blocks):
        if index in prune_layers:  # between blocks: the previous block's output and attention
            patches = x[1:]
            n_clusters = math.ceil(keep_rate * patches.shape[0])
            if method == "dpc_knn":
                reduced = paper_dpc_knn(patches, n_clusters, params["k_neighbors"])
            else:
                received = weights.sum(dim=(0, 1))[1:]  # over heads and queries
                reduced = paper_kmedoids(patches, received, n_clusters, params["cluster_iters"])
            x = torch.cat([x[:1], reduced])
        attn = block.attn
        n, heads = x.shape[0], attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(n, 3, heads, -1).unbind(1)
        weights = (torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5).softmax(dim=-1)
        x = x + block.ls1(attn.proj(torch.einsum("hnm,mhd->nhd", weights, v).reshape(n, -1)))
        x = x + block.ls2(block.mlp(block.norm2(x)))
    return model.forward_head(model.norm(x[None]))[0]


CASES = [("dpc_knn", 0.5, {"k_neighbors": 5}), ("dpc_knn", 0.3, {"k_neighbors": 3}),
         ("kmedoids", 0.5, {"cluster_iters": 3}), ("kmedoids", 0.3, {"cluster_iters": 1})]


@pytest.mark.parametrize("method,keep_rate,params", CASES)
def test_equals_the_paper_token_by_token(method, keep_rate, params):
    model = tiny_timm()
    torch.manual_seed(3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([paper_forward(model, image, [1, 2], keep_rate, method, **params) for image in x])
        with pb.prune(model, method, prune_layers=[1, 2], keep_rate=keep_rate, **params):
            got = model(x)
        assert not torch.allclose(got, model(x), atol=1e-3)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0), (got - expected).abs().max()


@pytest.mark.parametrize("method", ["dpc_knn", "kmedoids"])
def test_image_alone_or_among_copies_gives_the_same_clusters(method):
    """A batched initialisation must not couple images: one image, then eight different ones around it."""
    model = tiny_timm()
    torch.manual_seed(4)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad(), pb.prune(model, method, prune_layers=[1, 2, 3], keep_rate=0.6) as h:
        together = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in (0, 5)])
    assert h.stats()["tokens_per_layer"] == [65, 40, 25, 16]
    assert h.stats()["mlp_tokens_per_layer"] == [65, 40, 25, 16]  # each block's MLP sees every token entering it
    assert torch.allclose(together[[0, 5]], alone, atol=1e-5, rtol=0)


def test_dpc_knn_defaults_and_sizes():
    model = tiny_timm(global_pool="avg")
    with pb.prune(model, "dpc_knn", prune_layers=[1], keep_rate=0.25) as h, torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        size = h.token_run.size[..., 0]
    assert h.describe()[0]["params"] == {"keep_rate": 0.25, "prune_layers": [1], "k_neighbors": 5}
    assert size.shape == (2, 17) and torch.equal(size.sum(dim=1), torch.full((2,), 65.0))


@pytest.mark.parametrize("method,params,match", [("dpc_knn", {"k_neighbors": 0}, "k_neighbors=0 is out of range"),
                                                 ("kmedoids", {"cluster_iters": -1}, "cluster_iters=-1 is out of range"),
                                                 ("kmedoids", {"keep": 5}, "unknown parameter"),
                                                 ("dpc_knn", {"prune_layers": [0, 2]}, r"block 0, out of range \[1, 3\]"),
                                                 ("kmedoids", {"prune_layers": [4]}, r"out of range \[0, 3\]")])
def test_bad_parameters(method, params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), method, **params)
