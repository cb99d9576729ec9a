"""Uncertainty of the accuracy table's differences: per-image correctness kept by new records, the paired
bootstrap when both records have it, else a bound from top-1 agreement (see UNCERTAINTY_NOTE)."""
from __future__ import annotations

import math

import pandas as pd

from pruning_bench.report.uncertainty import BOOTSTRAP_DRAWS, Z95, agreement_se_bound, pack_correct, paired_bootstrap, unpack_correct


def correct_on(probe, features) -> dict:
    """Per-image correctness of the probe (bit-packed): what a paired bootstrap over the test images needs."""
    return pack_correct(probe.predict(features.features) == features.labels.numpy())


def delta_interval(record: dict, base: dict, n: int) -> tuple[float, str]:
    """(half-width of the 95% interval of acc1_delta, method): the paired bootstrap over the test images when both
    records kept per-image correctness, else the bound from top-1 agreement (see the table header)."""
    c = record["cifar10"]
    delta = c["acc1"] - c["acc1_unpruned"]
    if record.get("per_image") and base.get("per_image"):
        pruned = unpack_correct(record["per_image"]["correct"], n)
        unpruned = unpack_correct(base["per_image"]["correct"], n)
        low, high = paired_bootstrap([(pruned, unpruned)])
        return max(delta - low, high - delta), "bootstrap"
    return Z95 * agreement_se_bound(delta, c["agreement"], n), "agreement bound"


def difference_interval(a: dict, b: dict, n: int) -> float:
    """Half-width of the 95% interval of acc1(a) - acc1(b) for two pruned rows: images where a and b disagree are at
    most those where either disagrees with the unpruned model, so (1 - agr_a) + (1 - agr_b) bounds them."""
    diff = a["cifar10"]["acc1"] - b["cifar10"]["acc1"]
    disagree = (1 - a["cifar10"]["agreement"]) + (1 - b["cifar10"]["agreement"])
    return Z95 * math.sqrt(max(min(disagree, 1.0) - diff * diff, 0.0) / n)


def delta_text(delta: float, half: float, significant, with_interval: bool) -> str:
    """`-2.1` or, with its interval, `-2.1 ±1.3` (`(ns)` when the interval includes zero)."""
    text = f"{100 * delta:+.1f}"
    if not with_interval or pd.isna(half):
        return text
    return f"{text} ±{100 * half:.1f}" + ("" if significant else " (ns)")


UNCERTAINTY_NOTE = (
    "- Uncertainty (`acc1_delta_ci95`, `ci_method`, `significant`): the half-width of a 95% interval of acc1_delta. "
    f"`bootstrap`: paired bootstrap over the test images ({BOOTSTRAP_DRAWS:,} draws) from the per-image correctness the record "
    "keeps. `agreement bound`: for records written before per-image correctness was kept, a bound derived from "
    "numbers the record has: images whose correctness changes are at most the images whose prediction changes, so "
    "the paired standard error is at most sqrt((1 - agreement - delta^2) / n), n the test images, and the interval "
    "is 1.96 times that (conservative: the bootstrap interval is at most as wide). `significant`: the interval "
    "excludes zero.\n")
