"""atc (Agglomerative Token Clustering) written out from its definition, one image at a time, against the strategy.

The reference below runs a timm ViT block by block with explicit attention (log of token sizes added to
the logits once tokens have merged) and clusters each image on its own: cluster-to-cluster distances are
recomputed from the token distances by the linkage's definition at every merge (no distance update rule),
and the closest pair merges until K clusters are left. The strategy's batched merge loop must give the same
logits in float64, and the same partitions as scipy's dendrogram cut at K clusters.
"""
import warnings

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import linkage as scipy_linkage
from scipy.spatial.distance import squareform

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.strategies.atc import agglomerate, cosine_distances

DEFINITIONS = {"single": np.min, "complete": np.max, "average": np.mean}


def clusters_by_definition(distance: np.ndarray, n_clusters: int, linkage: str) -> list[list[int]]:
    """Greedy agglomeration of one image's tokens; each cluster a sorted list of token positions."""
    clusters = {i: [i] for i in range(len(distance))}  # keyed by first token
    between = DEFINITIONS[linkage]
    gap = {(i, j): distance[i, j] for i in clusters for j in clusters if i < j}
    while len(clusters) > n_clusters:
        (i, j), _ = min(gap.items(), key=lambda item: (item[1], item[0]))
        clusters[i] = sorted(clusters[i] + clusters.pop(j))
        gap = {pair: d for pair, d in gap.items() if i not in pair and j not in pair}
        for other, tokens in clusters.items():  # the new cluster's distances, from its tokens
            if other != i:
                gap[min(i, other), max(i, other)] = between(distance[np.ix_(clusters[i], tokens)])
    return [clusters[i] for i in sorted(clusters)]


def reference_logits(vit, image, layers, keep_rate, linkage, prop_attn=True):
    x = vit._pos_embed(vit.patch_embed(image[None]))[0]
    patches = x.shape[0] - 1
    size = torch.ones(len(x), dtype=x.dtype)
    for i, block in enumerate(vit.blocks):
        attn = block.attn
        heads = attn.num_heads
        q, k, v = attn.qkv(block.norm1(x)).reshape(len(x), 3, heads, -1).permute(1, 2, 0, 3)
        logits = (q @ k.transpose(-2, -1)) * attn.scale
        if prop_attn:
            logits = logits + size.log()
        x = x + attn.proj((logits.softmax(-1) @ v).transpose(0, 1).reshape(len(x), -1))
        if i in layers:
            n_clusters = int(patches * keep_rate ** (layers.index(i) + 1))
            keys = k.mean(0)[1:]
            keys = keys / keys.norm(dim=-1, keepdim=True)
            distance = (1 - keys @ keys.T).numpy()
            groups = [[0]] + [[m + 1 for m in c] for c in clusters_by_definition(distance, n_clusters, linkage)]
            x = torch.stack([(x[g] * size[g, None]).sum(0) / size[g].sum() for g in groups])
            size = torch.stack([size[g].sum() for g in groups])
        x = x + block.mlp(block.norm2(x))
    return vit.head(vit.norm(x)[0])


def _peaky_model(scale):
    model = tiny_timm(depth=4, img_size=24).double()  # 36 patches
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:128] *= scale
    return model


@pytest.mark.parametrize("linkage", ["single", "complete", "average"])
@pytest.mark.parametrize("scale,keep_rate", [(1, 0.6), (6, 0.5)])
def test_atc_equals_the_algorithm_written_out_per_image(linkage, scale, keep_rate):
    model = _peaky_model(scale)
    torch.manual_seed(3)
    x = torch.randn(3, 3, 24, 24, dtype=torch.float64)
    layers = [1, 2]
    with torch.no_grad():
        expected = torch.stack([reference_logits(model, image, layers, keep_rate, linkage) for image in x])
        with pb.prune(model, "atc", prune_layers=layers, keep_rate=keep_rate, linkage=linkage) as h:
            got = model(x)
            stats = h.stats()
        assert not torch.allclose(got, model(x), atol=1e-3)  # the clustering changed the output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    first, second = int(36 * keep_rate), int(36 * keep_rate**2)
    assert stats["tokens_per_layer"] == [37, 37, 1 + first, 1 + second]
    assert stats["mlp_tokens_per_layer"] == [37, 1 + first, 1 + second, 1 + second]  # clustered before the MLP


