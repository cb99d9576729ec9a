"""Columns the reporter reads from a result beyond the headline: the settings a baseline must share, seeds,
what each task measures, timing spread, machine load, training time and per-image correctness.

Every value is flat (a number or a string) so the table stays one row per run. A setting the
result does not record is "" (two unrecorded values are equal; unrecorded against recorded is a
difference, since nobody can say the runs match).
"""
from __future__ import annotations

import json
import math
import statistics
from typing import Any

# settings a pruned run must share with its baseline (besides model, pretrained, dataset, task, language): the
# run's identity but the strategy and the seed (see record/identity.py): which images (root, split, count,
# subset rule), model arguments, and the timing conditions. Runs differing only in seed are one configuration.
SETTINGS = ["dataset_root", "split", "test_samples", "subset", "train_samples", "model_args", "image_size",
            "batch_size", "dtype", "amp", "device", "threads"]
# a pruned run's baseline has its seed too (random-init weights, probes and shuffling change with it)
PAIRING_SETTINGS = ["seed"]
# and, for tasks that train or fit something, these too
TRAINING_SETTINGS = ["training"]
TRAINING_TASKS = {"finetune", "probe", "linear_probe"}
# entries of a result's `training` block that are measurements, not settings
TRAINING_MEASUREMENTS = {"timing", "step_seconds", "warmup_steps", "images_per_second", "seconds", "seconds_per_epoch",
                         "data_seconds", "data_loading_seconds", "step_seconds_median", "epoch_seconds"}
FIDELITY_METRICS = ["cosine", "cosine_centred", "relative_mse", "agreement"]


def _text(value) -> str:
    """A setting as comparable text ("" when not recorded)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value)


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _first(*places):
    return next((p for p in places if p not in (None, "", [])), None)


def _timing(efficiency: dict) -> dict:
    """Where a driver put the throughput record's repeats: `timing`, `throughput`, or the block itself."""
    for place in (efficiency.get("timing"), efficiency.get("throughput"), efficiency):
        if isinstance(place, dict) and isinstance(place.get("times"), list) and place["times"]:
            return place
    timing = efficiency.get("timing")
    return timing if isinstance(timing, dict) else {}


def timing_fields(efficiency: dict) -> dict[str, Any]:
    """images/s at the slowest, median and fastest timed repeat; repeats and warm-ups; load before/after."""
    timing = _timing(efficiency)
    batch = _number(_first(efficiency.get("batch_size"), timing.get("batch_size")))
    times = [t for t in map(_number, timing.get("times") or []) if t > 0]
    load = _first(timing.get("load_average"), efficiency.get("load_average")) or {}
    before, after = load.get("before") or [], load.get("after") or []
    cpus = _number(load.get("cpus"))
    one_minute = [v[0] for v in (before, after) if v]
    return {
        "timing_repeats": len(times) or _number(timing.get("repeats")),
        "timing_warmup": _number(_first(timing.get("warmup"), len(timing.get("warmup_times") or []) or None)),
        "images_per_second_min": batch / max(times) if times else math.nan,
        "images_per_second_median": batch / statistics.median(times) if times else math.nan,
        "images_per_second_max": batch / min(times) if times else math.nan,
        "load_before": before[0] if before else math.nan,
        "load_after": after[0] if after else math.nan,
        "cpus": cpus,
        "under_load": bool(one_minute) and not math.isnan(cpus) and max(one_minute) > cpus,
    }


def training_fields(training: dict) -> dict[str, Any]:
    """Per-step training time (warm-up steps excluded when recorded) and training images/s.

    Reads `pruning-bench eval --task finetune`'s `training.timing` (every step in `step_seconds_all`,
    the excluded warm-up steps in `warmup_steps_excluded`), or flat `step_seconds` / `warmup_steps`."""
    timing = training.get("timing") if isinstance(training.get("timing"), dict) else None
    if timing is not None:
        training = {"step_seconds": timing.get("step_seconds_all"),
                    "warmup_steps": len(timing.get("warmup_steps_excluded") or []),
                    "images_per_second": timing.get("train_images_per_second")}
    steps = [t for t in map(_number, training.get("step_seconds") or []) if not math.isnan(t)]
    warm = int(_number(training.get("warmup_steps")) or 0) if training.get("warmup_steps") is not None else 0
    timed = steps[warm:] or steps
    return {
        "train_step_seconds_min": min(timed) if timed else math.nan,
        "train_step_seconds_median": statistics.median(timed) if timed else math.nan,
        "train_step_seconds_max": max(timed) if timed else math.nan,
        "train_steps_timed": len(timed) if timed else math.nan,
        "train_warmup_steps": warm if steps else math.nan,
        "train_images_per_second": _number(training.get("images_per_second")),
    }


