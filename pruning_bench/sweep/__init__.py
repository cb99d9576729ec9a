"""Parameter sweeps over `clip_benchmark eval --enable_pruning`: one subprocess per grid point.

A grid is written as on the command line, `"tome r=4,8,13,16"` or
`"anchor_diversity k_anchors=5,10 top_m=30,50"`: a strategy name, then `KEY=V1,V2,...` items whose
Cartesian product gives the points (values are read like `--prune_param` values, so `r=[4,8],2`
is a list and an int). Every point is checked with the strategy's own validation before anything
runs, and knows the result files it will write (the integration's naming), which is what makes a
sweep resumable: a point whose files hold a complete result is skipped; a file that does not
parse or lacks the keys a complete run writes is moved aside and its point re-run.

Points run through `clip_benchmark eval` or `pruning-bench eval` (the driver is read from the
executable's name, or given), optionally once per training seed (`--seed`, with the seed in the
result name) and per strategy seed (the strategy's own `seed` parameter, in the pruning slug).
How points are run safely (locks, signals, process groups) is in `sweep.control`.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import outputs
from ..record import check as result_check
from .. import run_config
from ..record import naming
from ..record.result import MATCH_ENV
from .control import (OUTPUTS_ENV, SweepInterrupted, SweepSummary, log_path,  # noqa: F401  (re-exported)
                            run_sweep, subprocess_runner)

BASELINE = "baseline"
DRIVERS = ("clip_benchmark", "pruning-bench")
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class SweepPoint:
    """One configuration: a strategy with the parameters the user gave (or the baseline)."""

    strategy: str
    params: tuple[tuple[str, Any], ...] = ()
    resolved: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    seed: int | None = None  # training / evaluation seed (`--seed`), None: the driver's default
    # --match_macs: {strategy, knob, value, target_ratio, achieved_ratio, ...}, passed to the run in MATCH_ENV
    match: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def is_baseline(self) -> bool:
        return self.strategy == BASELINE

    @property
    def slug(self) -> str:
        return naming.BASELINE_SLUG if self.is_baseline else naming.pruning_slug(self.strategy, self.resolved)

    @property
    def label(self) -> str:
        words = [self.strategy] + [f"{k}={naming.label_value(v)}" for k, v in self.params]
        if self.match is not None:
            words.append(f"[MACs target {self.match['target_ratio']:g}]")
        return " ".join(words + ([f"--seed {self.seed}"] if self.seed is not None else []))

    @property
    def log_name(self) -> str:
        return self.slug + (f"_seed{self.seed}" if self.seed is not None else "")


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
        parsed = [run_config.parse_value(v) for v in split_top_level(values)]
        if any(v == "" for v in parsed):
            raise ValueError(f"--grid {text!r}: {key} has an empty value")
        axes[key] = parsed
    return strategy, axes


def parse_seeds(text: str | None, flag: str) -> list[int] | None:
    """`"0,1,2"` -> [0, 1, 2]; each in [0, 2**63 - 1], none twice."""
    if text is None:
        return None
    seeds = []
    for word in split_top_level(text):
        try:
            seed = int(word)
        except ValueError:
            raise ValueError(f"{flag} {text!r}: {word!r} is not an integer") from None
        if not 0 <= seed <= MAX_SEED:
            raise ValueError(f"{flag}: seed {seed} is out of range [0, {MAX_SEED}]")
        if seed in seeds:
            raise ValueError(f"{flag}: seed {seed} is given twice")
        seeds.append(seed)
    return seeds


def expand_grid(text: str, strategy_seeds: list[int] | None = None) -> list[SweepPoint]:
    """Every point of one grid, in order (last key varies fastest), each validated by its strategy.

    `strategy_seeds` becomes a `seed` axis of a strategy that takes a seed; others ignore it."""
    from ..api import make_strategy

    strategy, axes = parse_grid(text)
    if strategy == BASELINE:
        if axes:
            raise ValueError("the baseline takes no parameters")
        return [SweepPoint(BASELINE)]
    seeds = strategy_seed_axis(text, strategy, axes, strategy_seeds)
    if seeds is not None:
        axes["seed"] = seeds
    points = []
    for values in itertools.product(*axes.values()):
        params = dict(zip(axes, values))
        try:
            resolved = make_strategy(strategy, dict(params)).resolved_params()
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"--grid {text!r}: point {params}: {exc}") from exc
        points.append(SweepPoint(strategy, tuple(params.items()), resolved))
    return points


def strategy_seed_axis(text: str, strategy: str, axes: dict, strategy_seeds: list[int] | None) -> list[int] | None:
    """The `seed` values `--strategy_seeds` adds to this grid (None: the strategy takes no seed, or none given)."""
    from ..registry import get_strategy

    if strategy_seeds is None:
        return None
    try:
        takes_seed = "seed" in get_strategy(strategy).defaults
    except (KeyError, ValueError) as exc:
        raise ValueError(f"--grid {text!r}: {exc}") from None
    if takes_seed and "seed" in axes:
        raise ValueError(f"--grid {text!r} sets seed itself; leave it out or drop --strategy_seeds")
    return list(strategy_seeds) if takes_seed else None


def expand_grids(grids: Iterable[str], *, baseline: bool = True, seeds: list[int] | None = None,
                 strategy_seeds: list[int] | None = None, matcher=None,
                 notes: list[str] | None = None) -> list[SweepPoint]:
    """All points of all grids, baseline first, duplicates (same strategy and parameters) once;
    with `seeds`, every point once per training seed (seed-major, so each seed's baseline comes first).

    `matcher` (`sweep.matched_grids.Matcher`, for --match_macs) expands each grid instead of `expand_grid`; a
    matched point that duplicates an earlier one is said in `notes`."""
    grids = list(grids)
    if strategy_seeds is not None:
        from ..registry import get_strategy

        names = [parse_grid(g)[0] for g in grids]
        if not any(n != BASELINE and "seed" in get_strategy(n).defaults for n in names):
            raise ValueError(f"--strategy_seeds: none of the swept strategies ({', '.join(names) or 'none'}) takes a "
                             "seed parameter")
    points = [SweepPoint(BASELINE)] if baseline else []
    for grid in grids:
        points += matcher.expand(grid, strategy_seeds) if matcher is not None else expand_grid(grid, strategy_seeds)
    unique: dict[tuple, SweepPoint] = {}
    for point in points:
        kept = unique.setdefault((point.strategy, point.slug), point)
        if kept is not point and point.match is not None and notes is not None:
            notes.append(f"{point.label} is the same run as {kept.label}: run once, recorded for the first")
    points = list(unique.values())
    if seeds is None:
        return points
    return [dataclasses.replace(p, seed=seed) for seed in seeds for p in points]


# ---------------------------------------------------------------- command lines


def literal(value: Any) -> str:
    """A `--prune_param` value that `run_config.parse_value` reads back as `value`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if run_config.parse_value(value) == value else repr(value)
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
    """`EXECUTABLE eval EVAL_ARGS <pruning flags> [--skip_existing]` for one point (EVAL_ARGS already seeded)."""
    extra = ["--skip_existing"] if skip_existing and "--skip_existing" not in eval_args else []
    return [*match_prefix(point), *shlex.split(executable), "eval", *eval_args, *point_arguments(point), *extra]


def match_prefix(point: SweepPoint) -> list[str]:
    """`env PRUNING_BENCH_MATCH=JSON` for a --match_macs point: the result file records its MAC target
    (the same for a local run and an emitted command; either driver reads it)."""
    if point.match is None:
        return []
    return ["env", f"{MATCH_ENV}={json.dumps(point.match, sort_keys=True, separators=(',', ':'))}"]


def local_executable(driver: str = outputs.CLIP_BENCHMARK) -> str:
    """The driver's script next to this interpreter (clip_benchmark: the one with the pruning hook), else PATH's."""
    beside = Path(sys.executable).parent / driver
    return str(beside) if beside.exists() else (shutil.which(driver) or driver)


# ---------------------------------------------------------------- result files


SWEPT_FLAGS = ("--enable_pruning", "--prune_strategy", "--prune_param", *(f"--{name}" for name in run_config.SHORTCUTS))


def check_eval_args(eval_args: list[str], *, seeds: bool = False) -> None:
    """The sweep sets the pruning flags (and, with --seeds, --seed) itself; the same flag among EVAL_ARGS would clash."""
    swept = SWEPT_FLAGS + (("--seed",) if seeds else ())
    given = sorted({a.split("=", 1)[0] for a in eval_args if a.split("=", 1)[0] in swept})
    if "--seed" in given:
        raise ValueError("--seed in the evaluation arguments: the sweep sets it for every point (give --seeds)")
    if given:
        raise ValueError(f"{', '.join(given)} in the evaluation arguments: the sweep sets the pruning flags "
                         "of every point itself (put strategies and values in --grid)")
    if eval_args and eval_args[0] == "eval":
        raise ValueError("give the evaluation arguments without the leading 'eval'")


def parse_eval_args(eval_args: list[str], driver: str = outputs.CLIP_BENCHMARK) -> argparse.Namespace:
    return outputs.parse_eval_args(eval_args, driver)


def expected_outputs(point: SweepPoint, args: argparse.Namespace, driver: str = outputs.CLIP_BENCHMARK) -> list[Path]:
    """The result files `command(point, ...)` writes, named exactly as the driver names them."""
    return outputs.expected_outputs(None if point.is_baseline else point.strategy, point.resolved, args, driver)


def is_finished(path: Path) -> bool:
    """A complete result file (a run killed while writing, or a foreign file, is not one)."""
    return result_check.is_complete(path)


@dataclass(eq=False)
class PlannedRun:
    point: SweepPoint
    command: list[str]
    outputs: list[Path]

    def problems(self) -> dict[Path, str]:
        """Each result file that is not complete yet, with what is wrong with it."""
        found = {p: result_check.file_problem(p, pruned=not self.point.is_baseline) for p in self.outputs}
        return {p: why for p, why in found.items() if why is not None}

    @property
    def finished(self) -> bool:
        return bool(self.outputs) and not self.problems()

    @property
    def shell(self) -> str:
        return shlex.join(self.command)

    @property
    def lock_path(self) -> Path:
        first = self.outputs[0] if self.outputs else Path(self.point.log_name)
        return first.with_name(first.name + ".lock")

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, OUTPUTS_ENV: os.pathsep.join(map(str, self.outputs))}

    def make_output_dirs(self) -> None:
        """clip_benchmark opens its output file without creating the folder."""
        for path in self.outputs:
            path.parent.mkdir(parents=True, exist_ok=True)

    def set_aside_incomplete(self) -> list[str]:
        """Move result files that exist but are incomplete to `NAME.incomplete` (kept for inspection, never
        read as done, and out of the way of `--skip_existing`); one message per file."""
        messages = []
        for path, why in self.problems().items():
            if path.exists():
                os.replace(path, path.with_name(path.name + ".incomplete"))
                messages.append(f"{path} {why}: moved to {path.name}.incomplete, re-running {self.point.label}")
        return messages


def plan(points: list[SweepPoint], eval_args: list[str], *, executable: str = "clip_benchmark",
         skip_existing: bool = True, driver: str | None = None) -> list[PlannedRun]:
    driver = driver or outputs.driver_of(executable)
    seeded = any(p.seed is not None for p in points)
    check_eval_args(eval_args, seeds=seeded)
    runs, parsed = [], {}
    for p in points:
        if p.seed not in parsed:
            args_for_seed = outputs.seeded_eval_args(eval_args, p.seed, driver)
            parsed[p.seed] = (args_for_seed, parse_eval_args(args_for_seed, driver))
        args_for_seed, args = parsed[p.seed]
        runs.append(PlannedRun(p, command(p, args_for_seed, executable=executable, skip_existing=skip_existing),
                               expected_outputs(p, args, driver)))
    names = [path for r in runs for path in r.outputs]
    clashes = sorted({str(x) for x in names if names.count(x) > 1})
    if clashes:
        raise ValueError(f"several points would write {clashes[0]}: put the settings that differ in --output "
                         "(e.g. {pruning}) or leave them to the sweep")
    return runs


# ---------------------------------------------------------------- running and emitting


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
