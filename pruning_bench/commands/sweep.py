"""`pruning-bench sweep --grid "tome r=4,8" ... -- EVAL_ARGS`: run, resume or schedule a grid, over seeds,
through `clip_benchmark eval` or `pruning-bench eval`."""
from __future__ import annotations

import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  pruning-bench sweep --grid "tome r=4,8,13,16" --grid "anchor_diversity k_anchors=5,10 top_m=30,50" -- \\
      --dataset wds/cifar10 --dataset_root ../shared/data/wds_cifar10 --model ViT-B-32 --pretrained openai \\
      --task zeroshot_classification --output "results/{dataset}_{model}_{pretrained}_{pruning}.json"
  pruning-bench sweep --grid "tome r=4,8" --emit commands -- ... > runs.txt     # one command per line
  pruning-bench sweep --grid "tome r=4,8" --emit slurm --emit_to sweep.sbatch --sbatch=--gres=gpu:1 -- ...
  pruning-bench sweep --executable pruning-bench --grid "tome r=8" --grid "random_drop keep=98" \
      --seeds 0,1,2 --strategy_seeds 0,1 -- --model vit_tiny_patch16_224 --dataset wds/cifar10 \
      --dataset_root ../shared/data/wds_cifar10 --task finetune --train_samples 512 --test_samples 256
  pruning-bench sweep --executable pruning-bench --match_macs 0.8,0.6 --grid "tome" --grid "cls_topk start_layer=1" \\
      --grid "evit prune_layers=[3,6,9]" --dry_run -- --model reference --dataset wds/cifar10 \\
      --dataset_root ../shared/data/wds_cifar10 --task probe

