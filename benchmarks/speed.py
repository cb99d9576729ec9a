"""Speed table: GMACs, images/s, speedup and efficiency of each strategy against its baseline.

Every configuration of a model is timed round-robin in one process (baseline, A, B, ..., baseline,
A, B, ...) and the median of the repeats is taken, so drift on a shared machine hits all alike; every
repeat is kept (in the JSON written beside `--output`, with the load average just before and after each
model's timed runs). Warm-up runs are excluded. The timing is the
package's one throughput protocol (`pruning_bench.measure.throughput.interleaved_times`: the device
is synchronised around every timed run, time.perf_counter). efficiency = speedup x (pruned MACs /
baseline MACs): 1.0 means the measured speedup is exactly what the removed multiply-accumulates
predict. A strategy that keeps a different number of tokens per image (ats) runs its batch padded to
the longest image: its GMACs are the mean of each timed image's own count, `padding` says how much the
padded batch adds, and `efficiency_as_run` is the speedup against what the padded batch really costs.

--dtype casts the model and the images (`model.to(dtype)`), it does not use autocast: that is how the
published ToMe timings run half precision (`model.half()`) and how inference is deployed, and autocast
would re-cast every weight in every forward, timing the casts as well as the model. The strategies
keep their own scores in float32 where it matters (softmax rows).

--compile wraps each (patched) model in torch.compile(dynamic=False, fullgraph=True): one graph per
token schedule, never one per batch. Dynamo's graph counter is read after the warm-up and again after
the timed repeats; a recompilation while timing stops the run.

    python benchmarks/speed.py                       # timm ViT-B/16 + open_clip ViT-B-16, batch 32, CPU fp32
    python benchmarks/speed.py --models timm --batch 8 --repeats 3
    python benchmarks/speed.py --device cuda --dtype bfloat16 --batch 256 --compile
    TOME_REFERENCE_PATH=/path/to/ToMe python benchmarks/speed.py   # adds the reference ToMe rows
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

import pruning_bench as pb
from pruning_bench.measure.env import describe, environment
from pruning_bench.measure.throughput import PROTOCOL, interleaved_times, load_average, load_record
from pruning_bench.record.atomic import write_text

TOKEN_CONFIGS = [
    ("tome", {"r": 8}),
    ("tome", {"r": 13}),
    ("tome", {"r": 16}),
    ("anchor_diversity", {"k_anchors": 10, "top_m": 50}),
    ("cls_topk", {"keep": 60}),
]
# The published training-free methods at their papers' settings (EViT's protocol: keep 0.7 at 3/6/9).
FIELD_CONFIGS = [
    ("evit", {"keep_rate": 0.7, "prune_layers": [3, 6, 9]}),
    ("dpc_knn", {"keep_rate": 0.7, "prune_layers": [3, 6, 9]}),
    ("kmedoids", {"keep_rate": 0.7, "prune_layers": [3, 6, 9]}),
    ("visionzip", {"dominant": 54, "contextual": 10}),  # at its default block, the second-to-last
    ("pitome", {"ratio": 0.9}),
    ("tofu", {"r": 13}),
    ("mctf", {"r": 13}),
    ("atc", {}),  # keep_rate 0.7 at 3/6/9, average linkage
    ("ats", {}),  # keep_rate 0.7 at 3/6/9, per-image counts (padded batch)
    ("ppt", {}),  # r 50 at 3/6/9
    ("zero_tprune", {}),  # r 8 after every block but the last
    ("dct", {}),  # r 9, inflect -0.5
    ("gtp", {}),  # num_prop 8 in every block
    ("diffrate", {"target_ratio": 0.6, "_calibrate": True}),  # rates searched on the calibration batches
]
# Structured strategies: name, params, whether they need calibration batches.
STRUCTURED_CONFIGS: list[tuple[str, dict]] = [
    ("head_prune", {"head_ratio": 0.3, "mlp_ratio": 0.3, "importance": "magnitude"}),
    ("layer_drop", {"keep_layers": 8, "importance": "cosine", "_calibrate": True}),
]
REFERENCE_TOME_R = (8, 16)
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# name -> (library, model name); the tiny ones are the CPU stand-ins the device check runs without a GPU
MODELS = {
    "timm": ("timm", "vit_base_patch16_224"),
    "open_clip": ("open_clip", "ViT-B-16"),
    "open_clip_l14": ("open_clip", "ViT-L-14"),
    "eva02": ("timm", "eva02_base_patch16_clip_224"),  # the image tower of open_clip's EVA02-B-16
    "hf_clip": ("transformers", "CLIP ViT-B/16"),  # transformers CLIPVisionModel, openai/clip-vit-base-patch16 shape
    "tiny_timm": ("timm", "tiny"),
    "tiny_open_clip": ("open_clip", "tiny"),
}


def build(name: str) -> torch.nn.Module:
    """Random-initialised image tower (no download), eval mode, fp32 on the CPU."""
    if name not in MODELS:
        raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    library, arch = MODELS[name]
    torch.manual_seed(0)
    if library == "transformers":
        from transformers import CLIPVisionConfig, CLIPVisionModel

        config = CLIPVisionConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                  num_attention_heads=12, image_size=224, patch_size=16)
        return CLIPVisionModel(config).eval()
    if library == "timm":
        import timm
        from timm.models.vision_transformer import VisionTransformer

        if arch == "tiny":
            return VisionTransformer(img_size=64, patch_size=8, embed_dim=64, depth=4, num_heads=4, num_classes=0).eval()
        return timm.create_model(arch, pretrained=False, num_classes=0).eval()
    import open_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if arch == "tiny":
            from open_clip.transformer import VisionTransformer

            return VisionTransformer(image_size=64, patch_size=8, width=64, layers=4, heads=4, mlp_ratio=4.0,
                                     output_dim=32).eval()
        return open_clip.create_model(arch, pretrained="").visual.eval()


def input_size(model) -> int:
    """Side of the square images the tower takes (224 for the ViT-B models), as its family adapter reads it."""
    from pruning_bench.families import locate

    return int(locate(model).image_size()[0])


def pruned_copy(base, strategy: str, params: dict, calibration):
    """(copy of `base` with `strategy` patched in, its handle); `_calibrate` in `params` asks for the
    calibration batches. Clamp warnings are silenced: the tables report what was measured."""
    model = copy.deepcopy(base)
    full = {**params, "calibration": calibration} if params.pop("_calibrate", False) else params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, pb.prune(model, strategy, **full)


def emit(header: str, table: pd.DataFrame, output: str | None, records: dict | None = None) -> None:
    """Print the table under its header; write the same Markdown to `output` when given, and
    `records` (every repeat, the environment) as JSON beside it."""
    text = header + "\n" + table.to_markdown(index=False, floatfmt=".3f")
    print(text)
    if output:
        write_text(output, text + "\n")
        if records is not None:
            write_text(Path(output).with_suffix(".json"), json.dumps(records, indent=1, default=str) + "\n")


def reference_tome(model, r):
    """The authors' ToMe patched into a copy of a timm model (None when it is not importable)."""
    path = os.environ.get("TOME_REFERENCE_PATH")
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        import tome
    except ImportError:
        return None
    patched = copy.deepcopy(model)
    tome.patch.timm(patched)
    patched.r = r
    return patched


