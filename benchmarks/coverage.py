"""Simulated coverage and false-call rate of every accuracy interval `pruning-bench report` and `leaderboard` use.

Each cell simulates a pruned configuration and its baseline evaluated on one shared test set of n images
(per-image correctness), with 1 or 3 seeds, and runs the package's own interval functions
(`pruning_bench.report.uncertainty`) on every trial at once (numpy, trials x seeds x images):
- base accuracy 0.7 (seed sd `acc_sd`); a share `flip` of images changes correctness under pruning, losses and
  gains set so that a seed's true difference is d_s = d + seed sd `gain_sd` x N(0, 1);
- an image's outcome is shared by every seed with probability `shared` (the same image is hard, and flips, for
  every seed), else drawn afresh for that seed;
- seed regimes: `one run` (1 seed: the interval is about that run, its true difference d_s), `identical`
  (3 identical runs), `shared` (3 seeds, shared 0.7, gain sd 0.5 pp, accuracy sd 1 pp), `seed-driven`
  (3 seeds, shared 0.2, gain sd 1 pp, accuracy sd 3 pp), `independent` (3 seeds, nothing shared, no seed
  effect), and `shared` with 2 and with 5 seeds; with several seeds the truth is d, the expected difference
  over seeds.
Without per-image outcomes (older result files) the report gives no interval: the bounds it used for them are
scored here as "before" rows, the agreement bound both in its tight case (predictions change only where correctness
does) and with WRONG_TO_WRONG prediction changes between two wrong classes per image whose correctness changed
(as the reference model's probe does, reports/accuracy.jsonl: 0.30-0.56, median 0.39).
Coverage = share of trials whose 95% interval holds the truth; false call = interval excludes zero when d = 0,
or lies wholly on the wrong side of zero when d != 0; call = interval excludes zero on the right side.
Half-width: the mean over trials and cells of half the interval, in points.
Chance: a configuration at exactly 1/10 accuracy (10 classes, images shared across seeds as above), false call =
"above chance". "before" rows are intervals the report used until now, written out here for comparison.

Records go to OUT.jsonl after each cell (a rerun skips cells finished with at least --trials trials and every
method below) and OUT.md is rewritten each time.
    python benchmarks/coverage.py --trials 2000        # reports/coverage.md (its header says how long it took)
    python benchmarks/coverage.py --trials 400 --out /tmp/coverage
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
import zlib
from pathlib import Path

import numpy as np

from pruning_bench.record.atomic import write_text
from scipy import stats

from pruning_bench.report.uncertainty import Z95, above_chance, config_difference_interval, satterthwaite, t95

BASE_ACCURACY = 0.7
CLASSES = 10
SIZES = (500, 2000)
DIFFERENCES = (0.0, -0.01, -0.03)
FLIPS = (0.08, 0.25)
# name: (seeds, shared, gain sd, accuracy sd)
REGIMES = {"one run": (1, 1.0, 0.0, 0.0), "identical": (3, 1.0, 0.0, 0.0), "shared": (3, 0.7, 0.005, 0.01),
           "seed-driven": (3, 0.2, 0.01, 0.03), "independent": (3, 0.0, 0.0, 0.0), "shared, 2 seeds": (2, 0.7, 0.005, 0.01),
           "shared, 5 seeds": (5, 0.7, 0.005, 0.01)}
GOAL = (0.93, 0.97, 0.06)  # coverage low, high, false calls at most
CHUNK = 200  # trials simulated at once (memory: CHUNK x 3 x 2,000 per array)
WRONG_TO_WRONG = 0.4  # prediction changes between two wrong classes per image whose correctness changed

METHODS = {  # name: (what it is, used by)
    "per-image": ("paired bootstrap over images (1 seed) / images + seeds t, Satterthwaite dof (2+ seeds)",
                  "report Δ, leaderboard lead"),
    "before: agreement bound, tight": ("bound from top-1 agreement (+ seed spread, t), predictions changing only where "
                                       "correctness does", "report Δ until now, no per-image outcomes (now: none)"),
    "before: agreement bound, wrong-to-wrong changes": (
        f"the same with {WRONG_TO_WRONG} changes between wrong classes per changed outcome (the reference model's)",
        "report Δ until now, no per-image outcomes (now: none)"),
    "before: binomial bound": ("binomial bound per run (+ seed spread, t)",
                               "report Δ until now, no per-image outcomes (now: none)"),
    "before: scores bound": ("binomial + seed spread of each score",
                             "leaderboard lead until now, no per-image outcomes (now: none)"),
    "before: t over seeds": ("t over per-seed differences (images ignored)", "report Δ until now, 2+ seeds"),
    "before: bootstrap of the seed-averaged gain": ("images resampled, seed spread ignored (normal approximation)",
                                                "report Δ until now, 2+ seeds"),
    "before: z on seed SEs": ("1.96 x sqrt(se_a^2 + se_b^2), se from seed std or binomial over n x seeds",
                              "leaderboard lead until now"),
}
CHANCE_METHODS = {"above chance": "every run above 1/classes, one-sided exact binomial test at 2.5% per run",
                  "before: above chance, images pooled over seeds": "mean - 1.96 x binomial se over n x seeds images"}


def _mixed(rng, trials: int, seeds: int, n: int, shared: float) -> np.ndarray:
    """Uniforms (trials, seeds, n): an image's draw is shared by every seed with probability `shared`."""
    common = rng.random((trials, 1, n))
    if shared >= 1:
        return np.broadcast_to(common, (trials, seeds, n))
    return np.where(rng.random((trials, seeds, n)) < shared, common, rng.random((trials, seeds, n)))


