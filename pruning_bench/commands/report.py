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


def run(args) -> int:
    from ..report import compare, load_results, write_report

    try:
        table = compare(load_results(args.results))
    except (FileNotFoundError, ValueError) as exc:
        print(f"pruning-bench report: error: {exc}", file=sys.stderr)
        return 2
    for path in write_report(table, args.output, title=args.title, with_plot=args.plot):
        print(path)
    unpaired = int((~table["has_baseline"]).sum())
    if unpaired:
        print(f"note: {unpaired} run(s) without a baseline (reported without comparison)", file=sys.stderr)
    return 0