def round_robin_repeats(fns: dict, images, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per batch of each callable for every timed repeat, in interleaved rounds (order
    reversed every other round); `warmup` untimed rounds first: the package's throughput protocol."""
    return interleaved_times(fns, images, warmup=warmup, repeats=repeats)[0]


def round_robin(fns: dict, images, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each callable, timed in interleaved rounds."""
    return {k: statistics.median(v) for k, v in round_robin_repeats(fns, images, warmup, repeats).items()}


def graphs_compiled() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compiled(model, backend: str, fullgraph: bool = True):
    """torch.compile with static shapes: a new token schedule may compile anew, a new batch may not."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
    torch._dynamo.config.accumulated_cache_size_limit = max(torch._dynamo.config.accumulated_cache_size_limit, 4096)
    return torch.compile(model, backend=backend, dynamic=False, fullgraph=fullgraph)


def timed_images(model, batch: int) -> torch.Tensor:
    """The seeded fp32 CPU batch a model's configurations are timed on (and per-image budgets counted on)."""
    side = input_size(model)
    return torch.randn(batch, 3, side, side, generator=torch.Generator().manual_seed(1))


def prepare(base, configs, with_reference: bool, reference_r=REFERENCE_TOME_R, batch: int | None = None,
            handles: dict | None = None):
    """(fp32 CPU models by key, (strategy, params) by key, GMACs by key, padded GMACs by key) for the baseline,
    each config and, on timm models, the authors' ToMe when importable.

    A strategy that keeps a different number of tokens per image is counted on the `batch` images it is
    timed on: GMACs is the mean of each image's own count, and the padded batch as it runs goes to the
    fourth dict (without `batch`, one image and no padded figure). `handles`, when given, receives each
    configuration's pruning handle by key."""
    images = torch.randn(1, 3, input_size(base), input_size(base))
    calibration = [torch.randn(4, *images.shape[1:]) for _ in range(2)]
    models, labels, macs, as_run = {"baseline": base}, {"baseline": ("baseline", {})}, {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        macs["baseline"] = pb.count_flops(base, images).gmacs
        for strategy, params in configs:
            key = f"{strategy} {params}"
            model, handle = pruned_copy(base, strategy, dict(params), calibration)
            models[key], labels[key] = model, (strategy, {k: v for k, v in params.items() if k != "_calibrate"})
            if handles is not None:
                handles[key] = handle
            if batch and any(getattr(s, "per_image", False) for s in handle.strategies):
                count = pb.count_flops(model, timed_images(base, batch))
                as_run[key] = count.as_run
            else:
                count = pb.count_flops(model, images)
            macs[key] = count.gmacs
    if with_reference:
        for r in reference_r:
            ref = reference_tome(base, r)
            if ref is not None:
                key = f"reference ToMe r={r}"
                models[key], labels[key] = ref, ("reference_tome", {"r": r})
                macs[key] = macs.get(f"tome {{'r': {r}}}")
    return models, labels, macs, as_run


def time_group(models: dict, batch: int, warmup: int, repeats: int, device="cpu", dtype="float32",
               compile=False, backend="inductor", deadline: float | None = None) -> tuple[dict, dict]:
    """Time fp32 CPU `models` cast to `dtype` on `device`, eager or compiled, round-robin.

    Returns (seconds of every repeat by key, graphs compiled by key). Compiled models are warmed one
    by one (the first call compiles); with `deadline` (time.monotonic) a model whose turn comes after
    it is left out."""
    device, cast = torch.device(device), DTYPES[dtype]
    images = timed_images(models["baseline"], batch).to(device, cast)
    fns, graphs = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, model in models.items():
            if deadline is not None and time.monotonic() > deadline and key != "baseline":
                continue
            placed = copy.deepcopy(model).to(device=device, dtype=cast)
            fn = compiled(placed, backend, fullgraph=not key.startswith("reference")) if compile else placed
            before = graphs_compiled()
            with torch.inference_mode():
                for _ in range(2 if compile else 0):
                    fn(images)
            fns[key], graphs[key] = fn, graphs_compiled() - before
        before = graphs_compiled()
        times = round_robin_repeats(fns, images, warmup, repeats)
    if compile and graphs_compiled() != before:
        raise RuntimeError(f"{graphs_compiled() - before} recompilation(s) while timing: the compiled forward "
                           "depends on something that changes per batch")
    del fns
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return times, graphs


def speed_table(name, models, labels, macs, times, graphs, batch, extra_columns=False,
                as_run: dict | None = None) -> pd.DataFrame:
    """One row per timed configuration. With per-image budgets among them (`as_run`), two more columns:
    `padding`, the share of MACs the padded batch adds over each image's own tokens, and `efficiency_as_run`,
    the speedup against the MACs the padded batch really costs (efficiency is against the images' own)."""
    base = statistics.median(times["baseline"])
    rows = []
    for key, repeats in times.items():
        strategy, params = labels[key]
        seconds = statistics.median(repeats)
        speedup = base / seconds
        ratio = macs[key] / macs["baseline"] if macs.get(key) else float("nan")
        row = {"model": name, "strategy": strategy, "params": params, "gmacs": macs.get(key) or float("nan"),
               "images_per_second": batch / seconds, "speedup": speedup, "macs_ratio": ratio,
               "efficiency": speedup * ratio}
        if as_run:
            padded = as_run.get(key, macs.get(key) or float("nan"))
            padding = round(padded / row["gmacs"] - 1, 9) + 0.0  # no -0.000 from the mean's last-digit rounding
            row.update({"padding": padding, "efficiency_as_run": speedup * padded / macs["baseline"]})
        if extra_columns:
            row.update({"ms_per_batch": 1000 * seconds, "ms_min": 1000 * min(repeats), "ms_max": 1000 * max(repeats),
                        "graphs": graphs.get(key, 0)})
        rows.append(row)
    return pd.DataFrame(rows)


def run_model(name: str, batch: int, warmup: int, repeats: int, configs, device="cpu", dtype="float32",
              compile=False, backend="inductor") -> tuple[pd.DataFrame, dict, dict]:
    """(table, every repeat by configuration, the load average just before and after the timed runs) for one model."""
    models, labels, macs, as_run = prepare(build(name), configs, with_reference=MODELS[name][0] == "timm", batch=batch)
    before = load_average()
    times, graphs = time_group(models, batch, warmup, repeats, device, dtype, compile, backend)
    load = load_record(before, load_average())
    extra = torch.device(device).type != "cpu" or dtype != "float32" or compile
    return speed_table(name, models, labels, macs, times, graphs, batch, extra, as_run), times, load


def header(args, env: dict) -> str:
    mode = f"torch.compile(backend={args.compile_backend}, dynamic=False, fullgraph=True)" if args.compile else "eager"
    return (f"batch {args.batch}, {args.dtype} (model and images cast, no autocast), {mode}, median of {args.repeats} "
            f"round-robin repeats after {args.warmup} warm-up (every repeat in the .json beside this file), {PROTOCOL}; "
            f"{describe(env)}\ncommand: python benchmarks/{' '.join(['speed.py', *sys.argv[1:]])}\n")


def check_args(args) -> None:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={args.device!r} but CUDA is not available here; allowed: cpu")
    for name in ("batch", "repeats"):
        if getattr(args, name, 1) < 1:
            raise ValueError(f"--{name}={getattr(args, name)} is out of range [1, inf)")
    if getattr(args, "warmup", 0) < 0:
        raise ValueError(f"--warmup={args.warmup} is out of range [0, inf)")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["timm", "open_clip"], choices=sorted(MODELS))
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--compile", action="store_true", help="torch.compile each patched model (static shapes)")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend (inductor; eager to test tracing)")
    p.add_argument("--structured", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--field", action=argparse.BooleanOptionalAction, default=False,
                   help="add the published training-free methods (FIELD_CONFIGS: evit, dpc_knn, kmedoids, visionzip, "
                        "pitome, tofu, mctf, atc, ats, ppt, zero_tprune, dct, gtp, diffrate)")
    p.add_argument("--only", nargs="+", metavar="STRATEGY",
                   help="keep only these strategies' rows (the baseline is always timed)")
    p.add_argument("--output", help="also write the table (Markdown) to this file, and every repeat as JSON beside it")
    return p


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    check_args(args)
    configs = TOKEN_CONFIGS + (STRUCTURED_CONFIGS if args.structured else []) + (FIELD_CONFIGS if args.field else [])
    if args.only:
        configs = [c for c in configs if c[0] in args.only]
    tables, records, loads = [], {}, {}
    for m in args.models:
        table, times, loads[m] = run_model(m, args.batch, args.warmup, args.repeats, [(s, dict(p)) for s, p in configs],
                                 args.device, args.dtype, args.compile, args.compile_backend)
        tables.append(table)
        records[m] = times
    env = environment(args.device)
    emit(header(args, env), pd.concat(tables), args.output,
         {"environment": env, "seconds_per_repeat": records, "load_average": loads})


if __name__ == "__main__":
    main()