def recall_fields(metrics: dict) -> dict[str, Any]:
    """Image and text recall at the smallest k the run reports, under their own names."""
    ks = sorted({int(k.rsplit("@", 1)[1]) for k in metrics if "_retrieval_recall@" in k and k.rsplit("@", 1)[1].isdigit()})
    k = ks[0] if ks else None
    return {
        "recall_k": k if k is not None else math.nan,
        "image_retrieval_recall": _number(metrics.get(f"image_retrieval_recall@{k}")) if k else math.nan,
        "text_retrieval_recall": _number(metrics.get(f"text_retrieval_recall@{k}")) if k else math.nan,
    }


def format_params(params: dict[str, Any] | None) -> str:
    """`k=v, ...` for the plain-valued parameters; unset options (None) are left out."""
    if not params:
        return ""
    return ", ".join(f"{k}={v}" for k, v in params.items() if isinstance(v, (bool, int, float, str, list, tuple)))


def config_params(params: dict | None) -> str:
    """The strategy's parameters without its seed: runs differing only in seed share this."""
    return format_params({k: v for k, v in (params or {}).items() if k != "seed"})


def match_fields(data: dict) -> dict[str, Any]:
    """`--match_macs` target and achieved MACs ratio (`pruning.match`, else the flat `match_target_ratio`) and the
    run's clamp notes (`pruning.notes`, joined with "; ")."""
    pruning = data.get("pruning") if isinstance(data.get("pruning"), dict) else {}
    match = pruning.get("match") if isinstance(pruning.get("match"), dict) else {}
    notes = pruning.get("notes") if isinstance(pruning.get("notes"), list) else []
    return {"match_target": _number(_first(match.get("target_ratio"), data.get("match_target_ratio"))),
            "match_achieved": _number(match.get("achieved_ratio")),
            "match_knob": _text(match.get("knob")),
            "notes": "; ".join(str(n) for n in notes)}


def run_fields(data: dict) -> dict[str, Any]:
    """The extra columns of one result (see the module docstring)."""
    metrics = data.get("metrics") or {}
    pruning = data.get("pruning") or {}
    efficiency = data.get("efficiency") if isinstance(data.get("efficiency"), dict) else {}
    described = data.get("data") if isinstance(data.get("data"), dict) else {}
    test, train = described.get("test") or {}, described.get("train") or {}
    training = data.get("training") if isinstance(data.get("training"), dict) else {}
    per_image = data.get("per_image") if isinstance(data.get("per_image"), dict) else {}
    params = pruning.get("params") if isinstance(pruning.get("params"), dict) else {}
    row = {
        "seed": _text(data.get("seed")),
        "strategy_seed": _text(params.get("seed")),
        "config_params": config_params(params),
        "split": _text(_first(test.get("split"), data.get("split"))),
        "test_samples": _text(_first(test.get("images"), data.get("test_samples"))),
        "dataset_root": _text(_first(test.get("dataset_root"), data.get("dataset_root"))),
        "subset": _text(test.get("subset")),
        "model_args": _text(data.get("model_args")),
        "train_samples": _text(_first(train.get("images"), data.get("train_samples"))),
        "image_size": _text(_first(efficiency.get("image_size"), data.get("image_size"))),
        "amp": _text(_first(efficiency.get("amp"), data.get("amp"))),
        "threads": _text(_first(efficiency.get("threads"), data.get("threads"))),
        "training": _text({k: v for k, v in training.items() if k not in TRAINING_MEASUREMENTS} or None),
        "classes": _number(_first(test.get("classes"), data.get("classes"),
                                  len(data["classnames"]) if isinstance(data.get("classnames"), list) else None)),
        "images": _number(_first(metrics.get("images"), test.get("images"))),
        "acc1_unpruned": _number(metrics.get("acc1_unpruned")),
        "agreement_kind": _text(metrics.get("agreement_kind")),
        "per_image_correct": per_image.get("correct") or "",
        "per_image_n": _number(per_image.get("n")),
    }
    row.update(match_fields(data))
    row.update({name: _number(metrics.get(name)) for name in FIDELITY_METRICS})
    row.update(recall_fields(metrics))
    row.update(timing_fields(efficiency))
    row.update(training_fields(training))
    return row
