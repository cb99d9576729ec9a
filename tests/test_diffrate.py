"""diffrate written out independently (one image at a time, explicit attention, a loop over merged tokens)
against the strategy in float64, and its rate search on a tiny model (target reached, weights untouched,
the same rates twice)."""
import math
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.run_config import _resolved_params
from pruning_bench.measure.analytic import analytic_macs


def reference_logits(vit, image, prune, merge):
    """Per block: attention with log(size) added to the logits, its residual, the patch tokens sorted by the
    class token's head-mean attention, the first prune[l] kept, every later token of those past merge[l]
    averaged (plain mean) into its most cosine-similar earlier token (not the class token), whose size grows
    by the absorbed size times that similarity; then the MLP."""
    x = vit._pos_embed(vit.patch_embed(image[None]))[0]
    size = torch.ones(len(x), dtype=x.dtype)
    for block, p, m in zip(vit.blocks, prune, merge):
        attn = block.attn
        q, k, v = attn.qkv(block.norm1(x)).reshape(len(x), 3, attn.num_heads, -1).permute(1, 2, 0, 3)
        weights = ((q @ k.transpose(-2, -1)) * attn.scale + size.log()).softmax(-1)
        x = x + attn.proj((weights @ v).transpose(0, 1).reshape(len(x), -1))
        ranked = sorted(range(1, len(x)), key=lambda j: -float(weights[:, 0, j].mean()))
        order = [0] + ranked[:max(p, 1) - 1]
        x, size = x[order], size[order]
        if m < len(x):
            unit = x / x.norm(dim=-1, keepdim=True)
            total, count, grown = x[:m].clone(), torch.ones(m, dtype=x.dtype), size[:m].clone()
            for j in range(m, len(x)):
                similarity = [-math.inf] + [float(unit[j] @ unit[i]) for i in range(1, m)]
                best = max(range(m), key=lambda i: similarity[i])
                total[best] += x[j]
                count[best] += 1
                grown[best] += size[j] * similarity[best]
            x, size = total / count[:, None], grown
        x = x + block.mlp(block.norm2(x))
    return vit.forward_head(vit.norm(x)[None])[0], len(x)


def _peaky_model(scale, depth=4):
    model = tiny_timm(depth=depth).double()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:128] *= scale
    return model


SCHEDULES = [([65, 50, 40, 30], [65, 44, 33, 20]),  # prune then merge in every block
             ([65, 60, 60, 12], [65, 44, 70, 70]),  # merge only, then pruning only
             ([65, 65, 40, 3], [65, 31, 28, 3])]    # the authors' last block: class token + 2


@pytest.mark.parametrize("scale", [1, 10])
@pytest.mark.parametrize("prune,merge", SCHEDULES)
def test_diffrate_equals_the_algorithm_written_out(scale, prune, merge):
    model = _peaky_model(scale)
    torch.manual_seed(4)
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        expected = [reference_logits(model, image, prune, merge) for image in images]
        with pb.prune(model, "diffrate", prune_kept_num=prune, merge_kept_num=merge) as h:
            got = model(images)
            stats = h.stats()
    want = torch.stack([logits for logits, _ in expected])
    assert (got - want).abs().max() < 1e-10
    assert stats["mlp_tokens_per_layer"][-1] == expected[0][1]
    assert stats["prune_kept_num"] == prune and stats["merge_kept_num"] == merge
    # each image alone gives its row of the batch
    with torch.no_grad(), pb.prune(model, "diffrate", prune_kept_num=prune, merge_kept_num=merge):
        alone = model(images[2:3])
    assert (alone[0] - got[2]).abs().max() < 1e-10


def test_tokens_entering_each_block_follow_the_counts():
    model = tiny_timm(depth=4)
    with torch.no_grad(), pb.prune(model, "diffrate", prune_kept_num=[100, 50, 60, 30],
                                   merge_kept_num=[100, 44, 50, 40]) as h:
        model(torch.randn(2, 3, 32, 32))
    assert h.stats()["tokens_per_layer"] == [65, 65, 44, 44]
    assert h.stats()["mlp_tokens_per_layer"] == [65, 44, 44, 30]


