"""`pruning-bench visualize`: token maps (kept, dropped and merged patches per block) drawn over real images."""
from __future__ import annotations

import sys
from pathlib import Path

EXAMPLES = """examples:
  # live: the offline reference ViT (real DINOv2 weights), ToMe r=8, 3 ImageNet images
  pruning-bench visualize --model reference --prune_strategy tome --prune_param r=8 --dataset wds/imagenet1k \\
      --dataset_root ../shared/data/wds_imagenet1k_sample --n_images 3 -o reports/tome_r8.png
  pruning-bench visualize --model reference --prune_strategy anchor_diversity --prune_param k_anchors=10 --prune_param top_m=50 \\
      --images cat.jpg dog.jpg --blocks 1 6 11 -o maps.png
  # from a clip_benchmark run with --extract_attention (selection strategies; images re-read from the data set)
  pruning-bench visualize --attention_file results/cifar10.attention.pt --dataset_root ../shared/data/wds_cifar10 -o maps.png
"""


def add_parser(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "visualize",
        help="draw which patches survive or merge at chosen blocks, over the images (PNG grid)",
        description="Token maps: for a few images, the input and, after each chosen block, which patches are "
                    "dropped (dark), which are merged into one token (one colour per merged group) and which "
                    "survive alone (untouched). From a live model patched with a token strategy, or from an "
                    "--attention_output file of `clip_benchmark eval --extract_attention`.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-o", "--output", required=True, metavar="PNG", help="where to write the picture")
    parser.add_argument("--blocks", type=int, nargs="+", default=None,
                        help="block indices to show (maps after each); default: four spread from the first reducing block")
    parser.add_argument("--title", default=None, help="figure title (default: model and strategy)")
    live = parser.add_argument_group("live model")
    live.add_argument("--model", default=None,
                      help="`reference` (offline DINOv2 ViT-S/14), a timm model name, or open_clip:NAME")
    live.add_argument("--pretrained", default=None,
                      help="none (random init, any model source) or a checkpoint file")
    live.add_argument("--img_size", type=int, default=None, help="input resolution (reference: multiple of 14)")
    # spelled as in `clip_benchmark eval` and `pruning-bench eval`; --strategy / --param stay as aliases
    live.add_argument("--prune_strategy", "--strategy", dest="strategy", default="tome",
                      help="token strategy (default: tome)")
    live.add_argument("--prune_param", "--param", dest="param", action="append", default=[], metavar="KEY=VALUE",
                      help="strategy parameter, repeatable")
    images = parser.add_argument_group("images")
    images.add_argument("--images", nargs="+", default=None, metavar="FILE", help="image files")
    images.add_argument("--dataset", default=None,
                        help="wds/NAME with --dataset_root, a folder, or sample_images (default for --attention_file: "
                             "the data set recorded in the file)")
    images.add_argument("--dataset_root", default=None, help="webdataset root (train/ test/ shards)")
    images.add_argument("--split", default="test")
    images.add_argument("--n_images", type=int, default=3, help="first N images of the data set (live model)")
    recorded = parser.add_argument_group("from an attention file")
    recorded.add_argument("--attention_file", default=None, metavar="PATH", help="an --attention_output file")
    recorded.add_argument("--prefix_tokens", type=int, default=None,
                          help="class + register tokens of the recorded model (default: inferred from a square grid)")
    recorded.add_argument("--display_size", type=int, default=224, help="pixels per side of the re-read images")
    return parser


def _error(message: str) -> int:
    print(f"pruning-bench visualize: error: {message}", file=sys.stderr)
    return 2


def _load_live_model(args):
    """(model, transform) for --model, by the evaluation's own loader (timm, open_clip:NAME, hf:NAME, reference)."""
    from ..evaluate.models import load_model

    loaded = load_model(args.model, args.pretrained, image_size=args.img_size, check=False)
    return loaded.model, loaded.transform


def _image_set(args):
    from pathlib import Path

    from ..evaluate import data

    if args.images:
        return data.read_files([Path(p) for p in args.images], "images", "files")
    if args.dataset is None:
        raise ValueError("give --images FILE... or --dataset (with --dataset_root for wds/NAME)")
    return data.load(args.dataset, args.dataset_root, args.split, args.n_images)


def _live(args):
    import torch

    from ..run_config import parse_prune_params
    from ..evaluate.data import DecodedImages
    from ..visualize import denormalise, live_token_maps, normalisation_of

    params = parse_prune_params(args.param)
    model, transform = _load_live_model(args)
    images = _image_set(args)
    decoded = DecodedImages(images, transform)
    batch = torch.stack([decoded[i][0] for i in range(len(decoded))])
    maps = live_token_maps(model, batch, args.strategy, params, blocks=args.blocks,
                           title=f"{args.model} · {args.strategy} " + ", ".join(f"{k}={v}" for k, v in params.items()))
    mean, std = normalisation_of(transform) or ((0.0,) * 3, (1.0,) * 3)
    return maps, denormalise(batch, mean, std)


def _recorded(args):
    from ..visualize import display_images, load_record, maps_from_record, recorded_images

    try:
        record = load_record(args.attention_file)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as exc:  # junk, a foreign pickle, a truncated file: torch.load's own errors vary
        raise ValueError(f"--attention_file {args.attention_file} is not an attention file written by "
                         f"--extract_attention (torch.load: {type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise ValueError(f"--attention_file {args.attention_file} holds a {type(record).__name__}, not an attention record")
    maps = maps_from_record(record, args.blocks, args.prefix_tokens)
    images = recorded_images(record)
    if images is not None:
        return maps, images
    dataset = args.dataset or record.get("dataset")
    if not dataset:
        raise ValueError("the attention file names no data set; give --dataset")
    side = args.display_size - args.display_size % maps.grid[0]
    images = display_images(dataset, args.dataset_root, record["image_index"].tolist(), side, args.split)
    return maps, images


def run(args) -> int:
    from ..visualize import render_token_maps

    if (args.model is None) == (args.attention_file is None):
        return _error("give either --model (live) or --attention_file")
    if args.n_images < 1:
        return _error(f"--n_images={args.n_images} must be at least 1")
    from .eval import output_folder_problem

    problem = output_folder_problem(args.output)
    if problem or Path(args.output).is_dir():
        return _error((problem or f"-o {args.output} is a folder; give a PNG file name").replace("--output", "-o"))
    if args.display_size < 1:
        return _error(f"--display_size={args.display_size} must be at least 1")
    try:
        maps, images = _live(args) if args.model is not None else _recorded(args)
    except (ValueError, FileNotFoundError) as exc:
        return _error(str(exc).splitlines()[0])
    print(render_token_maps(maps, images, args.output, title=args.title))
    return 0
