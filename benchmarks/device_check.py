"""One GPU speed check within a fixed time budget: writes reports/speed_gpu.md.

On a machine with a CUDA GPU: timm ViT-B/16 and open_clip ViT-B-16 (then open_clip ViT-L/14 if the
budget allows), batch 256, bfloat16 and float32, eager and torch.compile (inductor), for the baseline,
tome r=8/13/16, anchor_diversity, cls_topk, head_prune, layer_drop and every other strategy registered
when it runs (with its `example_params`), efficiency beside each, and the authors' ToMe beside ours
when TOME_REFERENCE_PATH points at a checkout.

Without a GPU the same code runs on the CPU at a small size (tiny random towers, batch 8, dynamo's
eager backend so compiling only traces), and the report says so at the top: those figures exercise the
script, they say nothing about GPU speed.

The plan is ordered by priority (eager groups, then compiled bfloat16, then compiled float32, then
ViT-L/14); its estimated size is printed first. A group whose estimate no longer fits the time left is
skipped, and a compiled group stops compiling new configurations at its share of the time; whatever
did not run is listed as such, so the report always names every figure.
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings

import pandas as pd
import torch

import pruning_bench as pb
from pruning_bench.measure.env import describe, environment
from pruning_bench.measure.throughput import PROTOCOL
from pruning_bench.record.atomic import write_text
from pruning_bench.registry import get_strategy
from speed import MODELS, build, prepare, speed_table, time_group  # same folder: one timing protocol

DTYPES = ("bfloat16", "float32")
# seconds per batch (eager) and per compile, for the plan estimate: ViT-B/16 at batch 256 on an A100-class
# GPU (fp32 without TF32 ~0.45 s, bf16 ~0.08 s; ViT-L/14 about 4.6x the MACs); the tiny CPU towers at batch 8
ESTIMATE = {
    "gpu": {"batch_s": {"bfloat16": 0.08, "float32": 0.45}, "compile_s": 35.0, "large": 4.6, "setup_s": 25.0,
            "place_s": 3.0,
            "first_compile_s": 20.0},
    "cpu": {"batch_s": {"bfloat16": 0.03, "float32": 0.02}, "compile_s": 0.6, "large": 1.0, "setup_s": 3.0,
            "place_s": 0.5,
            "first_compile_s": 6.0},
}


def configs_for(depth: int) -> list[tuple[str, dict]]:
    """The fixed list, then every other registered strategy with its example parameters."""
    fixed = [("tome", {"r": 8}), ("tome", {"r": 13}), ("tome", {"r": 16}),
             ("anchor_diversity", {"k_anchors": 10, "top_m": 50}), ("cls_topk", {"keep": 60}),
             ("head_prune", {"head_ratio": 0.3, "mlp_ratio": 0.3, "importance": "magnitude"}),
             ("layer_drop", {"keep_layers": round(2 * depth / 3), "importance": "cosine", "_calibrate": True})]
    named = {name for name, _ in fixed}
    extra = [(name, dict(getattr(get_strategy(name), "example_params", None) or {}))
             for name in pb.list_strategies() if name not in named]
    return fixed + extra


DEPTH = {"timm": 12, "open_clip": 12, "open_clip_l14": 24, "tiny_timm": 4, "tiny_open_clip": 4}


REFERENCE_R = (8, 13, 16)


def reference_available() -> bool:
    """Whether the authors' ToMe can be imported (TOME_REFERENCE_PATH set to a checkout, or installed)."""
    import importlib.util
    import os

    path = os.environ.get("TOME_REFERENCE_PATH")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    return bool(path) and importlib.util.find_spec("tome") is not None


def config_names(model: str) -> list[str]:
    """How the report names each configuration of `model` (baseline first), as the tables print it."""
    ours = [f"{s} { {k: v for k, v in p.items() if k != '_calibrate'} }" for s, p in configs_for(DEPTH[model])]
    theirs = [f"reference_tome {{'r': {r}}}" for r in REFERENCE_R] if MODELS[model][0] == "timm" and reference_available() else []
    return ["baseline {}", *ours, *theirs]


