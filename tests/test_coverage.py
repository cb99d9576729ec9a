"""The coverage benchmark on a few cells with fewer trials: the report's intervals hold, the old ones do not."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from pruning_bench.report import compare, load_results
from pruning_bench.report.aggregate import aggregate
from pruning_bench.report.uncertainty import pack_correct

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TRIALS = 300


@pytest.fixture(scope="module")
def coverage():
    spec = importlib.util.spec_from_file_location("coverage_benchmark", BENCHMARKS / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rates(record, name):
    c = record["counts"][name]
    return c.get("covered", np.nan) / record["trials"], c["false"] / record["trials"]


@pytest.mark.parametrize("regime, n, flip", [("one run", 500, 0.08), ("identical", 2000, 0.08),
                                             ("seed-driven", 2000, 0.08), ("shared", 500, 0.25)])
def test_per_image_intervals_hold_where_the_old_ones_did_not(coverage, regime, n, flip):
    record = coverage.run_cell({"kind": "difference", "regime": regime, "n": n, "flip": flip, "d": 0.0}, TRIALS)
    covered, false = rates(record, "per-image")
    assert 0.90 <= covered <= 0.985 and false <= 0.10
    if regime == "identical":  # deterministic seeds: the t interval over seeds has zero width
        assert rates(record, "before: t over seeds")[0] < 0.5
    if regime == "seed-driven":  # the bootstrap of the seed-averaged gain ignores the seeds (0.68 at 2,000 trials)
        assert rates(record, "before: bootstrap of the seed-averaged gain")[0] < 0.85


def test_a_lead_at_equal_scores_and_chance_are_not_called_out(coverage):
    record = coverage.run_cell({"kind": "difference", "regime": "identical", "n": 2000, "flip": 0.25, "d": 0.0}, TRIALS)
    assert rates(record, "per-image")[1] <= 0.10 and rates(record, "before: z on seed SEs")[1] > 0.5
    chance = coverage.run_cell({"kind": "chance", "regime": "identical", "n": 2000}, TRIALS)
    assert rates(chance, "above chance")[1] <= 0.06 < rates(chance, "before: above chance, images pooled over seeds")[1]


def test_the_benchmark_runs_the_reports_own_interval(coverage, tmp_path):
    """One simulated trial written as result files: `pruning-bench report` gives the interval the benchmark scores."""
    for regime in ("one run", "shared"):
        base, pruned, _ = coverage.simulate(np.random.default_rng(7), 1, 500, regime, -0.01, 0.25)
        folder = tmp_path / regime.replace(" ", "_")
        folder.mkdir()
        for seed in range(base.shape[1]):
            for name, correct, strategy in (("b", base[0, seed], None), ("p", pruned[0, seed], "tome")):
                (folder / f"{name}{seed}.json").write_text(json.dumps({
                    "dataset": "d", "model": "m", "pretrained": "", "task": "probe", "language": "en",
                    "seed": seed, "metrics": {"acc1": float(correct.mean())}, "per_image": pack_correct(correct),
                    "pruning": {"strategy": strategy, "params": {}} if strategy else None}))
        row = aggregate(compare(load_results([folder]))).set_index("strategy").loc["tome"]
        low, high = coverage.intervals(base, pruned)["per-image"]
        assert (row["acc1_delta_low"], row["acc1_delta_high"]) == pytest.approx((low[0], high[0]))


def test_reading_is_computed_from_the_table(coverage):
    rows = [{"method": "per-image", "seeds": 3, "cells": 4, "coverage_min": 0.94, "coverage_max": 0.96,
             "false_max": 0.05, "meets_goal": 4},
            {"method": "per-image", "seeds": 1, "cells": 2, "coverage_min": 0.92, "coverage_max": 0.95,
             "false_max": 0.07, "meets_goal": 1},
            {"method": "before: t over seeds", "seeds": 3, "cells": 4, "coverage_min": 0.2, "coverage_max": 0.9,
             "false_max": 0.8, "meets_goal": 1}]
    records = [{"kind": "difference", "regime": "one run", "n": 500, "flip": 0.25, "d": 0.0, "trials": 100,
                "counts": {"per-image": {"covered": 92, "false": 7}}},
               {"kind": "difference", "regime": "one run", "n": 2000, "flip": 0.08, "d": -0.01, "trials": 100,
                "counts": {"per-image": {"covered": 95, "false": 0}}}]
    text = coverage.reading(rows, records)
    goal, missed, before = text.split("\n\n")
    assert "per-image (3 seeds): coverage 0.940-0.960" in goal and "1 seed" not in goal
    assert "per-image (1 seed): coverage 0.920-0.950" in missed and "(1 of 2 cells miss: one run, n 500, 25% flipped, " \
        "d +0: 0.920 / 0.070)" in missed and "n 2000" not in missed
    assert "before: t over seeds (3 seeds)" in before and "(3 of 4 cells miss)" in before


def test_the_bounds_used_without_per_image_outcomes_over_cover(coverage):
    """The agreement bound is wider once predictions also change between wrong classes, as they do on the reference
    model; the binomial bound is wider still: none is a calibrated 95%, so the report shows none of them."""
    record = coverage.run_cell({"kind": "difference", "regime": "one run", "n": 2000, "flip": 0.08, "d": -0.01}, TRIALS)
    width = {name: c["width"] for name, c in record["counts"].items()}
    tight, wrong = "before: agreement bound, tight", "before: agreement bound, wrong-to-wrong changes"
    assert width["per-image"] < width[tight] * 1.05 < width[wrong] < width["before: binomial bound"]
    assert rates(record, wrong)[0] > 0.97 and rates(record, "before: binomial bound")[0] > 0.97


def test_resumes_without_redoing_finished_cells(coverage, tmp_path, monkeypatch):
    few = [{"kind": "chance", "regime": "one run", "n": 500}, {"kind": "chance", "regime": "identical", "n": 500}]
    monkeypatch.setattr(coverage, "cells", lambda: iter(few))
    out = tmp_path / "cov"
    assert coverage.main(["--trials", "50", "--out", str(out)]) == 0
    first = (tmp_path / "cov.jsonl").read_text()
    calls, simulate = [], coverage.run_cell
    monkeypatch.setattr(coverage, "run_cell", lambda cell, trials: calls.append(cell) or simulate(cell, trials))
    assert coverage.main(["--trials", "50", "--out", str(out)]) == 0
    assert calls == [] and (tmp_path / "cov.jsonl").read_text() == first
    assert "python benchmarks/coverage.py --trials 50" in (tmp_path / "cov.md").read_text()
    records = [json.loads(line) for line in first.splitlines()]
    del records[1]["counts"]["above chance"]  # a record from before a method was added is simulated again
    (tmp_path / "cov.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert coverage.main(["--trials", "50", "--out", str(out)]) == 0
    again = [json.loads(line) for line in (tmp_path / "cov.jsonl").read_text().splitlines()]
    assert calls == [few[1]] and again[1]["counts"] == json.loads(first.splitlines()[1])["counts"]
    assert coverage.main(["--trials", "0"]) == 2
    sys.stderr.flush()