Each point is `clip_benchmark eval EVAL_ARGS --enable_pruning --prune_strategy NAME --prune_param K=V ...
--skip_existing` (the baseline: `--measure_efficiency`). Re-running the same sweep skips points whose result
files are complete (a result file that does not parse or lacks keys is moved aside to NAME.incomplete and
re-run), so an interrupted sweep resumes where it stopped; emitted commands carry --skip_existing too.
SIGINT, SIGTERM and SIGHUP stop the running point too; a point another sweep is running (its
RESULT.lock names a live process) is left to it. With --seeds, each point runs once per seed (`--seed S`,
`_seedS` or `{seed}` in the result name); --strategy_seeds sweeps the `seed` parameter of strategies
that take one. With --match_macs R1,R2,..., each grid entry's compute knob (the strategy's `compute_knob`:
r for tome, keep for cls_topk, keep_rate with prune_layers, ...) is set, per target ratio R, to the value
whose MACs / unpruned MACs come closest to R on the model the points evaluate (`pb.match_macs`); the entry's
other keys stay fixed (a list value is written [3,6,9]), and the result records `pruning.match`
{target_ratio, achieved_ratio, knob, value}.
"""


def add_parser(subparsers):
    import argparse

    parser = subparsers.add_parser(
        "sweep",
        help="run a grid of pruning configurations through clip_benchmark (resumable), or emit it for a scheduler",
        description="Expand --grid specifications into points, check every point's parameters, then run each "
                    "point as a `clip_benchmark eval` subprocess with the arguments after `--`.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--grid", action="append", default=[], metavar='"STRATEGY KEY=V1,V2 ..."',
                        help="a strategy and value lists; the Cartesian product of the lists is swept (repeatable)")
    parser.add_argument("--seeds", default=None, metavar="S1,S2,...",
                        help="training / evaluation seeds: every point runs once per seed with --seed S")
    parser.add_argument("--strategy_seeds", default=None, metavar="S1,S2,...",
                        help="values of the `seed` parameter of every swept strategy that takes one (tome, random_drop)")
    parser.add_argument("--match_macs", default=None, metavar="R1,R2,...",
                        help="target MAC ratios in (0, 1]: every grid entry's compute knob is set to the value whose "
                             "MACs come closest to each target on the evaluated model (leave the knob out of --grid)")
    parser.add_argument("--no_baseline", dest="baseline", action="store_false",
                        help="do not add the unpruned baseline point (run with --measure_efficiency)")
    parser.add_argument("--force", action="store_true", help="run (or emit) every point, finished or not")
    parser.add_argument("--dry_run", action="store_true", help="list the points, their state and result files, run nothing")
    parser.add_argument("--emit", choices=("commands", "slurm"), default=None,
                        help="print the pending runs instead of running them: one shell command per line, or a "
                             "SLURM array script")
    parser.add_argument("--emit_to", default=None, metavar="FILE", help="write the emitted text to FILE instead of stdout")
    parser.add_argument("--executable", default=None, metavar="CMD",
                        help="evaluation command: clip_benchmark (default: the one beside this Python when running, "
                             "`clip_benchmark` when emitting) or pruning-bench")
    parser.add_argument("--driver", choices=("clip_benchmark", "pruning-bench"), default=None,
                        help="whose `eval` arguments follow `--` (default: read from --executable's name)")
    parser.add_argument("--log_dir", default="sweep_logs", help="one log file per point (default: sweep_logs)")
    parser.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                        help="extra #SBATCH line for --emit slurm, e.g. --sbatch=--gres=gpu:1 (repeatable)")
    parser.add_argument("--job_name", default="pruning-sweep", help="SLURM job name")
    parser.add_argument("--max_parallel", type=int, default=None, help="SLURM array throttle (%%N)")
    parser.add_argument("--report", default=None, metavar="NAME",
                        help="after running, write `pruning-bench report` for every result of the sweep to NAME")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("eval_args", nargs=argparse.REMAINDER, metavar="-- EVAL_ARGS",
                        help="arguments for `clip_benchmark eval` / `pruning-bench eval` (dataset, model, output template, ...)")
    return parser


def _error(message: str) -> int:
    print(f"pruning-bench sweep: error: {message}", file=sys.stderr)
    return 2


def _emit(text: str, target: str | None) -> None:
    from ..record import atomic

    if target is None:
        sys.stdout.write(text)
    else:
        atomic.write_text(target, text)
        print(target)


def run(args) -> int:
    """SIGINT, SIGTERM, SIGHUP: the running point is stopped with the sweep, which ends with one line."""
    from ..sweep.control import SweepInterrupted, interruptible

    planned: list = []
    try:
        with interruptible():
            return _run(args, planned)
    except SweepInterrupted as stop:
        done = sum(r.finished for r in planned)
        print(f"pruning-bench sweep: stopped by {stop} (the running point too); {done} of {len(planned)} point(s) "
              "finished; run the same command again to resume", file=sys.stderr)
        return stop.exit_status


def _run(args, planned: list) -> int:
    from .. import sweep

    eval_args = list(args.eval_args)
    if eval_args[:1] == ["--"]:
        eval_args = eval_args[1:]
    if not args.grid and not args.baseline:
        return _error("nothing to sweep: give at least one --grid")
    notes: list[str] = []
    try:
        seeds = sweep.parse_seeds(args.seeds, "--seeds")
        strategy_seeds = sweep.parse_seeds(args.strategy_seeds, "--strategy_seeds")
        driver = args.driver or sweep.outputs.driver_of(args.executable or "clip_benchmark")
        matcher = _matcher(args, eval_args, driver, seeds, strategy_seeds)
        points = sweep.expand_grids(args.grid, baseline=args.baseline, seeds=seeds, strategy_seeds=strategy_seeds,
                                    matcher=matcher, notes=notes)
        executable = args.executable or (driver if args.emit else sweep.local_executable(driver))
        runs = sweep.plan(points, eval_args, executable=executable, skip_existing=not args.force, driver=driver)
    except ValueError as exc:
        return _error(str(exc))
    except SystemExit as exc:  # clip_benchmark's parser rejected EVAL_ARGS (it printed why)
        return int(exc.code or 2)

    for note in notes:
        print(f"pruning-bench sweep: {note}", file=sys.stderr)
    pending = runs if args.force else [r for r in runs if not r.finished]
    if args.dry_run:
        for r in runs:
            state = "finished" if r.finished else "pending"
            print(f"{state:9} {r.point.label}")
            if r.point.match is not None:
                m = r.point.match
                print(f"          MACs target {m['target_ratio']:g}: {m['knob']}={sweep.literal(m['value'])} "
                      f"achieves {m['achieved_ratio']:.4f} (gap {m['achieved_ratio'] - m['target_ratio']:+.4f})")
            print(f"          {' '.join(map(str, r.outputs))}")
        print(f"{len(runs)} point(s), {len(pending)} to run")
        return 0
    if args.emit:
        for r in pending:
            r.make_output_dirs()
    if args.emit == "commands":
        _emit(sweep.command_list(pending), args.emit_to)
        return 0
    if args.emit == "slurm":
        try:
            text = sweep.slurm_script(pending, job_name=args.job_name, log_dir=args.log_dir, sbatch=args.sbatch,
                                      max_parallel=args.max_parallel)
        except ValueError as exc:
            return _error(str(exc))
        Path(args.log_dir).mkdir(parents=True, exist_ok=True)  # SLURM opens its log files before the script runs
        _emit(text, args.emit_to)
        return 0

    problem = _unwritable(pending, args.log_dir)
    if problem:
        return _error(problem)
    planned.extend(runs)
    return run_planned(runs, log_dir=args.log_dir, force=args.force, progress=not args.quiet, report=args.report)


def _unwritable(pending: list, log_dir) -> str | None:
    """A result, lock or log folder that cannot be written, found before the first point runs."""
    import os

    from ..record.writable import problem

    for run in pending:
        for path in [*run.outputs, run.lock_path]:
            found = problem("result" if path in run.outputs else "lock", path)
            if found:
                return f"{run.point.label}: {found}"
    return problem("--log_dir", os.path.join(log_dir, "point.log"))


def _matcher(args, eval_args: list[str], driver: str, seeds, strategy_seeds):
    """--match_macs: checked without a model first, then the evaluated model built to match on (None without it)."""
    if args.match_macs is None:
        return None
    from .. import sweep
    from ..sweep import matched_grids as sweep_match

    matcher = sweep_match.Matcher(sweep_match.parse_ratios(args.match_macs), progress=not args.quiet,
                                  cache_path=os.path.join(args.log_dir, sweep_match.CACHE_NAME))
    matcher.check(args.grid, strategy_seeds)
    sweep.check_eval_args(eval_args, seeds=seeds is not None)
    matcher.model_key = sweep_match.model_key(eval_args, driver)
    matcher.build = lambda: sweep_match.build_model(eval_args, driver)  # only when a target is not cached
    return matcher


def run_planned(runs: list, *, log_dir, force: bool = False, progress: bool = True, report: str | None = None) -> int:
    """Run planned points; a handled signal stops the running point too and ends with one line (128 + signal)."""
    from .. import sweep
    from ..sweep.control import SweepInterrupted, interruptible

    try:
        with interruptible():
            summary = sweep.run_sweep(runs, log_dir=log_dir, force=force, progress=progress)
    except SweepInterrupted as stop:
        done = sum(r.finished for r in runs)
        print(f"pruning-bench sweep: stopped by {stop} (the running point too); {done} of {len(runs)} point(s) "
              "finished; run the same command again to resume", file=sys.stderr)
        return stop.exit_status
    print(f"{len(runs)} point(s): {len(summary.skipped)} already finished, {len(summary.ran)} run, "
          f"{len(summary.failed)} failed", file=sys.stderr)
    for r in summary.failed:
        print(f"  failed: {r.point.label} (log: {sweep.log_path(log_dir, r)})", file=sys.stderr)
    if report and summary.outputs:
        from ..cli import main

        main(["report", *map(str, summary.outputs), "-o", report])
    return 1 if summary.failed else 0
