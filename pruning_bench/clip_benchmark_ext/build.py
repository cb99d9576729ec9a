"""`clip_benchmark build` with JSON cells: its CSV holds nested blocks (`pruning`, `efficiency`, `data`,
`per_image`, ...) as JSON rather than Python reprs, so any reader (and `pruning-bench report`) parses them.

clip_benchmark writes the CSV with `csv.DictWriter`, which writes a dict as `str(dict)`. For the duration
of one `main_build` call the cli module's `csv` is a stand-in whose `DictWriter` JSON-encodes dict and list
cells; everything else about the command is clip_benchmark's.
"""
from __future__ import annotations

import functools
import json


class _JsonCellWriter:
    """csv.DictWriter whose nested cells (dicts, lists) are JSON, not Python reprs."""

    def __init__(self, real_csv):
        self.real_csv = real_csv

    def DictWriter(self, *a, **kw):  # noqa: N802 (csv's name)
        writer = self.real_csv.DictWriter(*a, **kw)
        writerow = writer.writerow

        def json_cells(row):
            return writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})

        writer.writerow = json_cells
        return writer

    def __getattr__(self, name):
        return getattr(self.real_csv, name)


def wrap_main_build(cli, original):
    """`clip_benchmark build`: nested blocks (`pruning`, `efficiency`, `data`, ...) are written as JSON cells."""
    @functools.wraps(original)
    def main_build(base):
        real = cli.csv
        cli.csv = _JsonCellWriter(real)
        try:
            return original(base)
        finally:
            cli.csv = real

    return main_build