@pytest.mark.parametrize("params,named", [
    ({"prune_kept_num": [65, 40]}, "merge_kept_num"),
    ({}, "calibration"),
    ({"prune_kept_num": [65, 0], "merge_kept_num": [65, 40]}, "prune_kept_num[1]"),
    ({"prune_kept_num": 40, "merge_kept_num": [65, 40]}, "prune_kept_num"),
    ({"calibration": [], "granularity": 0}, "granularity"),
    ({"calibration": [], "target_ratio": 1.5}, "target_ratio"),
    ({"calibration": [], "arch_lr": 0.01, "arch_min_lr": 0.1}, "arch_min_lr"),
])
def test_bad_parameters_name_themselves(params, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        pb.prune(tiny_timm(depth=4), "diffrate", **params)


def test_too_many_counts_for_the_model_is_refused():
    with pytest.raises(ValueError, match="prune_kept_num has 5 entries"):
        pb.prune(tiny_timm(depth=4), "diffrate", prune_kept_num=[65] * 5, merge_kept_num=[65] * 4)


def test_the_command_line_supplies_calibration_images_for_the_search():
    resolved, needs_calibration = _resolved_params("diffrate", {"target_ratio": 0.7})
    assert needs_calibration and resolved["target_ratio"] == 0.7 and "calibration" not in resolved
    _, needs = _resolved_params("diffrate", {"prune_kept_num": [65, 40], "merge_kept_num": [65, 30]})
    assert not needs


# ---------------------------------------------------------------- the search


def _calibration(batches=1):
    torch.manual_seed(7)
    return [torch.randn(3, 3, 32, 32, dtype=torch.float64) for _ in range(batches)]


def _search(model, target, **extra):
    extra.setdefault("calibration", _calibration())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, "diffrate", target_ratio=target, **extra) as h:
            with torch.no_grad():
                out = model(_calibration()[0])
            params = h.describe()[0]["params"]
        # the record holds the searched counts: given back, they reproduce the run without a search
        assert params["prune_kept_num"] == h.stats()["prune_kept_num"]
        with pb.prune(model, "diffrate", prune_kept_num=params["prune_kept_num"],
                      merge_kept_num=params["merge_kept_num"]), torch.no_grad():
            assert torch.equal(model(_calibration()[0]), out)
        return h.stats(), out


@pytest.mark.parametrize("target", [0.5, 0.75])
def test_the_search_reaches_its_mac_target_and_leaves_the_weights_alone(target):
    model = tiny_timm(depth=4).double()
    model.blocks[1].train()  # a training flag and a frozen parameter the search must put back
    model.head.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats, _ = _search(model, target)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert model.blocks[1].training and not model.blocks[0].training
    assert not model.head.weight.requires_grad and model.blocks[0].attn.qkv.weight.requires_grad
    # the schedule evaluated is the searched one, and its analytic MACs are within 3% of the target
    schedule = {"tokens_per_layer": stats["tokens_per_layer"], "mlp_tokens_per_layer": stats["mlp_tokens_per_layer"]}
    ratio = analytic_macs(model, schedule).macs / analytic_macs(model).macs
    assert abs(ratio - target) < 0.03, (ratio, stats["prune_kept_num"], stats["merge_kept_num"])
    assert stats["search"]["analytic_mac_ratio"] == pytest.approx(ratio)
    assert stats["mlp_tokens_per_layer"] == [min(n, p, m) for n, p, m in
                                             zip(stats["tokens_per_layer"], stats["prune_kept_num"],
                                                 stats["merge_kept_num"])]
    assert stats["prune_kept_num"][0] == stats["merge_kept_num"][0] == 65  # block 0 never compresses


def test_the_search_is_deterministic():
    first, out1 = _search(tiny_timm(depth=4).double(), 0.6, epochs=2, calibration=_calibration(2))
    second, out2 = _search(tiny_timm(depth=4).double(), 0.6, epochs=2, calibration=_calibration(2))
    assert first["prune_kept_num"] == second["prune_kept_num"] and first["merge_kept_num"] == second["merge_kept_num"]
    assert torch.equal(out1, out2)


def test_an_empty_calibration_set_is_refused_before_the_model_changes():
    model = tiny_timm(depth=4)
    with pytest.raises(ValueError, match="calibration"):
        pb.prune(model, "diffrate", calibration=[])
    assert type(model.blocks[0]).__name__ == "Block" and "forward" not in model.blocks[0].__dict__


def test_a_search_that_stops_short_of_its_target_says_so():
    with pytest.warns(UserWarning, match="rate search ended at 0.[0-9]+ of the MACs for target_ratio=0.95"):
        handle = pb.prune(tiny_timm(depth=4), "diffrate", calibration=[torch.randn(2, 3, 32, 32)], target_ratio=0.95,
                          epochs=1)
    handle.restore()
