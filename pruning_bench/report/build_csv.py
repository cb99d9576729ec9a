"""Read a `clip_benchmark build` CSV as result records, so `report` and `leaderboard` take it like JSONs.

`clip_benchmark build` writes one row per result file: the metrics and every top-level key as
columns, nested blocks (`pruning`, `efficiency`, `data`, `per_image`, ...) as JSON (the plugin makes
build write JSON; older CSVs hold Python reprs, read too). A row is turned back into a record: cells
holding a dict or list become top-level blocks, the known top-level scalars (the run's `seed` and
`result_file`, the flat keys such as `pruning_slug`, `strategy`, `gmacs`) stay top-level, and the
other non-empty cells are the metrics. The record then carries the same identity and per-image
outcomes as the JSON file, so the report pairs and bootstraps alike from either.
"""
from __future__ import annotations

import ast
import csv
import json
import os
import re
from pathlib import Path

BUILD_KEYS = ("dataset", "model", "pretrained", "task", "language", "model_fullname")
TOP_LEVEL = set(BUILD_KEYS) | {"seed", "split", "classnames", "templates", "attention_output", "command",
                               "pruning_slug", "strategy", "gmacs", "gflops", "images_per_second", "result_file",
                               "batch_size", "dtype", "device", "amp", "threads"}


class CsvRecord:
    """One row of a build CSV, readable by the reporter's `result_row` like a result file."""

    def __init__(self, record: dict, source: Path, line: int):
        self.record, self.source, self.line = record, source, line

    def read_text(self) -> str:
        return json.dumps(self.record)

    def stat(self):
        return os.stat(self.source)

    def __str__(self) -> str:
        return f"{self.source}:{self.line}"


def literal(text: str):
    """A nested cell of a build CSV (JSON, or the Python repr of older CSVs), NaN included; else None."""
    if not text or text[0] not in "{[(":
        return None
    try:
        return json.loads(text)
    except ValueError:
        pass
    try:
        return ast.literal_eval(re.sub(r"\b(nan|inf)\b", "None", text))
    except (ValueError, SyntaxError):
        return None


def scalar(text: str):
    """A top-level cell as the JSON value it was written from: a number or a boolean when it reads as one."""
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def is_build_csv(path: Path) -> bool:
    """By extension, or by content: a header line naming `dataset` and `model` rather than a JSON object."""
    if path.suffix.lower() == ".csv":
        return True
    with open(path, errors="replace") as f:
        head = f.readline()
    return not head.lstrip().startswith(("{", "[")) and {"dataset", "model"} <= set(next(csv.reader([head]), []))


def build_csv_records(path: Path) -> list[CsvRecord]:
    """Rows of a build CSV as clip_benchmark result records."""
    records = []
    with open(path, newline="") as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
            record = {k: row.get(k, "") for k in BUILD_KEYS if k != "model_fullname"}
            metrics = {}
            for key, cell in row.items():
                if key in record or key is None or cell in ("", None):
                    continue
                nested = literal(cell)
                if isinstance(nested, (dict, list)):
                    record[key] = nested
                elif key in TOP_LEVEL:
                    record[key] = scalar(cell)
                else:
                    metrics[key] = cell
            record["metrics"] = metrics
            records.append(CsvRecord(record, path, line))
    return records
