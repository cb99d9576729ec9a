"""Seed 003's experiment at CPU scale: refill vs rsst vs head_prune rounds, global vs layer-wise ranking.

The reference ViT with a fresh 10-class head, three states of (choose units -> train one epoch on a CIFAR-10
training slice -> units out -> test), heads 30% and MLP neurons 30% of those present per state, so all
three methods hold the same number of heads and neurons after every state (nearest counts, compounding):
- refill: criterion l1 (sum |w| of a head's q/k/v rows / a neuron's fc1 row), the leaving units zeroed and
  kept zero while the state trains, sliced out at its end;
- rsst: the same choice, the leaving units' weights penalised (lambda x w added to their gradient, schedule
  `--schedule` with step `--reg_scale`) while the state trains, sliced out at its end;
- head_prune: today's one-shot structured pruning (magnitude importance) sliced at once, then trained.
Every (method, scope) runs for each seed (head init and shuffling). Mean ± std, min-max and a 95%
t-interval over seeds; a reading computed from the table. Finished runs are kept in `<out>.jsonl`, so an
interrupted run resumes; the report is rewritten after each run.

    python benchmarks/refill_rsst.py                     # writes reports/refill_rsst.md
    python benchmarks/refill_rsst.py --table_only        # re-render from reports/refill_rsst.jsonl
    python benchmarks/refill_rsst.py --model vit_tiny_patch16_224 --img_size 32 --train 16 --test 8 --out /tmp/rr
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats as scipy_stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as common  # noqa: E402

import pruning_bench as pb  # noqa: E402
from pruning_bench.evaluate import finetune, rounds  # noqa: E402
from pruning_bench.evaluate.data import loader  # noqa: E402
from pruning_bench.record.atomic import write_text  # noqa: E402
from pruning_bench.report.rounds import rounds_markdown  # noqa: E402
from pruning_bench.saved import compact_copy  # noqa: E402

METHODS = ("refill", "rsst", "head_prune")
SCOPES = ("global", "layerwise")


def method_params(args, method: str, scope: str) -> dict:
    params = {"head_ratio": args.head_ratio, "mlp_ratio": args.mlp_ratio, "scope": scope}
    if method == "head_prune":
        return params | {"importance": "magnitude"}
    params["criterion"] = args.criterion
    if method == "rsst":
        params |= {"schedule": args.schedule, "reg_scale": args.reg_scale, "exponents": args.exponents}
    return params


_LOADED = {}


def fresh_model(args):
    """(a fresh copy of the model, its loading record): the model is read once per process."""
    if args.model not in _LOADED:
        _LOADED[args.model] = common.load_model(args.model, args.img_size)
    loaded = _LOADED[args.model]
    return copy.deepcopy(loaded.model), loaded


def run_states(args, method, scope, seed, train, test) -> list[dict]:
    model, loaded = fresh_model(args)
    finetune.new_head(model, 10, seed)
    original = rounds.widths(model)
    x = next(iter(loader(test.head(1), loaded.transform, 1)))[0]
    rows = []
    for number in range(1, args.rounds + 1):
        finetune.seed_everything(seed)
        with pb.prune(model, method, **method_params(args, method, scope)) as handle:
            outcome = finetune.train(model, train, test, loaded.transform, finetune.FinetuneConfig(
                epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=seed + number - 1, progress=False,
                warmup_steps=args.warmup_steps, measure_memory=False))
            gmacs = pb.count_flops(model, x).gmacs
            rows.append(rounds.round_row(number, model, outcome, {"gmacs": gmacs}, handle.stats(), original))
            model = compact_copy(model)
    return rows


# ---------------------------------------------------------------- tables and reading


def interval(values) -> tuple[float, float] | None:
    """95% t-interval of the mean over seeds (None with fewer than two)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    half = scipy_stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def cell(values) -> str:
    ci = interval(values)
    return common.spread(values) + (f"; 95% CI {ci[0]:.4g}-{ci[1]:.4g}" if ci else "")


def accuracies(records, method: str, scope: str, state: int, field: str = "acc1") -> list[float]:
    return [r["rounds"][state - 1][field] * 100 for r in records
            if r["method"] == method and r["scope"] == scope and len(r["rounds"]) >= state]


