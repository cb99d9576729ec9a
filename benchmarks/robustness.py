"""Robustness battery: bad inputs and faults through the API and every command, one row each.

Every row lands in one column:
- clear error: refused with one line naming the culprit (a ValueError-like exception from the API,
  exit status 2 and one `error:` line from a command), before any expensive work;
- handled: accepted and the outcome checked right (a warning where one is due, a re-run, a restore);
- traceback: an exception of the wrong kind, or a command printing a Python traceback;
- silent wrong: accepted without a word, and the outcome is wrong (NaN, a run reported done that is not);
- lost data: a result missing or a file left 0-byte / truncated.
The first two are the goal for every row.

    python benchmarks/robustness.py                  # everything, table on stdout
    python benchmarks/robustness.py --fast           # without the rows that start clip_benchmark / sweeps
    python benchmarks/robustness.py --write reports/robustness.md
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

COLUMNS = ("clear error", "handled", "traceback", "silent wrong", "lost data")
GOOD = COLUMNS[:2]


@dataclass
class Row:
    area: str
    case: str
    column: str
    detail: str
    seconds: float = 0.0


from robustness_cases import Case, all_cases  # noqa: E402  (same folder)




# ---------------------------------------------------------------- running and the table


def run_cases(cases: list[Case], *, progress: bool = True) -> list[Row]:
    rows = []
    for case in cases:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="pb-robust-") as tmp:
            try:
                column, detail = case.run(Path(tmp))
            except Exception as exc:  # noqa: BLE001 - a broken case is itself a traceback row
                column, detail = "traceback", f"{type(exc).__name__}: {exc}"[:160]
            detail = detail.replace(tmp, "TMP")  # the same table from run to run
        rows.append(Row(case.area, case.name, column, detail.replace("|", "/").replace("\n", " "),
                        time.perf_counter() - start))
        if progress:
            print(f"[{len(rows)}/{len(cases)}] {case.area}: {case.name}: {column}", file=sys.stderr, flush=True)
    return rows


def table(rows: list[Row]) -> str:
    head = "| # | area | case | " + " | ".join(COLUMNS) + " | what happened |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 4)]
    for i, row in enumerate(rows, 1):
        marks = " | ".join("x" if row.column == c else "" for c in COLUMNS)
        lines.append(f"| {i} | {row.area} | {row.case} | {marks} | {row.detail} |")
    counts = {c: sum(r.column == c for r in rows) for c in COLUMNS}
    lines.append("| | | **total** | " + " | ".join(str(counts[c]) for c in COLUMNS) + " | |")
    return "\n".join(lines)


def markdown(rows: list[Row], command: str) -> str:
    bad = [r for r in rows if r.column not in GOOD]
    summary = (f"{len(rows)} cases; {len(rows) - len(bad)} in the first two columns"
               + (f"; {len(bad)} not: " + ", ".join(f"{r.area}: {r.case}" for r in bad) if bad else "") + ".")
    return "\n".join([
        "# Robustness battery", "",
        f"`{command}` (generated; the script writes this file). Each bad input or fault goes through the API or a "
        "command; its row is marked in one column. *clear error*: refused with one line naming the culprit "
        "(exit 2 on the command line); *handled*: accepted and the outcome checked; *traceback*, *silent wrong*, "
        "*lost data*: failures.", "",
        summary, "", table(rows), ""])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true", help="skip the rows that start clip_benchmark or sweeps")
    parser.add_argument("--only", default=None, help="only cases whose area or name contains this text")
    parser.add_argument("--write", default=None, metavar="MD", help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    cases = [c for c in all_cases() if not (args.fast and c.slow)]
    if args.only:
        cases = [c for c in cases if args.only in c.area or args.only in c.name]
    rows = run_cases(cases)
    print(table(rows))
    if args.write:
        from pruning_bench.record import atomic

        command = "python benchmarks/robustness.py" + (" --fast" if args.fast else "")
        atomic.write_text(args.write, markdown(rows, command))
        print(args.write, file=sys.stderr)
    return 0 if all(r.column in GOOD for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
