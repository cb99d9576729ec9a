"""Structured pruning that is retrained: head_prune rounds (global vs layer-wise) and layer_drop + fine-tune.

Part 1: head_prune with head_ratio 0.3 and mlp_ratio 0.3 (magnitude importance), scope global or
layerwise, three rounds of prune + short fine-tune on the reference ViT; each round prunes the last
round's fine-tuned compact model, so the ratios compound on what is left (0.7^3 of the heads after three
rounds). Per round: accuracy, parameters, GMACs, training time, heads / MLP width per block, and the
per-block sparsity table (`pruning_bench.evaluate.rounds`).
Part 2: layer_drop keeping `--keep_layers` blocks chosen by fisher / grad_norm / activation importance
(on calibration images from the training split), topk vs distributed, then a short fine-tune of the
compact model.
Every configuration runs for each seed (head init and shuffling); mean and spread over seeds.

    python benchmarks/prune_rounds.py                   # writes reports/prune_rounds.md
    python benchmarks/prune_rounds.py --model vit_tiny_patch16_224 --img_size 32 --train 16 --test 8 --out /tmp/pr
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402

import pruning_bench as pb  # noqa: E402
from pruning_bench.evaluate import finetune, rounds  # noqa: E402
from pruning_bench.evaluate.data import loader  # noqa: E402
from pruning_bench.record.atomic import write_text  # noqa: E402
from pruning_bench.report.rounds import rounds_markdown  # noqa: E402
from pruning_bench.saved import compact_copy  # noqa: E402


def _fine_tune(args, model, loaded, train, test, seed):
    return finetune.train(model, train, test, loaded.transform, finetune.FinetuneConfig(
        epochs=1, lr=args.lr, batch_size=args.batch_size, seed=seed, progress=False, warmup_steps=args.warmup_steps))


def _gmacs(model, loaded, test):
    x = next(iter(loader(test.head(1), loaded.transform, 1)))[0]
    return pb.count_flops(model, x).gmacs


def head_rounds(args, scope, seed, train, test) -> list[dict]:
    loaded = common.load_model(args.model, args.img_size)
    model = loaded.model
    finetune.new_head(model, 10, seed)
    original = rounds.widths(model)
    rows = []
    for number in range(1, args.rounds + 1):
        finetune.seed_everything(seed)
        with pb.prune(model, "head_prune", head_ratio=0.3, mlp_ratio=0.3, scope=scope) as handle:
            outcome = _fine_tune(args, model, loaded, train, test, seed + number - 1)
            gmacs = _gmacs(model, loaded, test)
            rows.append(rounds.round_row(number, model, outcome, {"gmacs": gmacs}, handle.stats(), original))
            model = compact_copy(model)
    return rows


def layer_drop(args, importance, selection, seed, train, test) -> dict:
    loaded = common.load_model(args.model, args.img_size)
    model = loaded.model
    finetune.new_head(model, 10, seed)
    calibration = [x for x, _ in loader(train.head(args.calibration), loaded.transform, args.batch_size)]
    finetune.seed_everything(seed)
    with pb.prune(model, "layer_drop", keep_layers=args.keep_layers, importance=importance, selection=selection,
                  calibration=calibration) as handle:
        kept = handle.stats()["layers_kept"]
        compact = compact_copy(model)
    gmacs = _gmacs(compact, loaded, test)
    outcome = _fine_tune(args, compact, loaded, train, test, seed)
    return {"layers_kept": kept, "acc1": outcome.acc1, "gmacs": gmacs,
            "parameters": sum(p.numel() for p in compact.parameters()),
            "train_images_per_second": outcome.timing()["train_images_per_second"]}


def reading(args, records) -> list[str]:
    """What the tables say, computed from them: scopes compared round by round, and layer selections that
    came out the same (their rows are then the same runs)."""
    lines = ["## Reading", "",
             "- Every round fine-tunes one more epoch on the same images, so a later round's accuracy includes more "
             "training as well as more pruning: compare the scopes round by round, not the rounds with each other."]
    for number in range(1, args.rounds + 1):
        cells = []
        for scope in ("global", "layerwise"):
            acc = [r["rounds"][number - 1]["acc1"] * 100 for r in records.rows
                   if r["key"].startswith(f"heads_{scope}_") and len(r["rounds"]) >= number]
            if acc:
                cells.append(f"{scope} {common.spread(acc)}")
        if len(cells) == 2:
            lines.append(f"- Round {number}: {'; '.join(cells)} (acc1 %).")
    drops = [r for r in records.rows if r["key"].startswith("drop_")]
    kept: dict[tuple, list[str]] = {}
    for importance in args.importances:
        for selection in ("topk", "distributed"):
            runs = sorted((r for r in drops if r["importance"] == importance and r["selection"] == selection),
                          key=lambda r: r["seed"])
            if runs:
                kept.setdefault((selection, tuple(tuple(r["layers_kept"]) for r in runs)), []).append(importance)
    for (selection, _), names in kept.items():
        if len(names) > 1:
            lines.append(f"- {selection}: {' and '.join(names)} score the blocks differently but keep the same blocks "
                         "for every seed, so their rows are the same fine-tunes.")
    return lines + [""]


def report(args, records, started, kept_header: list[str] | None = None) -> str:
    sizes = (f"{args.model} at {args.img_size} px; {args.train} CIFAR-10 training images per fine-tune (1 epoch, "
             f"batch {args.batch_size}, AdamW lr {args.lr}), {args.test} test images, seeds {args.seeds}; "
             f"layer_drop keeps {args.keep_layers} blocks scored on {args.calibration} calibration images.")
    lines = common.header("Prune + fine-tune rounds; layer selection + fine-tune", started, sizes, kept_header)
    lines += ["## head_prune 0.3 heads / 0.3 MLP per round (compounding), global vs layer-wise", ""]
    for scope in ("global", "layerwise"):
        runs = [r for r in records.rows if r["key"].startswith(f"heads_{scope}_")]
        if not runs:
            continue
        lines += [f"### scope={scope}", "", "| round | acc1 (%) | parameters (M) | GMACs | train images/s |",
                  "| --- | --- | --- | --- | --- |"]
        for number in range(1, args.rounds + 1):
            rows = [r["rounds"][number - 1] for r in runs if len(r["rounds"]) >= number]
            lines.append(f"| {number} | {common.spread([x['acc1'] * 100 for x in rows])} | "
                         f"{common.spread([x['parameters'] / 1e6 for x in rows])} | {common.spread([x['gmacs'] for x in rows])} | "
                         f"{common.spread([x['train_images_per_second'] for x in rows])} |")
        lines += ["", f"Per round, seed {runs[0]['seed']} (round 1 ranks the pretrained weights by magnitude, the same for "
                      "every seed; later rounds rank the fine-tuned weights, which depend on it):", "",
                  rounds_markdown(runs[0]["rounds"])]
    drops = [r for r in records.rows if r["key"].startswith("drop_")]
    if drops:
        lines += ["## layer_drop, then a short fine-tune of the compact model", "",
                  "| importance | selection | blocks kept (seed 0) | acc1 (%) | GMACs | parameters (M) |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for importance in args.importances:
            for selection in ("topk", "distributed"):
                rows = [r for r in drops if r["importance"] == importance and r["selection"] == selection]
                if rows:
                    lines.append(f"| {importance} | {selection} | {rows[0]['layers_kept']} | "
                                 f"{common.spread([x['acc1'] * 100 for x in rows])} | {common.spread([x['gmacs'] for x in rows])} | "
                                 f"{common.spread([x['parameters'] / 1e6 for x in rows])} |")
    lines += [""] + reading(args, records) + [f"Runs done: {len(records.rows)}.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference")
    parser.add_argument("--img_size", type=int, default=112)
    parser.add_argument("--train", type=int, default=32)
    parser.add_argument("--test", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep_layers", type=int, default=8)
    parser.add_argument("--calibration", type=int, default=16)
    parser.add_argument("--importances", nargs="+", default=["fisher", "grad_norm", "activation"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/prune_rounds")
    parser.add_argument("--table_only", action="store_true",
                        help="re-render <out>.md from <out>.jsonl, keeping the header of the run that measured them")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, out = time.time(), Path(args.out)
    records = common.Records(out)
    if args.table_only:
        return write_text(out.with_suffix(".md"), report(args, records, started,
                                                         common.previous_header(out.with_suffix(".md"))))
    train, test = common.cifar("train", args.train), common.cifar("test", args.test)
    for seed in args.seeds:
        for scope in ("global", "layerwise"):
            key = f"heads_{scope}_s{seed}"
            if key not in records.done:
                records.add({"key": key, "seed": seed, "rounds": head_rounds(args, scope, seed, train, test)})
                write_text(out.with_suffix(".md"), report(args, records, started))
                print(key, flush=True)
        for importance in args.importances:
            for selection in ("topk", "distributed"):
                key = f"drop_{importance}_{selection}_s{seed}"
                if key not in records.done:
                    row = layer_drop(args, importance, selection, seed, train, test)
                    records.add({"key": key, "seed": seed, "importance": importance, "selection": selection, **row})
                    write_text(out.with_suffix(".md"), report(args, records, started))
                    print(key, flush=True)
    write_text(out.with_suffix(".md"), report(args, records, started))


if __name__ == "__main__":
    main()