def simulate(rng, trials: int, n: int, regime: str, d: float, flip: float):
    """(baseline, pruned) correctness (trials, seeds, n) and each seed's true difference (trials, seeds)."""
    seeds, shared, gain_sd, acc_sd = REGIMES[regime]
    p0 = np.clip(BASE_ACCURACY + acc_sd * rng.standard_normal((trials, seeds)), 0.05, 0.95)
    ds = np.clip(d + gain_sd * rng.standard_normal((trials, seeds)), -flip, flip)
    lose, gain = (flip - ds) / (2 * p0), (flip + ds) / (2 * (1 - p0))  # P(flip | correct), P(flip | wrong)
    base = _mixed(rng, trials, seeds, n, shared) < p0[..., None]
    flips = _mixed(rng, trials, seeds, n, shared) < np.where(base, lose[..., None], gain[..., None])
    return base, base ^ flips, ds


def bound_interval(deltas, image_variance, n):
    """The report's bound until now: per-seed deltas (..., S), a bound on the per-image variance of the gain over n
    shared images: bound / n plus, for S >= 2, the seed spread / S (t, Satterthwaite dof)."""
    seeds = deltas.shape[-1]
    parts = [(np.asarray(image_variance, float) / n, np.inf)]
    if seeds >= 2:
        parts.append((deltas.var(-1, ddof=1) / seeds, seeds - 1))
    variance, dof = satterthwaite(parts)
    mean, half = deltas.mean(-1), t95(dof) * np.sqrt(variance)
    return mean - half, mean + half


def agreement_variance(delta, agreement):
    """Per-image variance bound of a paired gain whose images changed prediction at most 1 - agreement of the time."""
    return np.maximum(1.0 - agreement - delta ** 2, 0.0)


def scores_bound_interval(acc_p, acc_b, n):
    """The leaderboard's lead bound until now: binomial image part of both scores plus each one's seed spread."""
    seeds = acc_p.shape[-1]
    parts = [(sum(a.mean(-1) * (1 - a.mean(-1)) for a in (acc_p, acc_b)) / n, np.inf)]
    if seeds >= 2:
        parts += [(a.var(-1, ddof=1) / seeds, seeds - 1) for a in (acc_p, acc_b)]
    variance, dof = satterthwaite(parts)
    mean, half = acc_p.mean(-1) - acc_b.mean(-1), t95(dof) * np.sqrt(variance)
    return mean - half, mean + half


