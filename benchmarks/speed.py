"""Speed table: GMACs, images/s, speedup and efficiency of each strategy against its baseline.

Every configuration of a model is timed round-robin in one process (baseline, A, B, ..., baseline,
A, B, ...) and the median of the repeats is taken, so drift on a shared machine hits all alike.
efficiency = speedup x (pruned MACs / baseline MACs): 1.0 means the measured speedup is exactly
what the removed multiply-accumulates predict.

    python benchmarks/speed.py                       # timm ViT-B/16 + open_clip ViT-B-16, batch 32
    python benchmarks/speed.py --models timm --batch 8 --repeats 3
    TOME_REFERENCE_PATH=/path/to/ToMe python benchmarks/speed.py   # adds the reference ToMe rows
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings

import pandas as pd
import torch

import pruning_bench as pb
from pruning_bench.measure.env import environment

TOKEN_CONFIGS = [
    ("tome", {"r": 8}),
    ("tome", {"r": 13}),
    ("tome", {"r": 16}),
    ("anchor_diversity", {"k_anchors": 10, "top_m": 50}),
    ("cls_topk", {"keep": 60}),
]
# Structured strategies: name, params, whether they need calibration batches.
STRUCTURED_CONFIGS: list[tuple[str, dict]] = [
    ("head_prune", {"head_ratio": 0.3, "mlp_ratio": 0.3, "importance": "magnitude"}),
    ("layer_drop", {"keep_layers": 8, "importance": "cosine", "_calibrate": True}),
]
REFERENCE_TOME_R = (8, 16)


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "timm":
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0).eval()
    if name == "open_clip":
        import open_clip

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return open_clip.create_model("ViT-B-16", pretrained="").visual.eval()
    raise SystemExit(f"unknown model {name!r}; choose timm or open_clip")


def pruned_copy(base, strategy: str, params: dict, calibration):
    """(copy of `base` with `strategy` patched in, its handle); `_calibrate` in `params` asks for the
    calibration batches. Clamp warnings are silenced: the tables report what was measured."""
    model = copy.deepcopy(base)
    full = {**params, "calibration": calibration} if params.pop("_calibrate", False) else params
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, pb.prune(model, strategy, **full)


def emit(header: str, table: pd.DataFrame, output: str | None) -> None:
    """Print the table under its header, and write the same Markdown to `output` when given."""
    text = header + "\n" + table.to_markdown(index=False, floatfmt=".3f")
    print(text)
    if output:
        with open(output, "w") as f:
            f.write(text + "\n")


def reference_tome(model, r):
    try:
        import tome
    except ImportError:
        return None
    patched = copy.deepcopy(model)
    tome.patch.timm(patched)
    patched.r = r
    return patched


def round_robin(fns: dict, images, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per batch of each callable, timed in interleaved rounds."""
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for fn in fns.values():
                fn(images)
        for i in range(repeats):
            order = list(fns.items()) if i % 2 == 0 else list(fns.items())[::-1]
            for key, fn in order:
                start = time.perf_counter()
                fn(images)
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def run_model(name: str, batch: int, warmup: int, repeats: int, configs) -> pd.DataFrame:
    base = build(name)
    images = torch.randn(batch, 3, 224, 224)
    calibration = [torch.randn(4, 3, 224, 224) for _ in range(2)]
    models, handles, macs, labels = {"baseline": base}, [], {}, {}
    macs["baseline"] = pb.count_flops(base, images[:1]).gmacs
    for strategy, params in configs:
        model, handle = pruned_copy(base, strategy, params, calibration)
        key = f"{strategy} {params}"
        handles.append(handle)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            macs[key] = pb.count_flops(model, images[:1]).gmacs
        models[key] = model
        labels[key] = (strategy, params)
    if name == "timm":
        for r in REFERENCE_TOME_R:
            ref = reference_tome(base, r)
            if ref is not None:
                key = f"reference ToMe r={r}"
                models[key], labels[key] = ref, ("reference_tome", {"r": r})
                macs[key] = macs.get(f"tome {{'r': {r}}}")
    seconds = round_robin(models, images, warmup, repeats)
    rows = []
    for key, model in models.items():
        strategy, params = labels.get(key, ("baseline", {}))
        speedup = seconds["baseline"] / seconds[key]
        ratio = macs[key] / macs["baseline"] if macs[key] else float("nan")
        rows.append({
            "model": name, "strategy": strategy, "params": params, "gmacs": macs[key],
            "images_per_second": batch / seconds[key], "speedup": speedup, "macs_ratio": ratio,
            "efficiency": speedup * ratio,
        })
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["timm", "open_clip"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--structured", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)
    configs = TOKEN_CONFIGS + (STRUCTURED_CONFIGS if args.structured else [])
    table = pd.concat([run_model(m, args.batch, args.warmup, args.repeats, [(s, dict(p)) for s, p in configs]) for m in args.models])
    env = environment("cpu")
    header = (
        f"batch {args.batch}, fp32, CPU threads {torch.get_num_threads()}, median of {args.repeats} round-robin repeats "
        f"after {args.warmup} warm-up; torch {torch.__version__}; {env.get('cpu', '')}\n"
        f"command: python benchmarks/{' '.join(['speed.py', *sys.argv[1:]])}\n"
    )
    emit(header, table, args.output)


if __name__ == "__main__":
    main()
