"""Memory table: peak inference memory of each strategy against its baseline (weights and activations).

Peak activation memory follows the largest block activation, which token reduction leaves untouched in
the blocks before it reduces, so it falls far less than the MACs do; structured pruning removes
weights as well. Counts are bytes of live tensors (pb.measure_memory), exact and repeatable, so
unlike timings they need no repeats and no quiet machine.

On CUDA the allocator's peak (`torch.cuda.max_memory_allocated`, weights included) is set beside the
exact count (`cuda_peak_mb`, `cuda_total_ratio`): it adds what the tracker cannot see (kernel
workspaces, a compiled graph's buffers, allocator rounding). --dtype casts the model and the images
(no autocast, as in speed.py). With --compile the CUDA peak is that of the compiled model; the exact
count always follows the eager forward, since the tracker sees the operators it dispatches.

    python benchmarks/memory.py                      # timm ViT-B/16 + open_clip ViT-B-16, batch 32
    python benchmarks/memory.py --models timm --batch 8 --output reports/memory.md
    python benchmarks/memory.py --device cuda --dtype bfloat16 --batch 256 --compile
"""
from __future__ import annotations

import copy
import sys
import warnings

import pandas as pd
import torch

import pruning_bench as pb
from pruning_bench.measure.env import describe, environment
from pruning_bench.measure.memory import cuda_peak_bytes
# same folder: same configurations, models and compile settings
from speed import DTYPES, STRUCTURED_CONFIGS, TOKEN_CONFIGS, build, check_args, compiled, emit, input_size, parser, pruned_copy

MB = 2**20


def run_model(name: str, batch: int, configs, device="cpu", dtype="float32", compile=False,
              backend="inductor") -> pd.DataFrame:
    base = build(name)
    side = input_size(base)
    images = torch.randn(batch, 3, side, side)
    calibration = [torch.randn(4, 3, side, side) for _ in range(2)]
    placed_images = images.to(device=device, dtype=DTYPES[dtype])
    rows = []
    for strategy, params in [("baseline", {}), *configs]:
        # every row works on its own copy: casting the baseline in place would round the weights later copied
        model = pruned_copy(base, strategy, params, calibration)[0] if strategy != "baseline" else copy.deepcopy(base)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gmacs = pb.count_flops(model, images[:1]).gmacs
            placed = model.to(device=device, dtype=DTYPES[dtype])
            peak = pb.measure_memory(placed, placed_images)
            fn = compiled(placed, backend) if compile else placed
            if compile:  # compile first, so the peak is the forward's own
                with torch.inference_mode():
                    fn(placed_images)
            cuda_peak = cuda_peak_bytes(fn, placed_images)
        row = {"model": name, "strategy": strategy, "params": params, "gmacs": gmacs,
               "weights_mb": (peak.parameter_bytes + peak.buffer_bytes) / MB,
               "activations_mb": peak.activation_bytes / MB, "total_mb": peak.total_bytes / MB}
        if cuda_peak is not None:
            row["cuda_peak_mb"] = cuda_peak / MB
        rows.append(row)
        del model, placed, fn
    table = pd.DataFrame(rows)
    first = table.iloc[0]
    table["macs_ratio"] = table["gmacs"] / first["gmacs"]
    table["activations_ratio"] = table["activations_mb"] / first["activations_mb"]
    table["total_ratio"] = table["total_mb"] / first["total_mb"]
    if "cuda_peak_mb" in table:
        table["cuda_total_ratio"] = table["cuda_peak_mb"] / first["cuda_peak_mb"]
    return table


def main(argv=None):
    args = parser(__doc__).parse_args(argv)
    check_args(args)
    configs = TOKEN_CONFIGS + (STRUCTURED_CONFIGS if args.structured else [])
    table = pd.concat([run_model(m, args.batch, [(s, dict(p)) for s, p in configs], args.device, args.dtype,
                                 args.compile, args.compile_backend) for m in args.models])
    env = environment(args.device)
    mode = f"; CUDA peak of torch.compile(backend={args.compile_backend}, dynamic=False)" if args.compile else ""
    header = (f"peak memory of one inference forward (torch.inference_mode), batch {args.batch}, {args.dtype} "
              f"(model and images cast), {input_size(build(args.models[0]))} px{mode}; {describe(env)}\n"
              f"command: python benchmarks/{' '.join(['memory.py', *sys.argv[1:]])}\n")
    emit(header, table, args.output)


if __name__ == "__main__":
    main()
