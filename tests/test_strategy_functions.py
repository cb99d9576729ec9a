"""The decision functions alone, on hand-made tensors: no model involved."""
import torch

from pruning_bench.strategies.anchor_diversity import anchor_diversity_scores, select_anchor_diversity
from pruning_bench.strategies.base import AttentionProbe
from pruning_bench.strategies.cls_topk import cls_attention
from pruning_bench.strategies.tome import bipartite_soft_matching
from pruning_bench.strategies.tome_cap import max_merges
from pruning_bench.strategies.random_drop import random_positions


def _probe(B=3, H=2, N=12, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(B, H, N, D, generator=g), torch.randn(B, H, N, D, generator=g)
    return AttentionProbe(q, k, lambda qq, kk: (qq * D**-0.5) @ kk.transpose(-2, -1))


def test_cls_attention_is_head_averaged_softmax_row():
    probe = _probe()
    full = ((probe.q * 8**-0.5) @ probe.k.transpose(-2, -1)).softmax(-1).mean(1)
    assert torch.allclose(cls_attention(probe), full[:, 0], atol=1e-6)
    rows = torch.tensor([[3, 5]] * 3)
    assert torch.allclose(probe.attention_rows(rows), full[:, [3, 5]], atol=1e-6)


def test_anchor_diversity_alpha_extremes_rank_by_one_term():
    probe, x = _probe(), torch.randn(3, 12, 16)
    anchors = select_anchor_diversity(x, probe, 1, 2, 0, 0.5)
    importance, diversity = anchor_diversity_scores(x, probe, anchors)
    for alpha, term in ((1.0, importance), (0.0, diversity)):
        kept = select_anchor_diversity(x, probe, 1, 2, 4, alpha)
        assert torch.equal(kept[:, :2], anchors)
        masked = term.clone()
        masked[:, 0] = float("-inf")
        masked.scatter_(1, anchors, float("-inf"))
        assert torch.equal(kept[:, 2:].sort(1).values, masked.topk(4, dim=1).indices.sort(1).values)


def test_importance_direction_reads_rows_or_columns_of_the_attention_map():
    probe, x = _probe(), torch.randn(3, 12, 16)
    full = ((probe.q * 8**-0.5) @ probe.k.transpose(-2, -1)).softmax(-1).mean(1)  # (B, queries, keys)
    anchors = torch.tensor([[2, 7], [1, 4], [9, 3]])
    paid_by_anchors = torch.stack([full[b, anchors[b]].mean(0) for b in range(3)])  # anchors as queries
    paid_to_anchors = torch.stack([full[b][:, anchors[b]].mean(1) for b in range(3)])  # anchors as keys
    got, _ = anchor_diversity_scores(x, probe, anchors)
    assert torch.allclose(got, paid_by_anchors, atol=1e-6)
    got, _ = anchor_diversity_scores(x, probe, anchors, "token_to_anchor")
    assert torch.allclose(got, paid_to_anchors, atol=1e-6)
    assert not torch.allclose(paid_by_anchors, paid_to_anchors, atol=1e-3)


def test_anchors_are_top_cls_attention_and_diversity_in_range():
    probe, x = _probe(), torch.randn(3, 12, 16)
    anchors = select_anchor_diversity(x, probe, 1, 3, 0, 0.5)
    att = cls_attention(probe)[:, 1:]
    assert torch.equal(anchors.sort(1).values, (att.topk(3, dim=1).indices + 1).sort(1).values)
    _, diversity = anchor_diversity_scores(x, probe, anchors)
    assert diversity.min() >= -1e-6 and diversity.max() <= 2 + 1e-6
    assert torch.allclose(diversity.gather(1, anchors), torch.zeros(3, 3), atol=1e-6)


def test_selection_is_per_image():
    probe, x = _probe(B=4), torch.randn(4, 12, 16)
    together = select_anchor_diversity(x, probe, 1, 2, 3, 0.5)
    single = AttentionProbe(probe.q[2:3], probe.k[2:3], probe.logit_fn)
    assert torch.equal(select_anchor_diversity(x[2:3], single, 1, 2, 3, 0.5), together[2:3])


def test_bipartite_matching_merges_identical_tokens_first():
    x = torch.randn(1, 9, 4)
    x[0, 4] = x[0, 3]  # token 4 (set A) duplicates token 3 (set B)
    merge = bipartite_soft_matching(x, 1, n_prefix=1)
    size = torch.ones(1, 9, 1)
    merged, new_size = merge.reduce_features(x, size)
    assert merged.shape == (1, 8, 4) and new_size.sum() == 9
    assert torch.equal(merged[0, 0], x[0, 0])  # class token untouched and first
    assert new_size.max() == 2
    row = new_size[0, :, 0].argmax()
    assert torch.allclose(merged[0, row], x[0, 3])


def test_max_merges_respects_participants():
    assert max_merges(197, 1, None) == 98
    participants = torch.zeros(11, dtype=torch.bool)
    participants[[2, 4, 5]] = True
    assert max_merges(11, 1, participants) == 2  # two in A (2, 4), one in B (5)
    participants[5] = False
    assert max_merges(11, 1, participants) == 0


def test_random_positions_seeded_and_shared_by_images():
    a = random_positions(64, 10, seed=1, layer=2, n_prefix=1, batch=3, device="cpu")
    b = random_positions(64, 10, seed=1, layer=2, n_prefix=1, batch=5, device="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[0], a[2])
    assert a.min() >= 1 and a.max() <= 64 and a[0].unique().numel() == 10
    assert not torch.equal(a[0], random_positions(64, 10, seed=2, layer=2, n_prefix=1, batch=1, device="cpu")[0])
