"""Where a token strategy's time goes: its own decisions against the rest of the forward.

Efficiency (speedup x MACs ratio) below 1 means a forward spends time its MAC count does not predict.
For a token strategy that time is usually in its decisions: element-wise work on N x N attention maps
(softmax, gathers, renormalisation), matrix-vector products (memory-bound: a PageRank step reads the
whole map for a few MACs), sorting and clustering. This script measures it. Every configuration (by
default `speed.py`'s FIELD_CONFIGS) runs beside the unpruned model in interleaved rounds (the package's
throughput protocol), and inside each forward the strategy's `reduce` call (the scores, graphs, clusters
and plan a block's reduction is made from) is timed with time.perf_counter. CPU only: every op has
finished when the call returns, so the split needs no synchronisation.

Columns: `decision_ms` and its share of the forward; `decision_macs_share`, the share of the counted MACs
its decisions are declared to cost (`decision_macs`); `efficiency`, as in speed.py; `efficiency_rest`,
the same for the forward without the decisions (time and MACs both taken out): near 1 means the reduced
blocks turn removed MACs into speed, and the shortfall is the decisions' own. A negative MACs share is a
saving the decisions buy elsewhere in the block (mctf's one-step-ahead runs A V and the output projection
on the merged tokens only); the work a strategy does outside `reduce` (mctf's and zero_tprune's attention
map, which the fused kernel does not return) stays in the rest.

    python benchmarks/decision_time.py --models timm --only zero_tprune mctf --output /tmp/decisions.md
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pruning_bench.families import locate  # noqa: E402
from pruning_bench.measure.env import describe, environment  # noqa: E402
from pruning_bench.measure.throughput import interleaved_times, load_average, load_record  # noqa: E402
from pruning_bench.record.atomic import write_text  # noqa: E402
from pruning_bench.strategies.base import DecisionDims  # noqa: E402
from speed import FIELD_CONFIGS, MODELS, build, prepare, timed_images  # noqa: E402


def declared_decision_macs(strategy, model, stats: dict) -> float:
    """MACs per image the strategy declares its decisions cost, over the blocks that reduced."""
    family = locate(model)
    dims = family.dims()
    heads = family.attention_view(family.blocks[0]).num_heads
    decision = DecisionDims(dims.embed_dim, dims.blocks[0].attn_dim // heads, dims.blocks[0].attn_dim)
    pairs = zip(stats["tokens_per_layer"], stats["out_tokens_per_layer"])
    return sum(strategy.decision_macs(i, n, m, family.n_prefix, decision) for i, (n, m) in enumerate(pairs) if m < n)


class DecisionClock:
    """Seconds spent in a strategy's `reduce` during each forward of its model (wraps the bound method)."""

    def __init__(self, strategy):
        self.per_forward: list[float] = []
        self._current = 0.0
        inner = strategy.reduce

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._current += time.perf_counter() - start

        strategy.reduce = timed

    def forward(self, model):
        def run(images):
            self._current = 0.0
            out = model(images)
            self.per_forward.append(self._current)
            return out
        return run


def run_model(name: str, configs, batch: int, warmup: int, repeats: int) -> tuple[pd.DataFrame, dict]:
    base = build(name)
    handles: dict = {}
    models, labels, macs, _ = prepare(base, configs, with_reference=False, handles=handles)
    fns, clocks, decision = {"baseline": base}, {}, {}
    for key, handle in handles.items():
        decision[key] = declared_decision_macs(handle.strategies[0], models[key], handle.stats()) / 1e9
        clocks[key] = DecisionClock(handle.strategies[0])
        fns[key] = clocks[key].forward(models[key])
    before = load_average()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        times, _ = interleaved_times(fns, timed_images(base, batch), warmup=warmup, repeats=repeats)
    load = load_record(before, load_average())
    base_s = statistics.median(times["baseline"])
    rows = []
    for key, seconds in times.items():
        strategy, params = labels[key]
        forward = statistics.median(seconds)
        spent = statistics.median(clocks[key].per_forward[-repeats:]) if key in clocks else 0.0
        gmacs, dec = macs[key], decision.get(key, 0.0)
        rows.append({"model": name, "strategy": strategy, "params": params, "gmacs": gmacs,
                     "forward_ms": 1000 * forward, "decision_ms": 1000 * spent, "decision_time_share": spent / forward,
                     "decision_macs_share": dec / gmacs,
                     "efficiency": base_s / forward * gmacs / macs["baseline"],
                     "efficiency_rest": base_s / (forward - spent) * (gmacs - dec) / macs["baseline"]})
    spent_by_key = {k: c.per_forward for k, c in clocks.items()}
    return pd.DataFrame(rows), {"seconds_per_repeat": times, "decision_seconds": spent_by_key, "load_average": load}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["timm"], choices=sorted(MODELS))
    p.add_argument("--only", nargs="+", metavar="STRATEGY", help="these strategies of FIELD_CONFIGS only")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", help="also write the table (Markdown) here, every repeat as JSON beside it")
    args = p.parse_args(argv)
    known = sorted({s for s, _ in FIELD_CONFIGS})
    unknown = sorted(set(args.only or []) - set(known))
    if unknown:
        raise SystemExit(f"--only: {', '.join(unknown)} not in FIELD_CONFIGS ({', '.join(known)})")
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name}={getattr(args, name)} is out of range [1, inf)")
    configs = [(s, p) for s, p in FIELD_CONFIGS if not args.only or s in args.only]
    tables, records = [], {}
    for name in args.models:
        table, records[name] = run_model(name, configs, args.batch, args.warmup, args.repeats)
        tables.append(table)
    command = " ".join(["python benchmarks/decision_time.py", *sys.argv[1:]])
    text = (f"batch {args.batch}, float32, eager, median of {args.repeats} round-robin repeats after {args.warmup} "
            f"warm-up; {describe(environment('cpu'))}\ncommand: {command}\n\n"
            + pd.concat(tables).to_markdown(index=False, floatfmt=".3f"))
    print(text)
    if args.output:
        write_text(args.output, text + "\n")
        write_text(Path(args.output).with_suffix(".json"), json.dumps(records, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
