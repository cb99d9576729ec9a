"""FLOP table: fvcore with attention handles vs the analytic formula vs plain fvcore vs torch's counter.

Shows what each counter misses: plain fvcore skips scaled_dot_product_attention (timm) and the
nn.MultiheadAttention fast path (open_clip: projections and attention together), and
torch.utils.flop_counter has no formula for the CPU SDPA kernel. All figures are GMACs per image
(one multiply-accumulate = 1; GFLOPs = 2 x GMACs), random weights, 224 px.

    python benchmarks/flops.py
    python benchmarks/flops.py --models timm_vit_b16 --batch 1 --out reports/flops.md
"""
from __future__ import annotations

import argparse
import warnings

import pandas as pd
import torch

import pruning_bench as pb
from pruning_bench.measure.analytic import analytic_macs, ideal_speedup, image_tower
from pruning_bench.measure.flops import count_flops, count_flops_plain, count_flops_torch

MODELS = {
    "timm_vit_b16": "timm vit_base_patch16_224",
    "open_clip_vit_b32": "open_clip ViT-B-32",
    "open_clip_vit_b16": "open_clip ViT-B-16",
}
CONFIGS = [
    ("baseline", None, {}),
    ("tome r=8", "tome", {"r": 8}),
    ("tome r=16", "tome", {"r": 16}),
    ("tome r=8 p=0.5", "tome", {"r": 8, "match_fraction": 0.5, "seed": 0}),
    ("anchor_diversity 10/50", "anchor_diversity", {"k_anchors": 10, "top_m": 50}),
    ("cls_topk 60", "cls_topk", {"keep": 60}),
    ("random_drop 60", "random_drop", {"keep": 60}),
]


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "timm_vit_b16":
        import timm

        return timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    import open_clip

    arch = {"open_clip_vit_b32": "ViT-B-32", "open_clip_vit_b16": "ViT-B-16"}[name]
    return open_clip.create_model(arch, pretrained="").eval()


def _attempt(fn):
    """(value, None) or (None, short error text): one counter failing must not hide the others."""
    try:
        return fn(), None
    except Exception as exc:  # reported in the table
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"


def _delta(value, reference):
    return None if value is None or reference is None else 100 * (value - reference) / reference


def measure_config(model, images, strategy, params) -> dict:
    """Every counter on one configuration, the analytic figure from the schedule the pruned forward reported."""
    row = {}
    handle = pb.prune(model, strategy, **params) if strategy else None
    try:
        counted, error = _attempt(lambda: count_flops(model, images))
        # the schedule from an untraced forward (a trace records sizes as tensors)
        with torch.no_grad():
            image_tower(model)(images)
        schedule = handle.stats() if handle else None
        plain, plain_error = _attempt(lambda: count_flops_plain(model, images))
        torch_count, torch_error = _attempt(lambda: count_flops_torch(model, images))
    finally:
        if handle is not None:
            handle.restore()
    analytic = analytic_macs(model, schedule)
    row["tokens"] = "/".join(str(int(t)) for t in _first_changes(analytic.tokens_per_layer))
    row["fvcore+handles"] = counted.gmacs if counted else None
    row["analytic"] = analytic.gmacs
    row["d handles %"] = _delta(row["fvcore+handles"], analytic.gmacs)
    row["plain fvcore"] = plain[0] if plain else None
    row["d plain %"] = _delta(row["plain fvcore"], analytic.gmacs)
    row["torch counter"] = torch_count[0] if torch_count else None
    row["d torch %"] = _delta(row["torch counter"], analytic.gmacs)
    row["ideal speedup"] = ideal_speedup(None, schedule, model)
    row["plain fvcore skipped"] = ", ".join(
        op.removeprefix("aten::") for op in (plain[1] if plain else {}) if "attention" in op
    )
    errors = [e for e in (error, plain_error, torch_error) if e]
    row["errors"] = "; ".join(dict.fromkeys(errors))
    return row


def _first_changes(tokens: list[float]) -> list[float]:
    """Token counts at the blocks where they change (a compact schedule for the table)."""
    out = [tokens[0]]
    for t in tokens[1:]:
        if t != out[-1]:
            out.append(t)
    return out if len(out) <= 4 else [*out[:2], out[-1]]


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", help="also write the table as Markdown here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = torch.randn(args.batch, 3, 224, 224)
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in args.models:
            model = build(name)
            for label, strategy, params in CONFIGS:
                rows.append({"model": MODELS[name], "config": label, **measure_config(model, images, strategy, params)})
                print(f"{MODELS[name]:28s} {label:24s} done", flush=True)
    table = pd.DataFrame(rows)
    text = table.to_markdown(index=False, floatfmt=".4g")
    print()
    print(text)
    print(f"\nGMACs per image, batch {args.batch}, 224 px, random weights; d = difference from analytic in %.")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return table


if __name__ == "__main__":
    main()
