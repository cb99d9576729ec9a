"""Family adapters: what each one answers, and the rotary embedding following the tokens on Eva."""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import ALL_FAMILIES, tiny_eva, tiny_hf_clip, tiny_open_clip_eva
from pruning_bench.families import encode_images, locate


@pytest.mark.parametrize("name", sorted(ALL_FAMILIES))
def test_every_family_is_located_with_consistent_answers(name):
    build, run = ALL_FAMILIES[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build()
    family = locate(model)
    dims = family.dims()
    assert dims.depth == len(family.blocks) == 4
    assert family.patch_grid() == (8, 8)
    assert dims.num_tokens() == 64 + family.n_prefix
    for block in family.blocks:
        family.block_layout(block)  # every block is one this adapter knows
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(family.encoder(x), run(model, x))  # the encoder runs the model's image path
        features, logits = family.features(x)
        assert torch.equal(encode_images(model, x), features) and features.shape[0] == 2
        assert logits is None or torch.equal(logits, run(model, x))  # a classifier's logits are its output
        counts = []
        hooks = [b.register_forward_pre_hook(lambda m, a, kw=None: counts.append(a[0].shape[1] if a else None))
                 for b in family.blocks]
        family.encoder(x)
        for hook in hooks:
            hook.remove()
    assert counts == [dims.num_tokens()] * 4


def test_eva_rotary_embedding_follows_the_kept_tokens():
    """Blocks after a selection must rotate each kept token by its own patch position: the patched model
    equals Eva's own blocks run by hand on the kept tokens with the matching rows of the rotary table."""
    model = tiny_eva()
    x = torch.randn(1, 3, 32, 32)
    with pb.prune(model, "cls_topk", keep=20, start_layer=1) as h, torch.no_grad():
        h.token_run.record_attention = True
        got = model.forward_features(x)
        kept = h.token_run.records[1]["kept_index"][0]
    with torch.no_grad():
        t, rope = model._pos_embed(model.patch_embed(x))
        t = model.norm_pre(t)
        t = model.blocks[0](t, rope=rope)
        block = model.blocks[1]
        t = t + block.drop_path1(block.gamma_1 * block.attn(block.norm1(t), rope=rope))
        t = t[:, kept]
        rope_kept = rope[kept[1:] - 1]  # prefix (class token) has no rotary row
        t = t + block.drop_path2(block.gamma_2 * block.mlp(block.norm2(t)))
        for block in model.blocks[2:]:
            t = block(t, rope=rope_kept)
        expected = model.norm(t)
    assert got.shape == expected.shape == (1, 21, 64)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(rope_kept, rope[:20])  # the kept rows are not simply the first ones


def test_eva_merged_token_rotation_is_the_size_weighted_mean():
    model = tiny_eva()
    x = torch.randn(2, 3, 32, 32)
    with pb.prune(model, "tome", r=8) as h, torch.no_grad():
        model(x)
        run = h.token_run
        assert run.rope is not None and run.rope.shape[:2] == run.size.shape[:2]
        # a token holding k patches carries the mean of k rotation rows: its (cos, sin) pairs are no longer
        # on the unit circle unless the patches shared a position, so merged tokens have norm < kept ones
        half = run.rope.shape[-1] // 2
        sin, cos = run.rope[..., :half], run.rope[..., half:]
        radius = (sin ** 2 + cos ** 2)[:, run.n_prefix:]
        single = run.size[:, run.n_prefix:, 0] == 1
        assert torch.allclose(radius[single], torch.ones_like(radius[single]), atol=1e-5)
        assert (radius[~single] < 1 - 1e-4).any()


def test_open_clip_eva02_tower_and_hf_clip_model_prune_and_count():
    """open_clip's EVA02 configs put a timm Eva in `visual.trunk`; transformers CLIPModel keeps its text side."""
    for model, size in ((tiny_open_clip_eva(), 224), (tiny_hf_clip("model"), 32)):
        x = torch.randn(1, 3, size, size)
        base = pb.count_flops(model, x).gmacs
        with pb.prune(model, "tome", r=4) as h:
            pruned = pb.count_flops(model, x).gmacs
            tokens = h.stats()["tokens_per_layer"]
        assert tokens[1] == tokens[0] - 4 and pruned < base


def test_clip_benchmark_eval_prunes_open_clip_eva02(monkeypatch, tmp_path):
    """`clip_benchmark eval --model EVA02-B-16 --pretrained '' --enable_pruning ...` (its tower: a timm Eva trunk)."""
    import json
    import sys

    from clip_benchmark import cli

    import tiny_clip as tiny

    tiny.write_webdataset(tmp_path / "wds", n_test=2, n_train=2, image_size=224)
    monkeypatch.setattr(sys, "argv", [
        "clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", str(tmp_path / "wds"), "--model",
        "EVA02-B-16", "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "2", "--num_workers",
        "0", "--no_amp", "--quiet", "--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=8",
        "--throughput_repeats", "1", "--output", str(tmp_path / "{model}_{pruning}.json")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cli.main()
    (path,) = tmp_path.glob("EVA02-B-16_tome*.json")
    result = json.loads(path.read_text())
    assert result["pruning"]["stats"]["tokens_per_layer"] == [197 - 8 * i for i in range(12)]
    assert result["pruning"]["effective"] and 0.7 < result["efficiency"]["gmacs"] / 17.6 < 0.8
