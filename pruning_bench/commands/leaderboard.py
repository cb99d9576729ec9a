"""`pruning-bench leaderboard RESULTS... -o reports/NAME [--budget 0.5 ...] [--gmacs_budget 2 ...]`."""
from __future__ import annotations

import sys


def add_parser(subparsers):
    parser = subparsers.add_parser(
        "leaderboard",
        help="rank runs across many models, datasets and strategies; best run within a MACs budget",
        description="Read result JSONs (files or folders) and `clip_benchmark build` CSVs, pair every run with its "
                    "baseline as `pruning-bench report` does, and write NAME.csv (every run, ranked per dataset and "
                    "task, clip_benchmark build's column names where they overlap), NAME_budget.csv and NAME.md.",
    )
    parser.add_argument("results", nargs="+", metavar="RESULT", help="result JSON files, folders of them, or build CSVs")
    parser.add_argument("-o", "--output", required=True, metavar="NAME", help="output prefix, e.g. reports/leaderboard")
    parser.add_argument("--budget", type=float, nargs="+", default=[0.25, 0.5, 0.75], metavar="SHARE",
                        help="MACs budgets as shares of each model's baseline GMACs (default: 0.25 0.5 0.75)")
    parser.add_argument("--gmacs_budget", type=float, nargs="+", default=[], metavar="GMACS",
                        help="absolute budgets in GMACs per image, compared across models")
    parser.add_argument("--budget_tolerance", type=float, default=0.01, metavar="SHARE",
                        help="a run fits a budget when it exceeds it by at most this share of its baseline's MACs "
                             "(default 0.01: a run matched to 0.6002 fits <= 0.6)")
    parser.add_argument("--top", type=int, default=None, help="rows per dataset in the Markdown leaderboard (CSV keeps all)")
    parser.add_argument("--title", default=None, help="Markdown title")
    return parser


def run(args) -> int:
    from ..report.leaderboard import leaderboard, load_inputs, write_leaderboard

    if any(b <= 0 for b in args.budget + args.gmacs_budget):
        print("pruning-bench leaderboard: error: budgets must be positive", file=sys.stderr)
        return 2
    if not (args.budget_tolerance >= 0):
        print(f"pruning-bench leaderboard: error: --budget_tolerance {args.budget_tolerance}: must be >= 0 (a share "
              "of the baseline's MACs)", file=sys.stderr)
        return 2
    import warnings

    from ..report.load import ResultFileError
    from .report import check_output_prefix

    problem = check_output_prefix(args.output)
    if problem:
        print(f"pruning-bench leaderboard: error: {problem}", file=sys.stderr)
        return 2
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            inputs = load_inputs(args.results)
        for w in caught:
            if str(w.message).startswith("skipped "):
                print(f"pruning-bench leaderboard: warning: {w.message}", file=sys.stderr)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        board = leaderboard(inputs)
    except (FileNotFoundError, ResultFileError, ValueError) as exc:
        print(f"pruning-bench leaderboard: error: {exc}", file=sys.stderr)
        return 2
    try:
        written = write_leaderboard(board, args.output, budgets=args.budget, gmacs_budgets=args.gmacs_budget,
                                    title=args.title, top=args.top, budget_tolerance=args.budget_tolerance)
    except OSError as exc:
        print(f"pruning-bench leaderboard: error: writing {args.output}.*: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0
