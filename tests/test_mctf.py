"""MCTF against its algorithm written one image and one token at a time (Lee et al., CVPR 2024): pairing
score = similarity x informativeness x size criteria, bidirectional bipartite matching (r // 2 A tokens
into B, then the rest of r B tokens into the A tokens left), merges weighted by received attention x
size, proportional attention; with one-step-ahead attention inside the merging block (the block's input
is merged and attends with the merged attention map) or without it (the block's output is merged), in
blocks 1 onwards, at most t - 10 tokens merged; the contract (restore, no-op, per-image, MACs on every family) runs from test_contract.py."""
import math
import warnings

import pytest
import torch

import pruning_bench as pb
from macs_at_scale import (
    check_macs_follow_schedule,
    tiny_timm,
)


def paper_mctf_step(x, size, received, r, taus, merged_before, bidirection=True):
    """One image: groups of original tokens that become one token each, then their weighted averages."""
    tau_sim, tau_info, tau_size = taus
    n = x.shape[0]
    a_tokens, b_tokens = list(range(0, n, 2)), list(range(1, n, 2))
    info = [1 / received[i].item() for i in range(n)]
    info = [v / max(info) for v in info]
    small = [1 / size[i].item() for i in range(n)]
    small = [v / max(small) for v in small]

    def score(a, b):
        if a == 0:  # the class token never merges
            return -math.inf
        s = ((torch.cosine_similarity(x[a], x[b], dim=0).item() + 1) / 2) ** (1 / tau_sim)
        s *= (info[a] * info[b]) ** (1 / tau_info)
        if merged_before:
            s *= (small[a] * small[b]) ** (1 / tau_size)
        return s

    r1 = r // 2 if bidirection else r
    best_b = {a: max(b_tokens, key=lambda b: score(a, b)) for a in a_tokens}
    edges = sorted(a_tokens, key=lambda a: -score(a, best_b[a]))
    groups = {t: [t] for t in range(n)}
    for a in edges[:r1]:
        groups[best_b[a]] += groups.pop(a)
    kept_a = sorted(edges[r1:])
    if bidirection:
        best_a = {b: max(kept_a, key=lambda a: score(a, b)) for b in b_tokens}
        edges2 = sorted(b_tokens, key=lambda b: -score(best_a[b], b))
        for b in edges2[: r - r1]:
            groups[best_a[b]] += groups.pop(b)
        kept_b = edges2[r - r1 :]
    else:
        kept_b = b_tokens
    weight = [received[i] * size[i] / size.max() for i in range(n)]
    order = kept_a + kept_b
    x_new = torch.stack([sum(weight[i] * x[i] for i in groups[t]) / sum(weight[i] for i in groups[t]) for t in order])
    size_new = torch.stack([sum(size[i] for i in groups[t]) for t in order])
    return x_new, size_new, [groups[t] for t in order], weight


def merged_attention(weights, groups, weight):
    """Heads x groups x groups: keys summed over a group, queries averaged with the merge weights."""
    rows = []
    for g in groups:
        keys = torch.stack([weights[:, :, h].sum(dim=-1) for h in groups], dim=-1)  # (heads, N, groups)
        rows.append(sum(weight[q] * keys[:, q] for q in g) / sum(weight[q] for q in g))
    return torch.stack(rows, dim=1)