def reading(records, n_states: int) -> list[str]:
    """What the table says, computed from it: per scope and state, the best method by mean test accuracy and
    whether its interval clears the others'; then global against layer-wise per method at the last state."""
    lines = ["## Reading (computed from the table)", ""]
    for scope in SCOPES:
        for state in range(1, n_states + 1):
            means = {m: accuracies(records, m, scope, state) for m in METHODS}
            means = {m: v for m, v in means.items() if v}
            if len(means) < 2:
                continue
            order = sorted(means, key=lambda m: -np.mean(means[m]))
            best, rest = order[0], order[1:]
            tied = [m for m in rest if np.isclose(np.mean(means[m]), np.mean(means[best]))]
            if tied:
                lines.append(f"- {scope}, state {state}: {' and '.join([best, *tied])} tie for the highest mean test "
                             f"accuracy ({np.mean(means[best]):.2f}%).")
                continue
            ci = interval(means[best])
            clear = [m for m in rest if ci and (other := interval(means[m])) and other[1] < ci[0]]
            verdict = ("its interval lies above " + " and ".join(clear)) if clear else \
                "the intervals overlap, so the ranking is within seed noise"
            lines.append(f"- {scope}, state {state}: {best} has the highest mean test accuracy "
                         f"({np.mean(means[best]):.2f}% vs " +
                         ", ".join(f"{m} {np.mean(means[m]):.2f}%" for m in rest) + f"); {verdict}.")
    for method in METHODS:
        g, lw = accuracies(records, method, "global", n_states), accuracies(records, method, "layerwise", n_states)
        if g and lw:
            diff = np.mean(g) - np.mean(lw)
            lines.append(f"- {method}, state {n_states}: global minus layer-wise = {diff:+.2f} points of test accuracy.")
    return lines + [""]


def report(args, records, started, kept_header=None) -> str:
    sizes = (f"{args.model} at {args.img_size} px; per state {args.epochs} epoch on {args.train} CIFAR-10 training "
             f"images (batch {args.batch_size}, AdamW lr {args.lr}), tested on {args.test} test images; heads "
             f"{args.head_ratio:.0%} / MLP {args.mlp_ratio:.0%} of those present per state, {args.rounds} states; "
             f"refill / rsst criterion {args.criterion}; rsst schedule {args.schedule}, reg_scale {args.reg_scale}, "
             f"exponents {args.exponents}; head_prune importance magnitude; seeds {args.seeds}.")
    lines = common.header("refill vs rsst vs head_prune rounds (seed 003 at CPU scale)", started, sizes, kept_header)
    rows = records.rows
    lines += ["Test accuracy (%) after each state (the state's units already out), mean ± std (min-max, seeds); "
              "95% t-interval over seeds.", ""]
    for scope in SCOPES:
        lines += [f"### scope={scope}", "", "| method | state | test acc1 (%) | train acc1 (%) | overall sparsity | "
                  "GMACs | parameters (M) | train s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for method in METHODS:
            runs = [r for r in rows if r["method"] == method and r["scope"] == scope]
            for state in range(1, args.rounds + 1):
                got = [r["rounds"][state - 1] for r in runs if len(r["rounds"]) >= state]
                if not got:
                    continue
                lines.append(f"| {method} | {state} | {cell([g['acc1'] * 100 for g in got])} | "
                             f"{common.spread([g['train_acc1'] * 100 for g in got])} | "
                             f"{common.spread([g['overall_sparsity'] * 100 for g in got])}% | "
                             f"{common.spread([g['gmacs'] for g in got])} | "
                             f"{common.spread([g['parameters'] / 1e6 for g in got])} | "
                             f"{common.spread([g['train_seconds'] for g in got])} |")
        lines.append("")
    lines += [""] + reading(rows, args.rounds)
    lines += ["## Per-state tables (seed 0): per-block sparsity as the seed prints it", ""]
    for method in METHODS:
        for scope in SCOPES:
            first = [r for r in rows if r["method"] == method and r["scope"] == scope and r["seed"] == min(args.seeds)]
            if first:
                lines.append(rounds_markdown(first[0]["rounds"], title=f"{method}, scope={scope}"))
    lines += [f"Runs done: {len(rows)} of {len(METHODS) * len(SCOPES) * len(args.seeds)}.", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="reference")
    parser.add_argument("--img_size", type=int, default=112)
    parser.add_argument("--train", type=int, default=192)
    parser.add_argument("--test", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup_steps", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--head_ratio", type=float, default=0.3)
    parser.add_argument("--mlp_ratio", type=float, default=0.3)
    parser.add_argument("--criterion", default="l1")
    parser.add_argument("--schedule", default="x")
    parser.add_argument("--reg_scale", type=float, default=0.1)
    parser.add_argument("--exponents", type=int, default=4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="reports/refill_rsst")
    parser.add_argument("--table_only", action="store_true",
                        help="re-render <out>.md from <out>.jsonl, keeping the header of the run that measured them")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started, out = time.time(), Path(args.out)
    records = common.Records(out)
    if args.table_only:
        return write_text(out.with_suffix(".md"), report(args, records, started,
                                                         common.previous_header(out.with_suffix(".md"))))
    for method in METHODS:  # fail on a bad setting before any training
        for scope in SCOPES:
            pb.get_strategy(method)(**method_params(args, method, scope))
    train, test = common.cifar("train", args.train), common.cifar("test", args.test)
    for seed in args.seeds:
        for method in METHODS:
            for scope in SCOPES:
                key = f"{method}_{scope}_s{seed}"
                if key in records.done:
                    continue
                records.add({"key": key, "method": method, "scope": scope, "seed": seed,
                             "rounds": run_states(args, method, scope, seed, train, test)})
                write_text(out.with_suffix(".md"), report(args, records, started))
                print(key, flush=True)
    write_text(out.with_suffix(".md"), report(args, records, started))


if __name__ == "__main__":
    main()
