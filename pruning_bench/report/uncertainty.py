"""How sure a difference is: intervals that hold their 95% when seeds share one test set.

A configuration's accuracy difference against its baseline (pruned minus baseline, one pair per seed,
every pair evaluated on the same test images) is decided, in this order of preference:
1. `bootstrap` (one seed, per-image correctness `per_image.correct`, bit-packed, in both results): the
   images are resampled with replacement (2,000 draws, fixed seed; drawn as multinomial counts of the
   lost / unchanged / gained images, the same distribution as resampling indices) and the 2.5th to 97.5th
   percentile of the difference is the interval. It is about this run's weights on images like these:
   one seed cannot tell how much another seed would move the difference.
2. `images + seeds` (n >= 2 seeds, per-image correctness): the per-image gains form an images x seeds
   table; its two-way random-effects decomposition gives the variance of the mean gain as an image part
   (max(mean square over images - interaction mean square, 0) / (n S): how much the shared images move
   every seed alike) + a seed part (the variance of the per-seed differences / S, S - 1 degrees of freedom).
   The interval is mean +- t(0.975, df) x sqrt(variance), df by Satterthwaite (few seeds whose spread
   dominates: close to S - 1; computed with the seed part at the 30% chi-square quantile's upper value, which
   offsets Satterthwaite's optimism with few seeds). Identical seeds give the paired image interval, never
   zero width.
3. otherwise no interval (NaN, method `none: per-image outcomes missing`, `MISSING_OUTCOMES_NOTE`): a
   result file without per-image correctness (written before it was kept) holds accuracies, top-1
   agreement and the seeds' spread, and none of these calibrates a 95% interval. Agreement only bounds the
   images whose correctness changed (on the reference model a quarter to a third of the changed
   predictions go from one wrong class to another, reports/accuracy.jsonl: a bound 1.14-1.24 times the
   paired standard error); the binomial bound ignores how closely a run follows its baseline; the seeds'
   spread misses the image noise the seeds share (identical seeds have none). With predictions changing
   between wrong classes as on the reference model, those bounds covered 0.973-1.000 in every cell of
   `benchmarks/coverage.py` (the goal is 0.93-0.97), never a calibrated 95%, so the report shows the
   difference without an interval and never calls it out (`significant` NA); re-running with this
   version records the outcomes.
A difference is called out (significant) only when its 95% interval excludes zero. When no image changed
in any run, the interval is +-3/n (the rule of three on the share of images that could change).

Leaderboard leads use the same intervals between two configurations (seeds paired by label when both
have the same seeds, else each configuration's seed part added); without both configurations' per-image
outcomes there is no interval and no lead is called. A configuration is above chance only
when every one of its runs is, each by a one-sided exact binomial test at 2.5% against 1 / classes on its
own images (seeds sharing a test set are never pooled). `benchmarks/coverage.py` simulates the coverage
and false-call rate of each (`reports/coverage.md`).
"""
from __future__ import annotations

import base64
import math

import numpy as np
import pandas as pd
from scipy import stats

BOOTSTRAP_DRAWS = 2000
Z95 = 1.959963984540054
CHANCE_LEVEL = 0.025  # one-sided, per run
# the dof of an images + seeds interval are computed with the seed part at the upper end of what its spread allows
# (divided by this quantile of chi2(S - 1) / (S - 1)): with few seeds, a spread small by chance would otherwise both
# narrow the interval and raise its dof (Satterthwaite's optimism: 0.93-0.94 coverage in benchmarks/coverage.py at
# the plain estimate; chosen there)
SEED_DOF_QUANTILE = 0.3
NO_OUTCOMES = "none: per-image outcomes missing"
MISSING_OUTCOMES_NOTE = (
    "No 95% interval where a run or its baseline carries no per-image outcomes (`per_image`; result files written "
    "before they were kept): what such a file keeps (accuracy, top-1 agreement, the seeds' spread) bounds the "
    "difference's uncertainty but cannot calibrate it (those bounds covered 0.973-1.000 in reports/coverage.md), so "
    "the difference is shown without an interval and never called out. Re-run those runs and their baseline with "
    "this version (`pruning-bench eval`, `pruning-bench sweep`, `prune_compare.sh`, or `clip_benchmark eval` with "
    "a pruning flag): every result it writes keeps them.")


def pack_correct(correct) -> dict:
    """Per-image correctness as stored in a result file: bit-packed, base64, with the image count."""
    bits = np.asarray(correct, dtype=bool)
    return {"correct": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii"), "n": int(bits.size),
            "encoding": "numpy.packbits of 0/1 per test image in evaluation order, base64"}


