"""Fidelity columns of `pruning-bench eval` results, a table beside the comparison report.

The reporter compares accuracy and compute with each baseline; this adds what only the eval path
measures (agreement with the unpruned model, raw and centred feature cosine) as one Markdown table.

    python -m pruning_bench.report.fidelity_table results/main -o reports/main/fidelity.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ..record import atomic
from .fields import format_params
from .load import result_files

COLUMNS = ["dataset", "task", "strategy", "params", "acc1", "agreement", "agreement_kind", "cosine",
           "cosine_centred", "self_retrieval_at1", "gmacs", "images_per_second", "images"]


def rows(paths) -> pd.DataFrame:
    records = []
    for path in result_files(paths):
        result = json.loads(path.read_text())
        metrics = result.get("metrics") or {}
        if "cosine_centred" not in metrics:  # not an eval-path result
            continue
        pruning, efficiency = result.get("pruning") or {}, result.get("efficiency") or {}
        records.append({
            "dataset": result.get("dataset"), "task": result.get("task"),
            "strategy": pruning.get("strategy") or "baseline", "params": format_params(pruning.get("params")),
            **{k: metrics.get(k) for k in ("acc1", "agreement", "agreement_kind", "cosine", "cosine_centred",
                                           "self_retrieval_at1", "images")},
            "gmacs": efficiency.get("gmacs"), "images_per_second": efficiency.get("images_per_second"),
        })
    if not records:
        raise ValueError("no pruning-bench eval results (with cosine_centred) found")
    frame = pd.DataFrame(records, columns=COLUMNS)
    frame["_pruned"] = frame["strategy"] != "baseline"
    return frame.sort_values(["dataset", "task", "_pruned", "gmacs"], ascending=[True, True, True, False]) \
        .drop(columns="_pruned").reset_index(drop=True)


def markdown(frame: pd.DataFrame) -> str:
    return "\n".join([
        "# Agreement and feature fidelity against the unpruned model", "",
        frame.to_markdown(index=False, floatfmt=".4f"), "",
        "`agreement`: share of images whose top-1 decision is unchanged (`classifier`: the probe or the model's "
        "head; `nearest_neighbour`: the nearest other image among unpruned features). `cosine_centred` subtracts "
        "the unpruned features' mean first (raw cosine is high even between different images). Centring needs "
        "enough images to estimate that mean: on a handful of images, read it as indicative only.", "",
    ])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+")
    parser.add_argument("-o", "--output", required=True, help="Markdown file to write")
    args = parser.parse_args(argv)
    text = markdown(rows(args.results))
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(args.output, text)
    print(args.output)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
