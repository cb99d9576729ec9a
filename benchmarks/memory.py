"""Memory table: peak inference memory of each strategy against its baseline (weights and activations).

Peak activation memory follows the largest block activation, which token reduction leaves untouched in
the blocks before it reduces, so it falls far less than the MACs do; structured pruning removes
weights as well. Counts are bytes of live tensors (pb.measure_memory), exact and repeatable, so
unlike timings they need no repeats and no quiet machine.

    python benchmarks/memory.py                      # timm ViT-B/16 + open_clip ViT-B-16, batch 32
    python benchmarks/memory.py --models timm --batch 8 --output reports/memory.md
"""
from __future__ import annotations

import argparse
import sys
import warnings

import pandas as pd
import torch

import pruning_bench as pb
from speed import STRUCTURED_CONFIGS, TOKEN_CONFIGS, build, emit, pruned_copy  # same folder: same configurations

MB = 2**20


def run_model(name: str, batch: int, configs) -> pd.DataFrame:
    base = build(name)
    images = torch.randn(batch, 3, 224, 224)
    calibration = [torch.randn(4, 3, 224, 224) for _ in range(2)]
    rows = []
    for strategy, params in [("baseline", {}), *configs]:
        model, handle = pruned_copy(base, strategy, params, calibration) if strategy != "baseline" else (base, None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peak = pb.measure_memory(model, images)
            gmacs = pb.count_flops(model, images[:1]).gmacs
        rows.append({"model": name, "strategy": strategy, "params": params, "gmacs": gmacs,
                     "weights_mb": (peak.parameter_bytes + peak.buffer_bytes) / MB,
                     "activations_mb": peak.activation_bytes / MB, "total_mb": peak.total_bytes / MB})
        if handle is not None:
            handle.restore()
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    table["macs_ratio"] = table["gmacs"] / first["gmacs"]
    table["activations_ratio"] = table["activations_mb"] / first["activations_mb"]
    table["total_ratio"] = table["total_mb"] / first["total_mb"]
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["timm", "open_clip"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--structured", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--output", help="also write the table (Markdown) to this file")
    args = parser.parse_args(argv)
    configs = TOKEN_CONFIGS + (STRUCTURED_CONFIGS if args.structured else [])
    table = pd.concat([run_model(m, args.batch, [(s, dict(p)) for s, p in configs]) for m in args.models])
    header = (f"peak memory of one inference forward (torch.inference_mode), batch {args.batch}, fp32, 224 px; "
              f"torch {torch.__version__}\ncommand: python benchmarks/{' '.join(['memory.py', *sys.argv[1:]])}\n")
    emit(header, table, args.output)


if __name__ == "__main__":
    main()