def plan(gpu: bool, with_large: bool, n_configs: int, repeats: int, warmup: int, budget: float) -> list[dict]:
    """Groups (model, dtype, mode) in priority order, each with how many configurations (baseline first)
    it times within `budget` seconds and the estimate for them: every eager group in full, then the
    compiled groups share what is left evenly (a compiled configuration costs a compile), then ViT-L/14."""
    models = ["timm", "open_clip"] if gpu else ["tiny_timm", "tiny_open_clip"]
    est = ESTIMATE["gpu" if gpu else "cpu"]
    groups = [{"model": m, "dtype": d, "mode": mode} for mode in ("eager", "compiled") for d in DTYPES for m in models]
    if gpu and with_large:
        groups += [{"model": "open_clip_l14", "dtype": d, "mode": m} for m in ("eager", "compiled") for d in DTYPES]

    first = {}
    for g in groups:
        first.setdefault(g["model"], id(g))

    first_compiled = next(g for g in groups if g["mode"] == "compiled")

    def cost(g, n):
        scale = est["large"] if g["model"] == "open_clip_l14" else 1.0
        compiling = g["mode"] == "compiled"
        per_config = (repeats + warmup + 2 * compiling) * est["batch_s"][g["dtype"]] * scale + compiling * est["compile_s"] * scale
        setup = est["setup_s"] * scale if first[g["model"]] == id(g) else est["place_s"] * scale  # build + MACs once per model
        warm = est["first_compile_s"] if g is first_compiled else 0.0  # dynamo / inductor start-up, paid once
        return setup + warm + n * per_config

    total = n_configs + 1
    left = budget
    for g in groups:
        g["configs"], g["full_estimate_s"] = 0, cost(g, total)

    def grow(g, n) -> bool:
        nonlocal left
        extra = cost(g, n) - (cost(g, g["configs"]) if g["configs"] else 0)
        if n > total or extra > left:
            return False
        left -= extra
        g["configs"] = n
        return True

    base_models = [g for g in groups if g["model"] != "open_clip_l14"]
    for g in (g for g in base_models if g["mode"] == "eager"):
        grow(g, total)
    compiled = [g for g in base_models if g["mode"] == "compiled"]
    for g in compiled:  # each compiled group first gets its baseline and one configuration, in priority order
        grow(g, 2)
    while any(g["configs"] and grow(g, g["configs"] + 1) for g in list(compiled)):  # then one more each, in turn
        pass
    for g in (g for g in groups if g["model"] == "open_clip_l14"):
        grow(g, total if g["mode"] == "eager" else 2)
    for g in groups:
        g["estimate_s"] = cost(g, g["configs"]) if g["configs"] else 0.0
    return groups


def plan_line(groups: list[dict], n_configs: int, budget: float, where: str) -> str:
    cells = len(groups) * (n_configs + 1)
    timed = sum(g["configs"] for g in groups)
    return (f"plan on {where}: {len(groups)} groups x {n_configs + 1} configurations (baseline included) = {cells} "
            f"figures named; {timed} timed within the {budget:.0f} s budget (estimated "
            f"{sum(g['estimate_s'] for g in groups):.0f} s; all {cells} would take about "
            f"{sum(g['full_estimate_s'] for g in groups):.0f} s), the rest listed as not run")


