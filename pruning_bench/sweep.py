"""Parameter sweeps over `clip_benchmark eval --enable_pruning`: one subprocess per grid point.

A grid is written as on the command line, `"tome r=4,8,13,16"` or
`"anchor_diversity k_anchors=5,10 top_m=30,50"`: a strategy name, then `KEY=V1,V2,...` items whose
Cartesian product gives the points (values are read like `--prune_param` values, so `r=[4,8],2`
is a list and an int). Every point is checked with the strategy's own validation before anything
runs, and knows the result files it will write (the integration's naming), which is what makes a
sweep resumable: a point whose files exist and hold a result is skipped.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .clip_benchmark_ext import flags, naming

BASELINE = "baseline"


@dataclass(frozen=True)
class SweepPoint:
    """One configuration: a strategy with the parameters the user gave (or the baseline)."""

    strategy: str
    params: tuple[tuple[str, Any], ...] = ()
    resolved: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_baseline(self) -> bool:
        return self.strategy == BASELINE

    @property
    def slug(self) -> str:
        return naming.BASELINE_SLUG if self.is_baseline else naming.pruning_slug(self.strategy, self.resolved)

    @property
    def label(self) -> str:
        return " ".join([self.strategy] + [f"{k}={literal(v)}" for k, v in self.params])


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets and quotes, so `[4,8],2` gives `[4,8]` and `2`."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == sep and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts]


def parse_grid(text: str) -> tuple[str, dict[str, list[Any]]]:
    """`"tome r=4,8 prop_attn=true,false"` -> ("tome", {"r": [4, 8], "prop_attn": [True, False]})."""
    words = shlex.split(text)
    if not words:
        raise ValueError("--grid is empty; expected 'STRATEGY KEY=V1,V2 ...'")
    strategy, axes = words[0], {}
    if "=" in strategy:
        raise ValueError(f"--grid {text!r}: the first word must be a strategy name, got {strategy!r}")
    for item in words[1:]:
        key, sep, values = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--grid {text!r}: expected KEY=V1,V2,... but got {item!r}")
        if key in axes:
            raise ValueError(f"--grid {text!r}: {key} is given twice")
        parsed = [flags.parse_value(v) for v in split_top_level(values)]
        if any(v == "" for v in parsed):
            raise ValueError(f"--grid {text!r}: {key} has an empty value")
        axes[key] = parsed
    return strategy, axes


def expand_grid(text: str) -> list[SweepPoint]:
    """Every point of one grid, in order (last key varies fastest), each validated by its strategy."""
    from .api import make_strategy

    strategy, axes = parse_grid(text)
    if strategy == BASELINE:
        if axes:
            raise ValueError("the baseline takes no parameters")
        return [SweepPoint(BASELINE)]
    points = []
    for values in itertools.product(*axes.values()):
        params = dict(zip(axes, values))
        try:
            resolved = make_strategy(strategy, dict(params)).resolved_params()
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"--grid {text!r}: point {params}: {exc}") from exc
        points.append(SweepPoint(strategy, tuple(params.items()), resolved))
    return points


def expand_grids(grids: Iterable[str], *, baseline: bool = True) -> list[SweepPoint]:
    """All points of all grids, baseline first, duplicates (same strategy and parameters) once."""
    points = [SweepPoint(BASELINE)] if baseline else []
    for grid in grids:
        points += expand_grid(grid)
    unique: dict[tuple, SweepPoint] = {}
    for point in points:
        unique.setdefault((point.strategy, point.slug), point)
    return list(unique.values())


# ---------------------------------------------------------------- command lines


def literal(value: Any) -> str:
    """A `--prune_param` value that `flags.parse_value` reads back as `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if flags.parse_value(value) == value else repr(value)
    return repr(value).replace(" ", "")


def point_arguments(point: SweepPoint) -> list[str]:
    """The pruning flags of one point; the baseline still measures efficiency, so reports can compare."""
    if point.is_baseline:
        return ["--measure_efficiency"]
    args = ["--enable_pruning", "--prune_strategy", point.strategy]
    for key, value in point.params:
        args += ["--prune_param", f"{key}={literal(value)}"]
    return args


def command(point: SweepPoint, eval_args: list[str], *, executable: str = "clip_benchmark",
            skip_existing: bool = True) -> list[str]:
    """`clip_benchmark eval EVAL_ARGS <pruning flags> [--skip_existing]` for one point."""
    extra = ["--skip_existing"] if skip_existing and "--skip_existing" not in eval_args else []
    return [executable, "eval", *eval_args, *point_arguments(point), *extra]


def local_executable() -> str:
    """The `clip_benchmark` script next to this interpreter (the one with the pruning hook), else PATH's."""
    beside = Path(sys.executable).parent / "clip_benchmark"
    return str(beside) if beside.exists() else (shutil.which("clip_benchmark") or "clip_benchmark")


# ---------------------------------------------------------------- result files


SWEPT_FLAGS = ("--enable_pruning", "--prune_strategy", "--prune_param", *(f"--{name}" for name in flags.SHORTCUTS))


def check_eval_args(eval_args: list[str]) -> None:
    """The sweep sets the pruning flags itself; the same flag among EVAL_ARGS would clash."""
    given = sorted({a.split("=", 1)[0] for a in eval_args if a.split("=", 1)[0] in SWEPT_FLAGS})
    if given:
        raise ValueError(f"{', '.join(given)} in the clip_benchmark arguments: the sweep sets the pruning flags "
                         "of every point itself (put strategies and values in --grid)")
    if eval_args and eval_args[0] == "eval":
        raise ValueError("give the clip_benchmark arguments without the leading 'eval'")


def parse_eval_args(eval_args: list[str]) -> argparse.Namespace:
    """clip_benchmark's own parse of `eval EVAL_ARGS` (its defaults and errors, plus the pruning flags)."""
    from clip_benchmark import cli

    saved = sys.argv
    sys.argv = ["clip_benchmark", "eval", *eval_args]
    try:
        _, args = cli.get_parser_args()
    finally:
        sys.argv = saved
    return args


def _runs(args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
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


def _as_list(value) -> list:
    if not value:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def expected_outputs(point: SweepPoint, args: argparse.Namespace) -> list[Path]:
    """The result files `command(point, ...)` writes, named exactly as the pruning integration names them."""
    from .clip_benchmark_ext.integration import resolved_task
    from .evaluate.results import output_path

    config = flags.PruningConfig(enabled=not point.is_baseline, strategy=None if point.is_baseline else point.strategy,
                                 resolved=point.resolved)
    paths = []
    for model, pretrained, dataset, language in _runs(args):
        one = argparse.Namespace(**{**vars(args), "model": model, "pretrained": pretrained, "dataset": dataset,
                                    "language": language})
        paths.append(Path(output_path(args.output, config=config, model=model, pretrained=pretrained,
                                      dataset=dataset, task=resolved_task(one), language=language)))
    return paths


def is_finished(path: Path) -> bool:
    """A result file clip_benchmark completed (a run killed while writing leaves no valid JSON)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "metrics" in data


@dataclass
class PlannedRun:
    point: SweepPoint
    command: list[str]
    outputs: list[Path]

    @property
    def finished(self) -> bool:
        return bool(self.outputs) and all(is_finished(p) for p in self.outputs)

    @property
    def shell(self) -> str:
        return shlex.join(self.command)

    def make_output_dirs(self) -> None:
        """clip_benchmark opens its output file without creating the folder."""
        for path in self.outputs:
            path.parent.mkdir(parents=True, exist_ok=True)


def plan(points: list[SweepPoint], eval_args: list[str], *, executable: str = "clip_benchmark",
         skip_existing: bool = True) -> list[PlannedRun]:
    check_eval_args(eval_args)
    args = parse_eval_args(eval_args)
    return [PlannedRun(p, command(p, eval_args, executable=executable, skip_existing=skip_existing),
                       expected_outputs(p, args)) for p in points]


# ---------------------------------------------------------------- running and emitting


def subprocess_runner(run: PlannedRun, log: Path) -> int:
    """Run one command with its output in `log`; returns its exit status."""
    with open(log, "w") as out:
        return subprocess.run(run.command, stdout=out, stderr=subprocess.STDOUT).returncode


def log_path(log_dir: Path, run: PlannedRun) -> Path:
    return Path(log_dir) / f"{run.point.slug}.log"


@dataclass
class SweepSummary:
    ran: list[PlannedRun] = field(default_factory=list)
    skipped: list[PlannedRun] = field(default_factory=list)
    failed: list[PlannedRun] = field(default_factory=list)

    @property
    def outputs(self) -> list[Path]:
        """Every result file the sweep has now (finished points, skipped or just run)."""
        return [p for r in self.skipped + self.ran if r not in self.failed for p in r.outputs if is_finished(p)]


def run_sweep(runs: list[PlannedRun], *, log_dir: str | os.PathLike, runner: Callable[[PlannedRun, Path], int] = subprocess_runner,
              force: bool = False, progress: bool = True) -> SweepSummary:
    """Run every point not finished yet (all with `force`), one after another, with a progress bar.

    A failing point does not stop the sweep; it is listed in the summary with its log file.
    """
    from tqdm.auto import tqdm

    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    summary = SweepSummary()
    pending = []
    for run in runs:
        (pending if force or not run.finished else summary.skipped).append(run)
    bar = tqdm(total=len(runs), initial=len(summary.skipped), disable=not progress, unit="point", desc="sweep")
    try:
        for run in pending:
            bar.set_postfix_str(run.point.label, refresh=True)
            run.make_output_dirs()
            status = runner(run, log_path(log_dir, run))
            summary.ran.append(run)
            if status != 0 or not run.finished:
                summary.failed.append(run)
                bar.write(f"failed ({status}): {run.point.label}; log: {log_path(log_dir, run)}")
            bar.update(1)
    finally:
        bar.close()
    return summary


def command_list(runs: list[PlannedRun]) -> str:
    """One shell command per line, for any scheduler (`parallel`, `xargs -P`, a job array...)."""
    return "".join(run.shell + "\n" for run in runs)


def slurm_script(runs: list[PlannedRun], *, job_name: str = "pruning-sweep", log_dir: str = "sweep_logs",
                 sbatch: Iterable[str] = (), max_parallel: int | None = None) -> str:
    """A SLURM array script: task i runs command i. Re-submitting it is safe (finished results are skipped)."""
    if not runs:
        raise ValueError("no run to schedule (every point is finished; use --force to schedule them anyway)")
    array = f"0-{len(runs) - 1}" + (f"%{max_parallel}" if max_parallel else "")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array={array}",
        f"#SBATCH --output={log_dir}/%x_%A_%a.log",
        *[f"#SBATCH {option}" for option in sbatch],
        f"# {len(runs)} pruning-bench sweep point(s); {log_dir}/ must exist before sbatch (SLURM opens the log first).",
        "# Each command skips result files that already exist, so re-submitting after a failure is safe.",
        "set -euo pipefail",
        'case "${SLURM_ARRAY_TASK_ID:?run this script with sbatch --array}" in',
        *[f"  {i}) {run.shell} ;;" for i, run in enumerate(runs)],
        '  *) echo "no sweep point for task ${SLURM_ARRAY_TASK_ID}" >&2; exit 2 ;;',
        "esac",
        "",
    ]
    return "\n".join(lines)
