"""How sure a difference is: paired bootstrap over test images, spread over seeds, or a bound from agreement.

Accuracy differences between a pruned run and its baseline are decided, in this order of preference:
1. `bootstrap`: both results carry per-image correctness (`per_image.correct`, bit-packed) for the
   same images: the images are resampled with replacement (1,000 draws, fixed seed) and the pruned
   minus baseline accuracy recomputed on each draw (averaged over the seeds of a configuration,
   same draw for every seed); the 95% interval is the 2.5th to 97.5th percentile.
2. `seeds`: n >= 2 runs differing only in seed: mean +- t(0.975, n-1) x std / sqrt(n).
3. `agreement bound`: one run whose file holds its unpruned accuracy, top-1 agreement and image
   count (`pruning-bench eval --task probe`): images whose correctness changes are at most the
   images whose prediction changes, so the paired standard error is at most
   sqrt((1 - agreement - delta^2) / n); the interval is +- 1.96 of that (conservative).
4. otherwise `none`: the difference is shown but never called out.
A difference is called out (significant) only when its 95% interval excludes zero.
"""
from __future__ import annotations

import base64
import math

import numpy as np

BOOTSTRAP_DRAWS = 1000
Z95 = 1.959963984540054


def pack_correct(correct) -> dict:
    """Per-image correctness as stored in a result file: bit-packed, base64, with the image count."""
    bits = np.asarray(correct, dtype=bool)
    return {"correct": base64.b64encode(np.packbits(bits).tobytes()).decode("ascii"), "n": int(bits.size),
            "encoding": "numpy.packbits of 0/1 per test image in evaluation order, base64"}


def unpack_correct(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[: int(n)].astype(bool)


def t95(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def paired_bootstrap(pairs: list[tuple[np.ndarray, np.ndarray]], draws: int = BOOTSTRAP_DRAWS,
                     seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(pruned) - mean(baseline) over images, averaged over the pairs (one per seed)."""
    n = len(pairs[0][0])
    gain = np.mean([p.astype(float) - b.astype(float) for p, b in pairs], axis=0)  # per image, seed-averaged
    rng = np.random.default_rng(seed)
    deltas = np.concatenate([gain[rng.integers(0, n, size=(min(200, draws - i), n))].mean(1)
                             for i in range(0, draws, 200)])
    return float(np.percentile(deltas, 2.5)), float(np.percentile(deltas, 97.5))


def seed_interval(values) -> tuple[float, float]:
    values = np.asarray([v for v in values if not math.isnan(v)], float)
    if len(values) < 2:
        return math.nan, math.nan
    half = t95(len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean() - half), float(values.mean() + half)


def agreement_se_bound(delta: float, agreement: float, n: float) -> float:
    """Upper bound on the standard error of a paired accuracy difference from top-1 agreement."""
    if any(math.isnan(v) for v in (delta, agreement, n)) or n <= 0:
        return math.nan
    return math.sqrt(max(1.0 - agreement - delta * delta, 0.0) / n)


def binomial_se(p: float, n: float) -> float:
    if math.isnan(p) or math.isnan(n) or n <= 0:
        return math.nan
    return math.sqrt(max(p * (1 - p), 0.0) / n)


def delta_interval(runs, baselines) -> tuple[float, float, str]:
    """(low, high, method) of the accuracy difference of a configuration's runs against their baselines
    (two DataFrames whose rows are paired; baseline rows may be missing, as NaN)."""
    runs, baselines = runs.reset_index(drop=True), baselines.reset_index(drop=True)
    deltas = (runs["acc1"] - baselines["acc1"]).to_numpy(float)
    usable = ~np.isnan(deltas)
    if not usable.any():
        return math.nan, math.nan, "none"
    runs, baselines, deltas = runs[usable], baselines[usable], deltas[usable]
    packed = [(r.per_image_correct, b.per_image_correct, r.per_image_n, b.per_image_n)
              for r, b in zip(runs.itertuples(), baselines.itertuples())]
    if all(pr and pb and pn == bn and pn > 0 for pr, pb, pn, bn in packed) and len({p[2] for p in packed}) == 1:
        pairs = [(unpack_correct(pr, pn), unpack_correct(pb, bn)) for pr, pb, pn, bn in packed]
        return (*paired_bootstrap(pairs), "bootstrap")
    if len(deltas) >= 2:
        return (*seed_interval(deltas), "seeds")
    row = runs.iloc[0]
    same_probe = row["acc1"] - row["acc1_unpruned"]
    se = agreement_se_bound(same_probe, row["agreement"], row["images"])
    if not math.isnan(se) and abs(same_probe - deltas[0]) < 1e-9:
        return deltas[0] - Z95 * se, deltas[0] + Z95 * se, "agreement bound"
    return math.nan, math.nan, "none"


def significant(low: float, high: float) -> bool:
    return not (math.isnan(low) or math.isnan(high)) and (low > 0 or high < 0)
