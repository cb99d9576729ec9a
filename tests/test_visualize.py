"""Token maps: who holds each patch after a block (live or from an attention file), drawn as a valid PNG grid."""
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import pruning_bench as pb
from conftest import tiny_open_clip, tiny_timm
from pruning_bench.cli import build_parser
import tiny_clip as tiny
from pruning_bench.measure import extract_attention as measure_attention
from pruning_bench.record import attention
from pruning_bench.commands import visualize as visualize_command
from pruning_bench.visualize import (display_images, figure_pixels, live_token_maps, load_record,
                                     maps_from_kept_indices, maps_from_record, maps_from_source, recorded_images,
                                     render_token_maps)
from pruning_bench.visualize.draw import DARKEN, overlay

warnings.filterwarnings("ignore", message=".*shardshuffle.*")


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(3, 3, 32, 32)


def assert_png(path, size):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        assert np.asarray(image.convert("RGB")).std() > 10


# ---------------------------------------------------------------- maps from sources and indices


def test_source_map_gives_owner_and_group_size():
    # one prefix token + 4 patches; token 1 holds patches 0 and 2 (merged), token 2 holds patch 3; patch 1 dropped
    source = torch.tensor([[[1, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 0, 0, 1.0]]])
    owner, size = maps_from_source(source, n_prefix=1)
    assert owner.tolist() == [[1, -1, 1, 2]] and size.tolist() == [[2, 0, 2, 1]]


def test_kept_indices_compose_across_blocks():
    # 1 + 4 tokens; block 0 keeps all, block 1 keeps positions [0, 2, 3, 4], block 2 keeps [0, 2] of those
    kept = [None, torch.tensor([[0, 2, 3, 4]]), torch.tensor([[0, 2]])]
    maps = maps_from_kept_indices(kept, [5, 5, 4], n_prefix=1, n_images=1)
    assert maps[0][0].tolist() == [[1, 2, 3, 4]]
    assert maps[1][0].tolist() == [[-1, 1, 2, 3]]
    assert maps[2][0].tolist() == [[-1, -1, 1, -1]]  # input patch 2 (token 3) survives as token 1


def test_merging_blocks_cannot_be_followed_from_indices():
    maps = maps_from_kept_indices([None, None, None], [5, 3, 3], n_prefix=1, n_images=2)
    assert maps[0] is None and maps[1] is None and maps[2] is None


# ---------------------------------------------------------------- live models


@pytest.mark.parametrize("build, prefix", [
    (lambda: tiny_timm(), 1), (lambda: tiny_timm(reg_tokens=4), 5), (lambda: tiny_open_clip(), 1)])
def test_selection_keeps_exactly_the_budget(build, prefix, images):
    model = build()
    maps = live_token_maps(model, images, "cls_topk", {"keep": 16}, blocks=[0, 1, 3])
    assert maps.grid == (8, 8) and maps.tokens == [64 + prefix, 16 + prefix, 16 + prefix]
    assert (maps.owner[0] >= 0).all() and (maps.group_size[0] == 1).all()  # block 0 keeps everything
    for block in (1, 2):
        kept = maps.owner[block] >= 0
        assert (kept.sum(axis=1) == 16).all() and (maps.group_size[block][kept] == 1).all()
        assert sorted(maps.owner[block][0][kept[0]]) == list(range(prefix, prefix + 16))  # tokens after the prefix
    assert np.array_equal(maps.owner[1] >= 0, maps.owner[2] >= 0)  # pruned once, in block 1


def test_merging_accounts_for_every_patch(images):
    model = tiny_timm()
    maps = live_token_maps(model, images, "tome", {"r": 8})
    assert maps.blocks == [0, 1, 2, 3] and maps.tokens == [57, 49, 41, 33]
    assert (maps.owner >= 0).all()  # merging never drops a patch
    for b, tokens in enumerate(maps.tokens):
        for i in range(len(images)):
            owners, counts = np.unique(maps.owner[b, i], return_counts=True)
            assert len(owners) == tokens - 1  # every token but the class token holds patches
            assert np.array_equal(maps.group_size[b, i], counts[np.searchsorted(owners, maps.owner[b, i])])
    assert maps.merged()[-1].any() and not maps.merged()[0].all()


