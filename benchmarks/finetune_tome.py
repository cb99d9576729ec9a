"""Fine-tune with ToMe active: r in {0, 4, 8, 16} x match_fraction (the notes' p) in {1.0, 0.8, 0.4}, 3 seeds.

The notes fine-tuned ViT-Tiny on CIFAR-10 for 10 epochs per (r, p); on 2 shared CPU cores this fine-tunes
the reference ViT (or `--model vit_tiny_patch16_224`, random init) on a small CIFAR-10 subset for a few
steps, so the accuracies say how the configurations rank after a short fine-tune, not where they end.
Per run: test accuracy, GMACs (fvcore, one image, merging included), training images/s (per-step
compute after warm-up, data loading apart), the merges each block really did, and the cap note when
the matching share cannot supply r (on_short_match='cap').

    python benchmarks/finetune_tome.py                                  # writes reports/finetune_tome.md
    python benchmarks/finetune_tome.py --train 32 --test 32 --seeds 0 --out /tmp/quick
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402

import pruning_bench as pb  # noqa: E402
from pruning_bench.evaluate import finetune  # noqa: E402
from pruning_bench.record.atomic import write_text  # noqa: E402
from readings import finetune_readings  # noqa: E402


def run_one(args, r: int, p: float, seed: int, train, test) -> dict:
    loaded = common.load_model(args.model, args.img_size)
    model = loaded.model
    finetune.new_head(model, 10, seed)
    finetune.seed_everything(seed)
    notes = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        with pb.prune(model, "tome", r=r, match_fraction=p, seed=seed) as handle:
            outcome = finetune.train(model, train, test, loaded.transform, finetune.FinetuneConfig(
                epochs=1, lr=args.lr, batch_size=args.batch_size, seed=seed, progress=False,
                warmup_steps=args.warmup_steps))
            x = _first(test, loaded)
            model.eval()
            with torch.no_grad():
                gmacs = pb.count_flops(model, x).gmacs
                model(x)
            stats = handle.stats()
        notes = list(dict.fromkeys(str(w.message) for w in caught if "merges clamped" in str(w.message)))
    timing = outcome.timing()
    return {"r": r, "p": p, "seed": seed, "acc1": outcome.acc1, "gmacs": gmacs,
            "train_images_per_second": timing["train_images_per_second"],
            "step_seconds_median": timing["step_seconds"]["median"] if timing["step_seconds"] else None,
            "merges_per_layer": stats.get("merges_per_layer"), "tokens_per_layer": stats.get("tokens_per_layer"),
            "notes": notes, "peak_training_bytes": (timing["peak_memory"] or {}).get("bytes_total")}


def _first(images, loaded):
    from pruning_bench.evaluate.data import loader

    return next(iter(loader(images.head(1), loaded.transform, 1)))[0]


def report(args, records, started, kept_header: list[str] | None = None, kept_sizes: str | None = None) -> str:
    sizes = kept_sizes or (f"{args.model} at {args.img_size} px, {args.train} CIFAR-10 training images (1 epoch, batch "
                           f"{args.batch_size}, AdamW lr {args.lr}, one-cycle), {args.test} test images, seeds "
                           f"{args.seeds}; first {args.warmup_steps} steps excluded from the timing.")
    lines = common.header("Fine-tuning through ToMe: r x match_fraction", started, sizes, kept_header)
    lines += ["| r | match_fraction | acc1 (%) | GMACs | train images/s | merges per block (seed 0) |",
              "| --- | --- | --- | --- | --- | --- |"]
    for r in args.r:
        for p in args.p:
            rows = [x for x in records.rows if x["r"] == r and x["p"] == p]
            p = "any" if r == 0 else p
            if not rows:
                continue
            merges = " ".join(map(str, rows[0]["merges_per_layer"] or []))
            lines.append(f"| {r} | {p} | {common.spread([x['acc1'] * 100 for x in rows])} | "
                         f"{common.spread([x['gmacs'] for x in rows])} | "
                         f"{common.spread([x['train_images_per_second'] for x in rows])} | {merges} |")
    lines += reading(args, records.rows)
    notes = sorted({n for x in records.rows for n in x["notes"]})
    if notes:
        lines += ["", "Caps (on_short_match='cap'):", ""] + [f"- {n}" for n in notes]
    missing = [(r, p, s) for r in args.r for p in args.p for s in args.seeds
               if key(r, p, s) not in records.done and not (r == 0 and p != args.p[0])]
    lines += ["", f"Runs missing (not yet run): {missing}" if missing else "All runs done.", ""]
    return "\n".join(lines)


def reading(args, rows) -> list[str]:
    """What the table says, computed from its records (`readings.finetune_readings`)."""
    return ["", "Reading:", ""] + finetune_readings(rows)


def key(r, p, seed) -> str:
    return f"r{r}_p{p}_s{seed}"


def rebuild(out: Path, args=None) -> None:
    """Re-render `<out>.md` from `<out>.jsonl`, keeping the header and sizes of the run that measured them."""
    args = args or parser().parse_args([])
    md = out.with_suffix(".md")
    kept = common.previous_header(md)
    old = md.read_text().splitlines() if md.is_file() else []
    sizes = next((line[len("Sizes: "):] for line in old if line.startswith("Sizes: ")), None)
    write_text(md, report(args, common.Records(out), time.time(), kept, sizes))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference")
    parser.add_argument("--img_size", type=int, default=112)
    parser.add_argument("--train", type=int, default=64)
    parser.add_argument("--test", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--r", type=int, nargs="+", default=[0, 4, 8, 16])
    parser.add_argument("--p", type=float, nargs="+", default=[1.0, 0.8, 0.4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/finetune_tome")
    parser.add_argument("--table_only", action="store_true",
                        help="re-render <out>.md from <out>.jsonl, keeping the header of the run that measured them")
    return parser


def main():
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    out = Path(args.out)
    if args.table_only:
        return rebuild(out, args)
    records = common.Records(out)
    train, test = common.cifar("train", args.train), common.cifar("test", args.test)
    for seed in args.seeds:
        for r in args.r:
            for p in args.p:
                if key(r, p, seed) in records.done:
                    continue
                if r == 0 and p != args.p[0]:  # r=0 merges nothing: one row stands for every p
                    continue
                row = run_one(args, r, p, seed, train, test)
                row["key"] = key(r, p, seed)
                records.add(row)
                write_text(out.with_suffix(".md"), report(args, records, started))
                print(f"{row['key']}: acc1 {row['acc1']:.3f}, {row['gmacs']:.3f} GMACs", flush=True)
    write_text(out.with_suffix(".md"), report(args, records, started))


if __name__ == "__main__":
    main()