def test_atc_without_proportional_attention_equals_the_algorithm_written_out():
    model = _peaky_model(3)
    torch.manual_seed(5)
    x = torch.randn(2, 3, 24, 24, dtype=torch.float64)
    with torch.no_grad():
        expected = torch.stack([reference_logits(model, image, [0, 2], 0.7, "average", prop_attn=False) for image in x])
        with pb.prune(model, "atc", prune_layers=[0, 2], keep_rate=0.7, prop_attn=False):
            got = model(x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def scipy_cut(distance: np.ndarray, n_clusters: int, linkage: str) -> set[frozenset]:
    """The partition left by the first P - K merges of scipy's dendrogram (scikit-learn's cut at K clusters)."""
    P = len(distance)
    merges = scipy_linkage(squareform(distance, checks=False), method=linkage)
    members = {i: {i} for i in range(P)}
    for step, (a, b, _, _) in enumerate(merges[: P - n_clusters]):
        members[P + step] = members.pop(int(a)) | members.pop(int(b))
    return {frozenset(m) for m in members.values()}


@pytest.mark.parametrize("linkage", ["single", "complete", "average"])
def test_batched_merge_loop_gives_scipys_partitions(linkage):
    torch.manual_seed(0)
    metric = torch.randn(3, 120, 16, dtype=torch.float64)
    distance = cosine_distances(metric)
    for n_clusters in (84, 30, 1):
        assign = agglomerate(distance, n_clusters, linkage)
        for b in range(3):
            got = {frozenset(np.flatnonzero(assign[b].numpy() == c).tolist()) for c in range(n_clusters)}
            assert got == scipy_cut(distance[b].numpy(), n_clusters, linkage)
        firsts = [int((row == c).nonzero()[0]) for row in assign for c in range(n_clusters)]
        assert all(a < b for a, b in zip(firsts, firsts[1:]) if b != 0)  # numbered by their first token


def test_linkages_give_different_clusters():
    torch.manual_seed(1)
    distance = cosine_distances(torch.randn(1, 60, 8, dtype=torch.float64))
    parts = {name: tuple(agglomerate(distance, 20, name)[0].tolist()) for name in DEFINITIONS}
    assert len(set(parts.values())) == 3


def test_cluster_counts_follow_the_authors_rule_and_sizes_add_up():
    model = tiny_timm(global_pool="avg")  # 64 patches: int(64 x 0.7^s) = 44, 31, 21
    with torch.no_grad(), pb.prune(model, "atc", prune_layers=[1, 2, 3], keep_rate=0.7) as h:
        model(torch.randn(2, 3, 32, 32))
        size = h.token_run.size[..., 0]
    assert h.stats()["tokens_per_layer"] == [65, 65, 45, 32]
    assert size.shape == (2, 22) and torch.equal(size.sum(dim=1), torch.full((2,), 65.0))
    assert h.describe()[0]["params"] == {"prune_layers": [1, 2, 3], "keep_rate": 0.7, "linkage": "average",
                                         "prop_attn": True}


def test_defaults_are_the_authors():
    defaults = pb.registry.get_strategy("atc").defaults
    assert defaults == {"prune_layers": [3, 6, 9], "keep_rate": 0.7, "linkage": "average", "prop_attn": True}


@pytest.mark.parametrize("params,match", [({"linkage": "ward"}, "linkage='ward' is not one of"),
                                          ({"keep_rate": 0}, "keep_rate=0.0 is out of range"),
                                          ({"prune_layers": [2, 1]}, "prune_layers"),
                                          ({"prune_layers": [4]}, r"out of range \[0, 3\]"),
                                          ({"r": 3}, "unknown parameter")])
def test_bad_parameters_name_themselves(params, match):
    with warnings.catch_warnings(), pytest.raises(ValueError, match=match):
        warnings.simplefilter("ignore")
        pb.prune(tiny_timm(), "atc", **params)