def test_maps_match_the_size_tome_tracks(images):
    """Group sizes equal ToMe's own per-token size after the last block (an independent account)."""
    model = tiny_timm()
    with pb.prune(model, "tome", r=8) as handle:
        run = handle._attachments[0].run
        with torch.no_grad():
            model(images)
        sizes = run.size[:, 1:, 0].round().long()  # (B, tokens - 1), patch tokens
    maps = live_token_maps(model, images, "tome", {"r": 8}, blocks=[3])
    for i in range(len(images)):
        counts = np.bincount(maps.owner[0, i] - 1, minlength=sizes.shape[1])
        assert counts.tolist() == sizes[i].tolist()


def test_model_is_restored_and_bad_input_refused(images):
    model = tiny_timm()
    before = model(images)
    live_token_maps(model, images, "tome", {"r": 4})
    assert torch.equal(model(images), before)
    with pytest.raises(ValueError, match="out of range"):
        live_token_maps(model, images, "tome", {"r": 4}, blocks=[4])
    with pytest.raises(ValueError, match="not a token strategy"):
        live_token_maps(model, images, "layer_drop", {"drop": [1]})
    assert torch.equal(model(images), before)


def test_live_maps_equal_the_recorded_indices(images):
    """The two sources of a selection map (source tracing and the attention record's indices) agree."""
    model = tiny_timm()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, "anchor_diversity", k_anchors=3, top_m=9) as handle:
            record = measure_attention.record_attention(model, images, handle)
    record.update(strategy="anchor_diversity", params={"k_anchors": 3, "top_m": 9})
    from_file = maps_from_record(record, blocks=[0, 1, 3])
    live = live_token_maps(model, images, "anchor_diversity", {"k_anchors": 3, "top_m": 9}, blocks=[0, 1, 3])
    assert np.array_equal(from_file.owner, live.owner) and from_file.tokens == live.tokens == [65, 13, 13]


# ---------------------------------------------------------------- drawing


def test_overlay_darkens_dropped_colours_merged_keeps_singletons():
    image = np.full((8, 8, 3), 0.6)
    owner = np.array([-1, 1, 2, 2])  # 2x2 grid: dropped, alone, merged pair
    size = np.array([0, 1, 2, 2])
    out = overlay(image, owner, size, (2, 2))
    assert np.allclose(out[1:3, 1:3], 0.6 * DARKEN)  # inside the dropped patch
    assert np.allclose(out[1:3, 5:7], 0.6)  # inside the lone patch: untouched
    merged = out[5:7, 1:7]
    assert not np.allclose(merged, 0.6) and np.allclose(merged, merged[0, 0])  # one colour over the group
    assert not np.allclose(out[4, 1:7], out[5, 1:7])  # a border between token 1 and the merged group


@pytest.mark.parametrize("n_images, blocks", [(1, [1]), (3, [0, 1, 2, 3])])
def test_render_writes_a_png_of_the_expected_size(tmp_path, images, n_images, blocks):
    model = tiny_timm()
    maps = live_token_maps(model, images[:n_images], "tome", {"r": 8}, blocks=blocks)
    display = np.random.default_rng(0).random((n_images, 32, 32, 3))
    path = render_token_maps(maps, display, tmp_path / "maps.png")
    assert figure_pixels(n_images, len(blocks)) == (200 * (len(blocks) + 1), 200 * n_images + 45)
    assert_png(path, figure_pixels(n_images, len(blocks)))


# ---------------------------------------------------------------- from an attention file of a clip_benchmark run


@pytest.fixture(scope="module")
def cb_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vis")
    return {"model": tiny.register_tiny_clip(root), "root": str(tiny.write_webdataset(root / "wds", n_test=6, n_train=0))}


def clip_benchmark_eval(monkeypatch, data, out, *extra):
    from clip_benchmark import cli

    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", data["root"], "--model", data["model"],
            "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "4", "--num_workers", "0",
            "--no_amp", "--quiet", "--output", str(out / "{pruning}.json"), *extra]
    loaded = []
    original = cli.load_clip

    def spy(*a, **kw):
        loaded.append(original(*a, **kw))
        return loaded[-1]

    monkeypatch.setattr(cli, "load_clip", spy)
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()
    return loaded[0]