def paper_mctf_forward(model, image, r_per_block, taus=(1.0, 20.0, 40.0), bidirection=True, ahead=True):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    size = torch.ones(x.shape[0], dtype=x.dtype)
    merged_before = False
    for block, r in zip(model.blocks, r_per_block):
        attn = block.attn
        heads = attn.num_heads
        r = min(r, x.shape[0] - 10, (x.shape[0] - 1) // 2) if r else 0  # the authors' cap

        def attention_map(x):
            q, k, _ = attn.qkv(block.norm1(x)).reshape(x.shape[0], 3, heads, -1).unbind(1)
            return (torch.einsum("nhd,mhd->hnm", q, k) * q.shape[-1] ** -0.5 + size.log()[None, None, :]).softmax(-1)

        def attend(x, weights):
            v = attn.qkv(block.norm1(x)).reshape(x.shape[0], 3, heads, -1)[:, 2]
            return attn.proj(torch.einsum("hnm,mhd->nhd", weights, v).reshape(x.shape[0], -1))

        weights = attention_map(x)
        received = weights.mean(dim=(0, 1))  # attention each token receives, over heads and queries
        if r and ahead:  # merge the block's input, then attend with the merged map
            x, size_new, groups, weight = paper_mctf_step(x, size, received, r, taus, merged_before, bidirection)
            x = x + block.ls1(attend(x, merged_attention(weights, groups, weight)))
            size, merged_before = size_new, True
        else:
            x = x + block.ls1(attend(x, weights))
        x = x + block.ls2(block.mlp(block.norm2(x)))
        if r and not ahead:  # merge the block's output
            x, size, _, _ = paper_mctf_step(x, size, received, r, taus, merged_before, bidirection)
            merged_before = True
    return model.forward_head(model.norm(x[None]))[0]


@pytest.mark.parametrize("params", [{"r": 8}, {"r": 8, "one_step_ahead": False}, {"r": [5, 0, 12, 3]},
                                    {"r": 7, "bidirection": False, "tau_info": 5.0, "activate_layer": [0, 2]},
                                    {"r": 25}])
def test_mctf_equals_the_papers_algorithm(params):
    model = tiny_timm().double()
    torch.manual_seed(4)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    r = params["r"]
    schedule = r + [0] * (4 - len(r)) if isinstance(r, list) else [r] * 4
    active = params.get("activate_layer", [1, 2, 3])
    schedule = [v if i in active else 0 for i, v in enumerate(schedule)]
    taus = (1.0, params.get("tau_info", 20.0), 40.0)
    ahead = params.get("one_step_ahead", True)
    with torch.no_grad():
        expected = torch.stack([paper_mctf_forward(model, im, schedule, taus, params.get("bidirection", True), ahead)
                                for im in images])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # r=25 is capped
            with pb.prune(model, "mctf", **params) as h:
                got = model(images)
    capped, n = [], 65
    for v in schedule:
        v = min(v, n - 10, (n - 1) // 2) if v else 0
        capped.append(v)
        n -= v
    stats = h.stats()
    assert stats["tokens_per_layer"] == [65 - sum(capped[:i]) for i in range(4)]
    # one-step-ahead merges before the block's MLP; without it the block's output is merged
    assert stats["mlp_tokens_per_layer"] == [65 - sum(capped[:i + ahead]) for i in range(4)]
    assert not torch.allclose(got, model(images), atol=1e-3)
    assert torch.allclose(got, expected, atol=1e-10, rtol=0), (got - expected).abs().max()



def test_mctf_macs_are_the_schedule_plus_its_own_scoring():
    """Beyond the formula, a merging block without one-step-ahead recomputes its attention map (N x N x width:
    the fused kernel does not return it) and the A-B similarity on the tokens (N/2 x N/2 x width)."""
    def scoring(dims, n):
        width = dims.blocks[0].attn_dim
        return n * n * width + ((n + 1) // 2) * (n // 2) * dims.embed_dim

    stats = check_macs_follow_schedule("mctf", {"r": 16, "one_step_ahead": False, "activate_layer": [0, 1, 2]},
                                       extra_per_block=scoring)
    assert stats["tokens_per_layer"] == [197, 181, 165]


@pytest.mark.parametrize("params,match", [
    ({"r": -3}, r"r=-3 is out of range \[0, inf\]"),
    ({"tau_info": -1}, r"tau_info=-1.0 is out of range \[0.0, inf\)"),
    ({"tau_sim": "x"}, "tau_sim must be a number"),
    ({"bidirection": 2}, "bidirection must be a boolean"),
    ({"one_step_ahead": "maybe"}, "one_step_ahead must be a boolean"),
    ({"activate_layer": [2, 1]}, "must be sorted"),
    ({"activate_layer": [5]}, r"activate_layer=\[5\] has block 5, out of range \[0, 3\]"),
    ({"r": [1] * 6}, "r has 6 entries but the model has 4 blocks"),
])
def test_mctf_bad_parameters(params, match):
    with pytest.raises(ValueError, match=match):
        pb.prune(tiny_timm(), "mctf", **params)