def intervals(base: np.ndarray, pruned: np.ndarray, rng=None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(low, high) per trial of every method: the report's by the package's own function, the ones it used until now
    written out above (`rng` draws the wrong-to-wrong prediction changes)."""
    rng = np.random.default_rng(0) if rng is None else rng
    seeds, n = base.shape[-2:]
    acc_b, acc_p = base.mean(-1), pruned.mean(-1)
    deltas = acc_p - acc_b
    flipped = (base != pruned).sum(-1)
    both_wrong = (~base & ~pruned).sum(-1)
    extra = rng.binomial(both_wrong, np.minimum(1.0, WRONG_TO_WRONG * flipped / np.maximum(both_wrong, 1)))
    out = {"per-image": config_difference_interval(pruned, base)[1:]}
    for name, changed in (("tight", flipped), ("wrong-to-wrong changes", flipped + extra)):
        out[f"before: agreement bound, {name}"] = bound_interval(
            deltas, agreement_variance(deltas, 1.0 - changed / n).mean(-1), n)
    out["before: binomial bound"] = bound_interval(deltas, (acc_p * (1 - acc_p) + acc_b * (1 - acc_b)).mean(-1), n)
    out["before: scores bound"] = scores_bound_interval(acc_p, acc_b, n)
    mean = deltas.mean(-1)
    if seeds > 1:
        half = stats.t.ppf(0.975, seeds - 1) * deltas.std(-1, ddof=1) / np.sqrt(seeds)
        out["before: t over seeds"] = (mean - half, mean + half)
        gain = (pruned.astype(float) - base).mean(-2)
        half = Z95 * gain.std(-1) / np.sqrt(n)
        out["before: bootstrap of the seed-averaged gain"] = (mean - half, mean + half)
        se = np.sqrt(acc_p.var(-1, ddof=1) / seeds + acc_b.var(-1, ddof=1) / seeds)
    else:
        pooled = [a.mean(-1) for a in (acc_p, acc_b)]
        se = np.sqrt(sum(p * (1 - p) / (n * seeds) for p in pooled))
    out["before: z on seed SEs"] = (mean - Z95 * se, mean + Z95 * se)
    return out


def chance_calls(base: np.ndarray) -> dict[str, np.ndarray]:
    """Per trial: is a configuration at exactly chance called above chance (new rule, old rule)?"""
    seeds, n = base.shape[-2:]
    correct = base.sum(-1)
    new = above_chance(correct, n, CLASSES).all(-1)
    acc = correct.sum(-1) / (n * seeds)
    old = acc - Z95 * np.sqrt(acc * (1 - acc) / (n * seeds)) > 1.0 / CLASSES
    return {"above chance": new, "before: above chance, images pooled over seeds": old}


def cells():
    for regime in REGIMES:
        for n in SIZES:
            for flip in FLIPS:
                for d in DIFFERENCES:
                    yield {"kind": "difference", "regime": regime, "n": n, "flip": flip, "d": d}
            yield {"kind": "chance", "regime": regime, "n": n}


def methods_of(cell: dict) -> set[str]:
    """The methods a cell's record must count (a record without one of them is simulated again)."""
    if cell["kind"] == "chance":
        return set(CHANCE_METHODS)
    several = {"before: t over seeds", "before: bootstrap of the seed-averaged gain"}
    return set(METHODS) - (several if REGIMES[cell["regime"]][0] == 1 else set())


def key_of(cell: dict) -> str:
    return json.dumps(cell, sort_keys=True)


def run_cell(cell: dict, trials: int) -> dict:
    """Counts for one cell over `trials` trials (seeded by the cell, so a rerun gives the same numbers)."""
    start = time.perf_counter()
    rng = np.random.default_rng(zlib.crc32(key_of(cell).encode()))
    side = np.random.default_rng([zlib.crc32(key_of(cell).encode()), 1])  # leaves the outcomes' stream as it was
    counts: dict[str, dict[str, float]] = {}
    done = 0
    while done < trials:
        chunk = min(CHUNK, trials - done)
        if cell["kind"] == "chance":
            seeds, shared = REGIMES[cell["regime"]][:2]
            base = _mixed(rng, chunk, seeds, cell["n"], shared) < 1.0 / CLASSES
            for name, called in chance_calls(base).items():
                counts.setdefault(name, {"false": 0})["false"] += int(called.sum())
        else:
            base, pruned, ds = simulate(rng, chunk, cell["n"], cell["regime"], cell["d"], cell["flip"])
            truth = ds[:, 0] if ds.shape[1] == 1 else np.full(chunk, cell["d"])
            for name, (low, high) in intervals(base, pruned, side).items():
                c = counts.setdefault(name, {"covered": 0, "false": 0, "called": 0, "width": 0.0})
                c["covered"] += int(((low <= truth) & (truth <= high)).sum())
                wrong = (low > 0) | (high < 0) if cell["d"] == 0 else (low > 0) if cell["d"] < 0 else (high < 0)
                right = np.zeros(chunk, bool) if cell["d"] == 0 else (high < 0) if cell["d"] < 0 else (low > 0)
                c["false"] += int(wrong.sum())
                c["called"] += int(right.sum())
                c["width"] += float(np.nan_to_num(high - low).sum())
        done += chunk
    return {"key": key_of(cell), **cell, "trials": trials, "counts": counts,
            "seconds": round(time.perf_counter() - start, 2)}


# ---------------------------------------------------------------- tables


def summary(records: list[dict]) -> list[dict]:
    """Per method (and seed count): cells, coverage range, worst false-call rate, cells meeting the goal."""
    low, high, worst = GOAL
    rows = []
    for name in list(METHODS) + list(CHANCE_METHODS):
        for seeds in sorted({spec[0] for spec in REGIMES.values()}):
            mine = [r for r in records if name in r["counts"] and REGIMES[r["regime"]][0] == seeds]
            rates = [(r["counts"][name].get("covered", np.nan) / r["trials"], r["counts"][name]["false"] / r["trials"])
                     for r in mine]
            if not rates:
                continue
            cover = [c for c, _ in rates if not np.isnan(c)]
            meets = sum((name in CHANCE_METHODS or low <= c <= high) and f <= worst for c, f in rates)
            rows.append({"method": name, "seeds": seeds, "cells": len(rates),
                         "coverage_min": min(cover) if cover else np.nan, "coverage_max": max(cover) if cover else np.nan,
                         "false_max": max(f for _, f in rates), "meets_goal": meets,
                         "half_width_pp": np.mean([r["counts"][name].get("width", np.nan) / r["trials"] * 50
                                                   for r in mine])})
    return rows


def _described(row: dict) -> str:
    seeds = f"{row['seeds']} seed{'s' if row['seeds'] > 1 else ''}"
    coverage = "" if np.isnan(row["coverage_min"]) else \
        f"coverage {row['coverage_min']:.3f}-{row['coverage_max']:.3f}, "
    return f"{row['method']} ({seeds}): {coverage}false calls up to {row['false_max']:.3f}"


def missed_cells(records: list[dict], name: str, seeds: int) -> list[str]:
    """`regime, n, flipped, d: coverage / false calls` of every cell where `name` misses the goal."""
    low, high, worst = GOAL
    found = []
    for r in records:
        c = r["counts"].get(name)
        if c is None or REGIMES[r["regime"]][0] != seeds:
            continue
        cover, false = c.get("covered", np.nan) / r["trials"], c["false"] / r["trials"]
        if not ((name in CHANCE_METHODS or low <= cover <= high) and false <= worst):
            where = f"{r['regime']}, n {r['n']}" + (f", {r['flip']:.0%} flipped, d {r['d'] * 100:+.0f}"
                                                    if r["kind"] == "difference" else "")
            found.append(f"{where}: {cover:.3f} / {false:.3f}")
    return found


def reading(rows: list[dict], records: list[dict] = ()) -> str:
    """The report's reading, computed from the summary rows (and, to name the cells missed, the records)."""
    new = [r for r in rows if not r["method"].startswith("before")]
    old = [r for r in rows if r["method"].startswith("before")]
    met = [_described(r) for r in new if r["meets_goal"] == r["cells"]]
    missed = []
    for r in new:
        if r["meets_goal"] < r["cells"]:
            cells = missed_cells(list(records), r["method"], r["seeds"])
            missed.append(f"{_described(r)} ({r['cells'] - r['meets_goal']} of {r['cells']} cells miss"
                          + (": " + ", ".join(cells) if cells else "") + ")")
    failing = [f"{_described(r)} ({r['cells'] - r['meets_goal']} of {r['cells']} cells miss)" for r in old
               if r["meets_goal"] < r["cells"]]
    text = [f"Meet the goal (coverage in [{GOAL[0]}, {GOAL[1]}], false calls <= {GOAL[2]}) in every cell: "
            + ("; ".join(met) if met else "none") + "."]
    text.append("Miss it in some cells: " + ("; ".join(missed) if missed else "none") + ".")
    text.append("The intervals used until now (results without per-image outcomes now get no interval at all): "
                + ("; ".join(failing) if failing else "none miss it") + ".")
    return "\n\n".join(text)


def _cell_text(record: dict, name: str) -> str:
    c, t = record["counts"].get(name), record["trials"]
    if c is None:
        return ""
    return f"{c['covered'] / t:.3f} / {c['false'] / t:.3f}"


def _summary_table(rows: list[dict]) -> str:
    import pandas as pd

    shown = pd.DataFrame(rows).astype(object)
    for column in ("coverage_min", "coverage_max", "false_max"):
        shown[column] = [f"{v:.3f}" if not np.isnan(v) else "" for v in shown[column]]
    shown["half_width_pp"] = [f"{v:.2f}" if not np.isnan(v) else "" for v in shown["half_width_pp"]]
    return shown.to_markdown(index=False, disable_numparse=True)


def markdown(records: list[dict], command: str) -> str:
    import pandas as pd

    rows = summary(records)
    lines = ["# Coverage of the report's and leaderboard's 95% intervals (simulated)", "",
             f"Command: `{command}` ({len(records)} cells, {sum(r.get('seconds', 0) for r in records) / 60:.1f} min "
             "of compute in all, shared 2-core CPU). Definitions and the simulated model: the docstring of `benchmarks/coverage.py`. "
             f"Goal: coverage in [{GOAL[0]}, {GOAL[1]}] and false calls <= {GOAL[2]} in every cell; with the "
             "trials below the Monte Carlo standard error of a coverage near 0.95 is about "
             f"{np.sqrt(0.95 * 0.05 / max(r['trials'] for r in records)):.3f}.", "", "## Reading", "", reading(rows, records), "",
             "## Summary", "",
             _summary_table(rows), "", "## Methods", ""]
    lines += [f"- `{name}`: {what}; {used}." for name, (what, used) in METHODS.items()]
    lines += [f"- `{name}`: {what}." for name, what in CHANCE_METHODS.items()]
    lines += ["", "## Coverage / false-call rate per cell", "",
              "Rows: seed regime, images, share of images flipped; columns: true difference in points."]
    differences = [r for r in records if r["kind"] == "difference"]
    for name in METHODS:
        table = []
        for regime in REGIMES:
            for n in SIZES:
                for flip in FLIPS:
                    found = {r["d"]: r for r in differences if (r["regime"], r["n"], r["flip"]) == (regime, n, flip)}
                    cells_ = [_cell_text(found[d], name) if d in found else "" for d in DIFFERENCES]
                    if any(cells_):
                        table.append([regime, n, f"{flip:.0%}", *cells_, min(r["trials"] for r in found.values())])
        if table:
            header = ["seeds", "n", "flipped"] + [f"d = {d * 100:+.0f}" for d in DIFFERENCES] + ["trials"]
            lines += ["", f"### {name}", "", pd.DataFrame(table, columns=header).to_markdown(index=False), ""]
    chance = [r for r in records if r["kind"] == "chance"]
    if chance:
        table = [[r["regime"], r["n"], *[r["counts"][m]["false"] / r["trials"] for m in CHANCE_METHODS], r["trials"]]
                 for r in chance]
        lines += ["", "### Above chance at exactly chance (false-call rate)", "",
                  pd.DataFrame(table, columns=["seeds", "n", *CHANCE_METHODS, "trials"]).to_markdown(
                      index=False, floatfmt=".3f"), ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000, help="trials per cell (default 1000; the goal needs >= 400)")
    parser.add_argument("--out", default="reports/coverage", help="output prefix: OUT.jsonl (records) and OUT.md")
    args = parser.parse_args(argv)
    if args.trials < 1:
        print(f"coverage.py: error: --trials {args.trials}: must be >= 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    records_path = out.with_suffix(".jsonl")
    records = [json.loads(line) for line in records_path.read_text().splitlines() if line.strip()] \
        if records_path.exists() else []
    done = {r["key"] for r in records if r["trials"] >= args.trials and methods_of(r) <= set(r["counts"])}
    records = [r for r in records if r["key"] in done]
    command = "python benchmarks/coverage.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    todo = [c for c in cells() if key_of(c) not in done]
    for i, cell in enumerate(todo, 1):
        records.append(run_cell(cell, args.trials))
        write_text(records_path, "".join(json.dumps(r) + "\n" for r in records))
        write_text(out.with_suffix(".md"), markdown(records, command.strip()))
        print(f"[{i}/{len(todo)}] {key_of(cell)} ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    if not todo:
        write_text(out.with_suffix(".md"), markdown(records, command.strip()))
    print(out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