def test_attention_file_maps_match_the_evaluated_images(monkeypatch, tmp_path, cb_data):
    """Maps read from the file equal live maps of the same model on the images re-read from the data set."""
    from pruning_bench.evaluate.data import DecodedImages, load

    path = tmp_path / "attention.pt"
    model, transform, _ = clip_benchmark_eval(
        monkeypatch, cb_data, tmp_path, "--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=5",
        "--extract_attention", "--attention_output", str(path), "--attention_images", "3")
    maps = maps_from_record(load_record(path))
    assert maps.grid == (4, 4) and maps.blocks == [1, 2, 3] and maps.tokens == [6, 6, 6]
    decoded = DecodedImages(load("wds/tiny", cb_data["root"], "test", 3), transform)
    batch = torch.stack([decoded[i][0] for i in range(3)])
    live = live_token_maps(model, batch, "cls_topk", {"keep": 5}, blocks=maps.blocks)
    assert np.array_equal(maps.owner, live.owner)
    # without images in the file, they are re-read from the data set: the same pixels the encoder saw
    seen = recorded_images(load_record(path))
    reread = display_images("wds/tiny", cb_data["root"], [0, 1, 2], 32)
    assert seen.shape == reread.shape == (3, 32, 32, 3) and np.abs(seen - reread).max() <= 1.5 / 255

    parser = build_parser({"visualize": visualize_command})
    args = parser.parse_args(["visualize", "--attention_file", str(path), "--dataset_root", cb_data["root"],
                              "-o", str(tmp_path / "maps.png")])
    assert args._run(args) == 0
    assert_png(tmp_path / "maps.png", figure_pixels(3, 3))


def test_attention_file_of_a_merging_run_draws_the_merges(monkeypatch, tmp_path, cb_data, capsys):
    """ToMe leaves no kept indices; the file's `owner` maps equal the live maps of the same model and images."""
    path = tmp_path / "attention.pt"
    from pruning_bench.evaluate.data import DecodedImages, load

    model, transform, _ = clip_benchmark_eval(monkeypatch, cb_data, tmp_path, "--enable_pruning", "--prune_strategy", "tome",
                                      "--prune_param", "r=2", "--extract_attention", "--attention_output", str(path))
    record = load_record(path)
    maps = maps_from_record(record)
    assert maps.merged().any() and not maps.dropped().any()  # merging: every patch is held, some in groups
    decoded = DecodedImages(load("wds/tiny", cb_data["root"], "test", len(record["images"])), transform)
    batch = torch.stack([decoded[i][0] for i in range(len(decoded))])  # the images the encoder saw
    live = live_token_maps(model, batch, "tome", {"r": 2}, blocks=maps.blocks)
    assert np.array_equal(maps.owner, live.owner) and np.array_equal(maps.group_size, live.group_size)
    assert maps.tokens == live.tokens

    parser = build_parser({"visualize": visualize_command})
    args = parser.parse_args(["visualize", "--attention_file", str(path), "-o", str(tmp_path / "maps.png")])
    assert args._run(args) == 0
    assert_png(tmp_path / "maps.png", figure_pixels(len(record["images"]), len(maps.blocks)))

    old = {k: v for k, v in record.items() if k != "owner"}  # a version-1 file: indices only
    torch.save(old, tmp_path / "v1.pt")
    args = parser.parse_args(["visualize", "--attention_file", str(tmp_path / "v1.pt"), "-o", str(tmp_path / "v1.png")])
    assert args._run(args) == 2
    assert "live model" in capsys.readouterr().err and not (tmp_path / "v1.png").exists()


def test_live_command_on_a_folder_of_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    parser = build_parser({"visualize": visualize_command})
    args = parser.parse_args(["visualize", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size",
                              "96", "--strategy", "tome", "--param", "r=4", "--dataset", str(folder), "--blocks", "2",
                              "11", "-o", str(tmp_path / "live.png")])
    assert args._run(args) == 0
    assert_png(tmp_path / "live.png", figure_pixels(2, 2))


def test_attention_file_carrying_its_images_needs_no_data_set(tmp_path, images):
    model = tiny_timm()
    with pb.prune(model, "cls_topk", keep=10) as handle:
        record = measure_attention.record_attention(model, images, handle)
    shown = torch.randint(0, 256, (len(images), 64, 64, 3), dtype=torch.uint8)
    attention.save(str(tmp_path / "a.pt"), record, {"strategy": "cls_topk", "params": {"keep": 10}, "images": shown})
    parser = build_parser({"visualize": visualize_command})
    args = parser.parse_args(["visualize", "--attention_file", str(tmp_path / "a.pt"), "--blocks", "1", "3",
                              "-o", str(tmp_path / "maps.png")])
    assert args._run(args) == 0
    assert_png(tmp_path / "maps.png", figure_pixels(len(images), 2))