def run(args) -> str:
    gpu = torch.cuda.is_available() and not args.cpu
    device, batch = ("cuda", args.batch or 256) if gpu else ("cpu", args.batch or 8)
    args.repeats = args.repeats or (5 if gpu else 3)
    args.warmup = args.warmup if args.warmup is not None else (2 if gpu else 1)
    args.budget_seconds = args.budget_seconds or (450.0 if gpu else 90.0)
    backend = "inductor" if gpu else "eager"
    if not gpu:  # one thread: on a shared CI machine OpenMP threads spinning against other jobs cost 50x on tiny models
        torch.set_num_threads(1)
    start = time.monotonic()
    deadline = start + args.budget_seconds
    prepared = {}

    def models_of(name):
        if name not in prepared:
            base = build(name)
            configs = configs_for(DEPTH[name])
            prepared[name] = prepare(base, configs, with_reference=MODELS[name][0] == "timm", reference_r=REFERENCE_R)[:3]
        return prepared[name]

    n_configs = len(configs_for(12))
    groups = plan(gpu, args.large, n_configs, args.repeats, args.warmup, args.budget_seconds)
    lines = [plan_line(groups, n_configs, args.budget_seconds, "the GPU" if gpu else "the CPU (fallback)")]
    if not gpu:
        on_gpu = plan(True, args.large, n_configs, 5, 2, 450.0)
        lines.append("on a GPU the same command names the same figures for: " + "; ".join(
            f"{g['model']} ({MODELS[g['model']][1]}) {g['dtype']} {g['mode']} ({g['configs']} timed)" for g in on_gpu)
            + "; batch 256, the configurations below; " + plan_line(on_gpu, n_configs, 450.0, "a GPU"))
    print("\n".join(lines), flush=True)
    sections, figures = [], []
    for i, g in enumerate(groups):
        left = deadline - time.monotonic()
        title = f"{g['model']} ({MODELS[g['model']][1]}), {g['dtype']}, {g['mode']}"
        if not g["configs"] or left <= 0:
            why = "over the planned budget" if not g["configs"] else "budget used up"
            sections.append(f"### {title}\n\nnot run ({why}): all configurations would take about "
                            f"{g['full_estimate_s']:.0f} s, {max(left, 0):.0f} s left\n")
            figures += [f"| {g['model']} | {g['dtype']} | {g['mode']} | {cfg} | not run (time budget) |"
                        for cfg in config_names(g["model"])]
            print(f"skip {title}", flush=True)
            continue
        models, labels, macs = models_of(g["model"])
        later = sum(x["estimate_s"] for x in groups[i + 1:])  # keep the time planned for the groups after it
        group_deadline = deadline - later if g["mode"] == "compiled" else None
        began = time.monotonic()
        full = g["configs"] == n_configs + 1  # a full group also times the authors' ToMe when it is there
        chosen = models if full else dict(list(models.items())[:g["configs"]])
        times, graphs = time_group(chosen, batch, args.warmup, args.repeats, device, g["dtype"],
                                   g["mode"] == "compiled", backend, group_deadline)
        table = speed_table(g["model"], models, labels, macs, times, graphs, batch, extra_columns=True)
        table.insert(1, "dtype", g["dtype"])
        table.insert(2, "mode", g["mode"])
        missing = [k for k in models if k not in times]
        note = f"; not run (time budget): {', '.join(missing)}" if missing else ""
        sections.append(f"### {title}\n\n{time.monotonic() - began:.0f} s{note}\n\n"
                        + table.to_markdown(index=False, floatfmt=".3f") + "\n")
        for _, row in table.iterrows():
            figures.append(f"| {g['model']} | {g['dtype']} | {g['mode']} | {row['strategy']} {row['params']} | "
                           f"{row['images_per_second']:.1f} img/s, speedup {row['speedup']:.3f}, "
                           f"efficiency {row['efficiency']:.3f} |")
        figures += [f"| {g['model']} | {g['dtype']} | {g['mode']} | {labels[k][0]} {labels[k][1]} | "
                    "not run (time budget) |" for k in missing]
        print(f"done {title} in {time.monotonic() - began:.0f} s", flush=True)
    env = environment(device)
    banner = ("# GPU speed check\n\n" if gpu else
              "# GPU speed check: CPU FALLBACK (no CUDA device)\n\n**These figures were measured on the CPU**, "
              "with tiny random towers standing in for ViT-B/16 (64 px, patch 8, 4 blocks), batch "
              f"{batch}, one CPU thread, and torch.compile's eager backend (tracing only). They test the script; they say "
              "nothing about GPU speed. On a GPU the same command measures the models named below.\n\n")
    reference = "" if any("reference" in f for f in figures) else (
        "Authors' ToMe: not measured (set TOME_REFERENCE_PATH to a ToMe checkout to add it beside ours).\n\n")
    text = (banner + f"{describe(env)}\n\ncommand: bash scripts/device_check.sh {' '.join(sys.argv[1:])}\n\n"
            f"batch {batch}; dtypes cast the model and the images (no autocast); compiled = torch.compile("
            f"backend={backend}, dynamic=False, fullgraph=True); median of {args.repeats} round-robin repeats "
            f"after {args.warmup} warm-up ({PROTOCOL}); efficiency = "
            f"speedup x MACs ratio; graphs = graphs compiled for the configuration (no recompilation while "
            f"timing).\n\n{lines[0]}; took {time.monotonic() - start:.0f} s.\n\n" + "".join(f"{x}\n\n" for x in lines[1:])
            + reference
            + "## Every figure\n\n| model | dtype | mode | configuration | figure |\n|---|---|---|---|---|\n"
            + "\n".join(figures) + "\n\n## Tables\n\n" + "\n".join(sections))
    write_text(args.output, text)
    print(f"wrote {args.output} ({len(figures)} figures) in {time.monotonic() - start:.0f} s")
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="reports/speed_gpu.md")
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="start no work after this many seconds (default 450 on a GPU, 90 on the CPU)")
    p.add_argument("--batch", type=int, default=None, help="default 256 on a GPU, 8 on the CPU")
    p.add_argument("--repeats", type=int, default=None, help="default 5 on a GPU, 3 on the CPU")
    p.add_argument("--warmup", type=int, default=None, help="default 2 on a GPU, 1 on the CPU")
    p.add_argument("--large", action=argparse.BooleanOptionalAction, default=True, help="ViT-L/14 if time allows")
    p.add_argument("--cpu", action="store_true", help="run the CPU fallback even when a GPU is present")
    args = p.parse_args(argv)
    for name in ("budget_seconds", "repeats"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}={getattr(args, name)} is out of range (0, inf)")
    if args.batch is not None and args.batch < 1:
        raise ValueError(f"--batch={args.batch} is out of range [1, inf)")
    if args.warmup is not None and args.warmup < 0:
        raise ValueError(f"--warmup={args.warmup} is out of range [0, inf)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run(args)


if __name__ == "__main__":
    main()
