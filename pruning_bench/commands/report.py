"""`pruning-bench report RESULT.json ... -o reports/NAME`: each pruned run beside its baseline."""
from __future__ import annotations

import sys


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "report",
        help="compare pruned runs with their baselines (CSV + Markdown + plot)",
        description="Group result JSONs by model, pretrained, dataset, task (and language), pair every pruned "
                    "run with its baseline, and write NAME.csv, NAME.md and NAME_accuracy_vs_{gmacs,throughput}.png. A run without a "
                    "baseline is kept, with empty comparison columns.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULT", help="result JSON files or directories of them")
    parser.add_argument("-o", "--output", required=True, metavar="NAME",
                        help="output prefix, e.g. reports/cifar10 -> reports/cifar10.csv, .md, _accuracy_vs_*.png")
    parser.add_argument("--title", default=None, help="Markdown title (default: from NAME)")
    parser.add_argument("--no-plot", dest="plot", action="store_false", help="skip the plots")
    return parser


def check_output_prefix(prefix: str) -> str | None:
    """Why files `PREFIX.csv`, `PREFIX.md`... cannot be written (None when they can): checked before any reading."""
    import os
    from pathlib import Path

    path = Path(prefix)
    if not path.name or prefix.endswith(os.sep):
        return f"-o {prefix!r} names a folder; give a file prefix such as {os.path.join(prefix, 'report')!r}"
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"-o {prefix}: cannot create the folder {parent} ({exc.strerror or exc})"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"-o {prefix}: the folder {parent} is not writable"
    return None


def warn_skipped(command: str):
    return lambda message: print(f"pruning-bench {command}: warning: {message}", file=sys.stderr)


def run(args) -> int:
    from ..report import compare, load_results, write_report

    problem = check_output_prefix(args.output)
    if problem:
        print(f"pruning-bench report: error: {problem}", file=sys.stderr)
        return 2
    try:
        table = compare(load_results(args.results, on_skip=warn_skipped("report")))
    except (FileNotFoundError, ValueError) as exc:
        print(f"pruning-bench report: error: {exc}", file=sys.stderr)
        return 2
    try:
        written = write_report(table, args.output, title=args.title, with_plot=args.plot)
    except OSError as exc:
        print(f"pruning-bench report: error: writing {args.output}.*: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    unpaired = int((~table["has_baseline"]).sum())
    if unpaired:
        print(f"note: {unpaired} run(s) without a baseline (reported without comparison)", file=sys.stderr)
    return 0
