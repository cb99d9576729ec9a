"""Token maps from a `clip_benchmark eval --extract_attention --attention_output PATH` file.

The file holds, per block, the positions of the tokens a selecting strategy kept (see
`pruning_bench.record.attention`), for the first images of the evaluation stream. When it
also holds the images (`images`, (N, H, W, 3) uint8 as the model saw them) those are drawn; otherwise
they are read again from the data set (the first images of the test split, in shard order, as
clip_benchmark reads a local webdataset) and cropped as open_clip's evaluation preprocessing does
(shortest side resized, centre crop), which puts each patch over the pixels the model saw for
open_clip models. Files from version 2 on also hold `owner` (who holds each input token after every
block), which covers merging strategies (tome); from older files merges need a live model.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .maps import TokenMaps, default_blocks, maps_from_kept_indices, maps_from_owner


def load_record(path) -> dict:
    record = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or "kept_index" not in record or "tokens_per_layer" not in record:
        raise ValueError(f"{path} is not an --attention_output file (no kept_index / tokens_per_layer)")
    return record


def square_grid(n_tokens: int, n_prefix: int | None = None) -> tuple[tuple[int, int], int]:
    """((g, g), prefix) for `n_tokens` input tokens: the prefix given, else the smallest one leaving a square."""
    candidates = [n_prefix] if n_prefix is not None else range(1, min(n_tokens, 17))
    for prefix in candidates:
        side = math.isqrt(n_tokens - prefix)
        if side * side == n_tokens - prefix and side > 0:
            return (side, side), prefix
    raise ValueError(f"{n_tokens} tokens do not make a square patch grid with "
                     f"{'a prefix of ' + str(n_prefix) if n_prefix is not None else 'any prefix of 1-16'} tokens; "
                     "give --prefix_tokens")


def maps_from_record(record: dict, blocks: list[int] | None = None, n_prefix: int | None = None) -> TokenMaps:
    tokens = [int(t) for t in record["tokens_per_layer"]]
    layers = [int(layer) for layer in record.get("layers", range(len(record["kept_index"])))]
    if layers != list(range(len(tokens))):
        raise ValueError(f"the file records blocks {layers}, not every block 0..{len(tokens) - 1}")
    grid, prefix = square_grid(tokens[0], n_prefix)
    n_images = len(record["cls_attention"][0])
    if record.get("owner"):
        per_block = [maps_from_owner(owner, prefix) for owner in record["owner"]]
    else:
        per_block = maps_from_kept_indices(record["kept_index"], tokens, prefix, n_images)
    available = [i for i, m in enumerate(per_block) if m is not None]
    if blocks is None:
        blocks = [b for b in default_blocks(tokens) if b in available] or default_blocks(tokens)
    missing = [b for b in blocks if b not in available]
    if missing:
        strategy = record.get("strategy") or "this run"
        raise ValueError(f"blocks {missing}: {strategy} merges tokens there, and the attention file records only "
                         "selected indices; draw merges from a live model (pruning-bench visualize --model ...)")
    leaving = tokens[1:] + [None]  # tokens leaving block b: those entering b + 1, else count the holders
    counts = [leaving[b] if leaving[b] is not None else _holders(record, per_block[b], b) for b in blocks]
    params = record.get("params") or {}
    title = f"{record.get('model', '')} · {record.get('strategy') or 'baseline'} " + \
        ", ".join(f"{k}={v}" for k, v in params.items() if isinstance(v, (int, float, str, bool)))
    return TokenMaps(owner=np.stack([per_block[b][0] for b in blocks]),
                     group_size=np.stack([per_block[b][1] for b in blocks]), grid=grid, blocks=list(blocks),
                     tokens=counts, title=title.strip())


def _holders(record: dict, maps: tuple[np.ndarray, np.ndarray], block: int) -> int:
    """Tokens leaving `block` (the last one): its kept indices, else prefix + distinct patch holders."""
    kept = record["kept_index"][block]
    if kept is not None:
        return int(kept.shape[1])
    owner = maps[0][0]
    n_prefix = int(record["tokens_per_layer"][0]) - owner.shape[0]
    return n_prefix + len(set(owner[owner >= 0].tolist()))


def recorded_images(record: dict) -> np.ndarray | None:
    """The images a file carries itself (`images`: (N, H, W, 3) uint8 as displayed), or None."""
    images = record.get("images")
    if images is None:
        return None
    images = torch.as_tensor(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"`images` in the attention file should be (N, H, W, 3), got {tuple(images.shape)}")
    return (images.float() / 255 if images.dtype == torch.uint8 else images.float()).clamp(0, 1).numpy()


def display_images(dataset: str, root: str | None, indices, size: int, split: str = "test") -> np.ndarray:
    """The evaluation images at `indices` of the stream, shortest side to `size` and centre-cropped, in [0, 1]."""
    from torchvision.transforms import v2

    from ..evaluate.data import DecodedImages, load

    indices = [int(i) for i in indices]
    images = load(dataset, root, split, max(indices) + 1)
    crop = v2.Compose([v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC), v2.CenterCrop(size),
                       v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])
    decoded = DecodedImages(images, crop)
    return torch.stack([decoded[i][0] for i in indices]).permute(0, 2, 3, 1).clamp(0, 1).numpy()
