"""`--extract_attention`'s file: each block's class-token attention and kept token indices for the first
images, as `measure.extract_attention` recorded them.

The file (torch.save of a dict) holds:
- `cls_attention`: list over blocks of float32 tensors (N_images, tokens_in): the class token's
  softmax attention over the tokens entering that block, averaged over heads (rows sum to 1;
  for merged tokens the log-size bias is included, as in the forward pass itself).
- `kept_index`: list over blocks of int64 tensors (N_images, tokens_out) with the positions, within
  that block's input, of the tokens it keeps (sorted, class token at 0), or None when the block
  keeps every token or merges tokens instead of selecting them (tome).
- `owner`: list over blocks of int32 tensors (N_images, tokens_at_model_input): for every token that
  entered the first block, the position of the token holding it after that block, -1 once dropped.
  Selection and merging alike, so merges (tome) can be drawn from the file.
- `tokens_per_layer`: tokens entering each block; `layers`: block indices of the lists above
  (positions in the block list as evaluated, so after `layer_drop` they count kept blocks only).
- `image_index`: positions of the images in the evaluation stream (the first N, in order).
- `images`: uint8 (N_images, H, W, 3), the images as the encoder saw them (preprocessed, then
  un-normalised with the model's `image_mean`/`image_std`), or None when the model does not say
  how it normalises.
- `model`, `pretrained`, `dataset`, `task`, `strategy`, `params`: what produced it.
"""
from __future__ import annotations

from typing import Any

import torch

from ..errors import UnsupportedModelError

FORMAT = "pruning-bench cls-attention v2"  # v2 adds `owner`


def displayable(model, images: torch.Tensor, family=None) -> torch.Tensor | None:
    """Preprocessed images back to uint8 (N, H, W, 3) pixels, using the normalisation the model records
    (its family's answer: open_clip records it on the image tower)."""
    from ..families import locate

    try:
        recorded = (family or locate(model)).normalisation()
    except UnsupportedModelError:
        recorded = None
    if recorded is None or images.ndim != 4 or images.shape[1] != 3:
        return None
    mean, std = recorded
    mean = torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    pixels = (images.float().cpu() * std + mean).clamp(0, 1)
    return (pixels * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def attention_file(model, images: torch.Tensor, records: list[dict], tokens: list[int], family=None) -> dict[str, Any]:
    """The per-block lists of the saved file, from the per-block `records` of one recorded forward of `images`
    (`measure.extract_attention.record_attention`) and the tokens entering each block."""
    records = sorted(records, key=lambda r: r["layer"])
    return {
        "format": FORMAT,
        "cls_attention": [r["cls_attention"].float().cpu() for r in records],
        "kept_index": [None if r["kept_index"] is None else r["kept_index"].long().cpu() for r in records],
        "owner": [r["owner"].cpu() for r in records],
        "tokens_per_layer": tokens,
        "layers": [int(r["layer"]) for r in records],
        "image_index": torch.arange(len(images)),
        "images": displayable(model, images, family),
    }


def save(path: str, record: dict[str, Any], info: dict[str, Any]) -> str:
    """Write the attention file atomically (a failed save leaves no partial file behind)."""
    from .atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save({**record, **info}, tmp)
    return path
