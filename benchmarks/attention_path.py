"""One attention layer, two code paths: the module's own forward vs the path a token strategy runs
(`pruning_bench.patches.attention`, which must expose q and k). Explains efficiency figures above or
below 1.0 in the speed table: a reducing block pays or saves this difference on every token it keeps.

    python benchmarks/attention_path.py [--batch 32 --tokens 197 --repeats 7]
"""
from __future__ import annotations

import argparse

import open_clip
import pandas as pd
import timm
import torch

from pruning_bench.families import locate
from pruning_bench.patches.attention import attention_with_probe
from speed import round_robin  # same folder: one timing protocol


def layers():
    """(name, attention view, its module's own forward) for timm ViT-B/16 and open_clip ViT-B-16, first block."""
    timm_family = locate(timm.create_model("vit_base_patch16_224", pretrained=False).eval())
    clip_family = locate(open_clip.create_model("ViT-B-16", pretrained="").visual.eval())
    timm_view = timm_family.attention_view(timm_family.blocks[0])
    clip_view = clip_family.attention_view(clip_family.blocks[0])
    clip_attn = clip_view.module
    yield "timm Attention", timm_view, timm_view.module
    yield "open_clip nn.MultiheadAttention", clip_view, lambda h: clip_attn(h, h, h, need_weights=False)[0]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    h = torch.randn(args.batch, args.tokens, 768)
    bias = 0.1 * torch.randn(args.batch, 1, 1, args.tokens)
    rows = []
    for name, attn, own in layers():
        with torch.inference_mode():
            diff = (own(h) - attention_with_probe(attn, h, None)[0]).abs().max().item()
        seconds = round_robin({
            "own forward": own,
            "token path": lambda x, a=attn: attention_with_probe(a, x, None)[0],
            "token path + size bias": lambda x, a=attn: attention_with_probe(a, x, bias)[0],
        }, h, warmup=1, repeats=args.repeats)
        for path, s in seconds.items():
            rows.append({"layer": name, "path": path, "ms": 1e3 * s, "vs own forward": seconds["own forward"] / s,
                         "max abs diff": f"{diff:.2g}" if path == "token path" else ""})
    print(f"batch {args.batch}, {args.tokens} tokens, width 768, fp32, {torch.get_num_threads()} threads, "
          f"median of {args.repeats} round-robin repeats")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main()