def unpack_correct(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[: int(n)].astype(bool)


def t95(dof):
    """t(0.975, dof), elementwise; infinite dof gives the normal quantile."""
    return stats.t.ppf(0.975, np.asarray(dof, float))


def _floor(half, changed, n):
    """The rule of three where no image changed: +-3/n instead of a zero-width interval."""
    return np.where(changed, half, 3.0 / n)


def bootstrap_interval(gains, draws: int = BOOTSTRAP_DRAWS, seed: int = 0):
    """(low, high) percentile interval of the mean of `gains` (..., n) in {-1, 0, 1}, one per leading index."""
    gains = np.asarray(gains)
    n = gains.shape[-1]
    counts = np.stack([(gains < 0).sum(-1), (gains == 0).sum(-1), (gains > 0).sum(-1)], -1)
    if counts.sum(-1).min() != n:
        raise ValueError("bootstrap_interval takes per-image gains in {-1, 0, 1}")
    shares = counts / n
    drawn = np.random.default_rng(seed).multinomial(n, np.broadcast_to(shares[..., None, :],
                                                                       shares.shape[:-1] + (draws, 3)))
    means = (drawn[..., 2] - drawn[..., 0]) / n
    low, high = np.percentile(means, [2.5, 97.5], axis=-1)
    mean, half = gains.mean(-1), 3.0 / n
    changed = counts[..., 1] < n
    return np.where(changed, low, mean - half), np.where(changed, high, mean + half)


def two_way(table):
    """Mean and mean squares (images, seeds, interaction) of a (..., S, n) table of per-image values."""
    table = np.asarray(table, float)
    seeds, n = table.shape[-2:]
    grand = table.mean((-2, -1))
    by_image, by_seed = table.mean(-2), table.mean(-1)
    total = ((table - grand[..., None, None]) ** 2).sum((-2, -1))
    images = seeds * ((by_image - grand[..., None]) ** 2).sum(-1)
    across = n * ((by_seed - grand[..., None]) ** 2).sum(-1)
    error = np.maximum(total - images - across, 0.0) / ((n - 1) * (seeds - 1))
    return grand, images / (n - 1), across / (seeds - 1), error


def variance_parts(table):
    """The variance of a (..., S, n) table's grand mean, S >= 2, as two (variance, dof) parts:
    images, max(MS_images - MS_error, 0) / (n S), with n - 1 dof (both mean squares have at least that many; a
    Satterthwaite dof of their difference collapses when it is near zero, and with it the interval);
    seeds, MS_seeds / (n S) = (variance of the per-seed means) / S, with S - 1 dof.
    Their sum is unbiased for sigma_image^2 / n + sigma_seed^2 / S + sigma_error^2 / (n S) (before the
    truncation at zero, which only widens)."""
    seeds, n = np.shape(table)[-2:]
    _, ms_image, ms_seed, ms_error = two_way(table)
    excess = np.maximum(ms_image - ms_error, 0.0)
    return ((excess / (n * seeds), np.full(np.shape(excess), n - 1.0)),
            (ms_seed / (n * seeds), np.full(np.shape(ms_seed), seeds - 1.0)))


def seeds_t_half(image_parts, seed_parts):
    """Half-width t(0.975, dof) x sqrt(variance) of a sum of image parts and seed parts, (variance, dof) each: the
    variance as estimated, the dof by Satterthwaite with each seed part at its SEED_DOF_QUANTILE upper value."""
    variance, _ = satterthwaite(image_parts + seed_parts)
    upper = [(v * d / stats.chi2.ppf(SEED_DOF_QUANTILE, d), d) for v, d in seed_parts]
    _, dof = satterthwaite(image_parts + upper)
    return variance, t95(dof) * np.sqrt(variance)


def satterthwaite(parts):
    """(variance, dof) of a sum of independent variance estimates given as (variance, dof) pairs."""
    variance = sum(np.asarray(v, float) for v, _ in parts)
    with np.errstate(divide="ignore", invalid="ignore"):
        denominator = sum(np.where(np.asarray(v) > 0, np.asarray(v, float) ** 2 / d, 0.0) for v, d in parts)
        dof = np.where(denominator > 0, variance ** 2 / denominator, np.inf)
    return variance, dof


def images_and_seeds_interval(gains):
    """(mean, low, high) of the mean of a (..., S, n) table of per-image gains, S >= 2 seeds on shared images."""
    gains = np.asarray(gains, float)
    n = gains.shape[-1]
    grand = gains.mean((-2, -1))
    image, seed = variance_parts(gains)
    variance, half = seeds_t_half([image], [seed])
    half = _floor(half, variance > 0, n)
    return grand, grand - half, grand + half


def config_difference_interval(a, b):
    """(mean, low, high) of mean(a) - mean(b) for two configurations' correctness tables (..., Sa, n) and
    (..., Sb, n) on the same images: paired by seed when Sa == Sb (the bootstrap for one seed, else
    `images_and_seeds_interval`), else each configuration's own seed part is added to the image part of the
    difference of seed-averaged outcomes (Satterthwaite dof)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a, b = (a[None] if a.ndim == 1 else a), (b[None] if b.ndim == 1 else b)
    (sa, n), sb = a.shape[-2:], b.shape[-2]
    if sa == sb:
        gains = a - b
        if sa == 1:
            low, high = bootstrap_interval(gains[..., 0, :])
            return gains.mean((-2, -1)), low, high
        return images_and_seeds_interval(gains)
    gain = a.mean(-2) - b.mean(-2)
    variance, half = seeds_t_half([(gain.var(-1, ddof=1) / n, n - 1)],
                                  [variance_parts(t)[1] for t in (a, b) if t.shape[-2] >= 2])
    mean = gain.mean(-1)
    half = _floor(half, variance > 0, n)
    return mean, mean - half, mean + half


def paired_bootstrap(pairs, draws: int = BOOTSTRAP_DRAWS, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(pruned) - mean(baseline) for (pruned, baseline) correctness pairs on the same images:
    the bootstrap for one pair, `images_and_seeds_interval` for several (one per seed)."""
    gains = np.stack([np.asarray(p, float) - np.asarray(b, float) for p, b in pairs])
    if len(gains) == 1:
        low, high = bootstrap_interval(gains[0], draws, seed)
    else:
        _, low, high = images_and_seeds_interval(gains)
    return float(low), float(high)


def agreement_se_bound(delta: float, agreement: float, n: float) -> float:
    """Upper bound on the standard error of a paired accuracy difference from top-1 agreement (images whose
    correctness changed are at most those whose prediction did). A bound, not an estimate: the accuracy benchmark
    shows it for its older records; the report never turns it into an interval."""
    if any(math.isnan(v) for v in (delta, agreement, n)) or n <= 0:
        return math.nan
    return math.sqrt(max(1.0 - agreement - delta ** 2, 0.0) / n)


def seed_interval(values) -> tuple[float, float]:
    """t interval over seeds, for measurements each seed takes afresh (timings), not for shared test images."""
    values = np.asarray([v for v in values if not math.isnan(v)], float)
    if len(values) < 2:
        return math.nan, math.nan
    half = float(t95(len(values) - 1)) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def above_chance(correct, images, classes):
    """Per run: accuracy above 1/classes by a one-sided exact binomial test at 2.5% (elementwise)."""
    correct, images = np.rint(np.asarray(correct, float)), np.asarray(images, float)
    return stats.binom.sf(correct - 1, images, 1.0 / np.asarray(classes, float)) < CHANCE_LEVEL


def significant(low: float, high: float):
    """True when the 95% interval excludes zero, False when it holds zero, NA when there is no interval."""
    if math.isnan(low) or math.isnan(high):
        return pd.NA
    return bool(low > 0 or high < 0)


def delta_interval(runs, baselines) -> tuple[float, float, str]:
    """(low, high, method) of a configuration's accuracy difference against its baselines: two DataFrames whose
    rows are paired by seed (baseline rows may be missing, as NaN). Columns read: `acc1`, `per_image_correct`,
    `per_image_n`. Without per-image correctness in every run and baseline: NaN and `NO_OUTCOMES`."""
    runs, baselines = runs.reset_index(drop=True), baselines.reset_index(drop=True)
    deltas = (runs["acc1"] - baselines["acc1"]).to_numpy(float)
    usable = ~np.isnan(deltas)
    if not usable.any():
        return math.nan, math.nan, "none"
    runs, baselines = runs[usable], baselines[usable]
    packed = [(r.per_image_correct, b.per_image_correct, r.per_image_n) for r, b in
              zip(runs.itertuples(), baselines.itertuples())]
    if not all(pr and pb and pd.notna(n) and n > 0 for pr, pb, n in packed):
        return math.nan, math.nan, NO_OUTCOMES
    if len({p[2] for p in packed}) != 1:
        return math.nan, math.nan, "none: per-image outcomes of different image counts"
    n = int(packed[0][2])
    gains = np.stack([unpack_correct(pr, n).astype(float) - unpack_correct(pb, n) for pr, pb, _ in packed])
    if len(gains) == 1:
        low, high = bootstrap_interval(gains[0])
        return float(low), float(high), "bootstrap"
    _, low, high = images_and_seeds_interval(gains)
    return float(low), float(high), "images + seeds"
