"""Which image patches each surviving token holds after chosen blocks: from a live model or a saved record.

A map gives, for every patch of the input grid (raster order) and every image, the index of the
token that holds it after the block (`owner`, -1 when the patch was dropped) and how many patches
that token holds (`group_size`: 1 for a patch that survives on its own, >1 for a merged group, 0 for
a dropped patch). Prefix tokens (class token, register tokens) are never dropped or merged, so only
the patch columns are kept.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class TokenMaps:
    """Per chosen block: who holds each patch. Arrays are (blocks, images, patches)."""

    owner: np.ndarray
    group_size: np.ndarray
    grid: tuple[int, int]
    blocks: list[int]  # block index after which each map is taken
    tokens: list[int]  # tokens leaving that block (prefix included)
    title: str = ""

    @property
    def n_images(self) -> int:
        return int(self.owner.shape[1])

    def dropped(self) -> np.ndarray:
        return self.owner < 0

    def merged(self) -> np.ndarray:
        return self.group_size > 1


def maps_from_source(source: torch.Tensor, n_prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """(owner, group_size) per patch from a (B, tokens_now, tokens_at_input) 0/1 source map."""
    held = source[:, :, n_prefix:]  # (B, T, P): token t holds patch p
    owner = held.argmax(dim=1)
    kept = held.sum(dim=1) > 0
    size = held.sum(dim=2).gather(1, owner)
    owner = torch.where(kept, owner, torch.full_like(owner, -1))
    size = torch.where(kept, size, torch.zeros_like(size))
    return owner.cpu().numpy().astype(np.int64), size.round().cpu().numpy().astype(np.int64)


def maps_from_owner(owner: torch.Tensor, n_prefix: int) -> tuple[np.ndarray, np.ndarray]:
    """(owner, group_size) per patch from (B, tokens_at_input) holder positions, -1 for dropped tokens."""
    owner = torch.as_tensor(owner).long()
    B, n_in = owner.shape
    source = torch.zeros(B, int(owner.max().item()) + 2, n_in)  # the last row collects dropped tokens
    source.scatter_(1, torch.where(owner < 0, source.shape[1] - 1, owner)[:, None, :], 1.0)
    return maps_from_source(source[:, :-1], n_prefix)


def maps_from_kept_indices(kept_index: list, tokens_per_layer: list[int], n_prefix: int, n_images: int) -> list:
    """(owner, group_size) after every block from per-block kept indices (positions in that block's input).

    A block that selects tokens gives its indices; one that keeps every token gives None. A block whose
    token count falls without indices merged tokens, which a record of indices cannot follow: its
    entry and every later one are None.
    """
    n_in = tokens_per_layer[0]
    position = torch.arange(n_in).expand(n_images, n_in)  # input position of each current token
    out: list = []
    for i, index in enumerate(kept_index):
        n_next = tokens_per_layer[i + 1] if i + 1 < len(tokens_per_layer) else None
        if index is not None:
            position = position.gather(1, torch.as_tensor(index).long())
        elif n_next is not None and n_next < position.shape[1]:
            out += [None] * (len(kept_index) - i)
            break
        source = torch.zeros(n_images, position.shape[1], n_in)
        source.scatter_(2, position[:, :, None], 1.0)
        out.append(maps_from_source(source, n_prefix))
    return out


def patch_grid(model) -> tuple[int, int]:
    """The patch grid of a supported ViT at its image size (its family's answer)."""
    from ..families import locate

    rows, columns = locate(model).patch_grid()
    return int(rows), int(columns)




def default_blocks(tokens_per_layer: list[int], count: int = 4) -> list[int]:
    """`count` blocks spread from the first that reduces tokens to the last block."""
    n = len(tokens_per_layer)
    leaving = tokens_per_layer[1:] + [None]
    reducing = [i for i in range(n - 1) if leaving[i] < tokens_per_layer[i]]
    first = reducing[0] if reducing else 0
    picks = np.linspace(first, n - 1, num=min(count, n - first)).round().astype(int)
    return sorted(set(int(p) for p in picks))


def live_token_maps(model, images: torch.Tensor, strategy: str, params: dict | None = None,
                    blocks: list[int] | None = None, title: str | None = None) -> TokenMaps:
    """Patch `model` with a token strategy, run `images` once with source tracing, and read the maps."""
    import pruning_bench as pb
    from ..families import encode_images
    from ..families import locate_vit

    params = dict(params or {})
    target = locate_vit(model)
    grid = tuple(int(g) for g in target.patch_grid())
    snapshots: dict[int, torch.Tensor] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        handle = pb.prune(model, strategy, **params)
    try:
        run = handle.token_run
        if run is None:
            raise ValueError(f"{strategy} is not a token strategy; token maps show token pruning and merging")
        run.trace_source = True

        def keep(index):
            return lambda _module, _args, _out: snapshots.__setitem__(index, run.source.detach().clone())

        hooks = [b.register_forward_hook(keep(i)) for i, b in enumerate(target.blocks)]
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                encode_images(model, images)
        finally:
            for hook in hooks:
                hook.remove()
            run.trace_source = False
        tokens_in = list(run.stats()["tokens_per_layer"])
    finally:
        handle.restore()
    blocks = default_blocks(tokens_in) if blocks is None else list(blocks)
    bad = [b for b in blocks if not 0 <= b < len(target.blocks)]
    if bad:
        raise ValueError(f"blocks {bad} out of range [0, {len(target.blocks) - 1}]")
    pairs = [maps_from_source(snapshots[b], target.n_prefix) for b in blocks]
    described = ", ".join(f"{k}={v}" for k, v in params.items())
    return TokenMaps(owner=np.stack([p[0] for p in pairs]), group_size=np.stack([p[1] for p in pairs]), grid=grid,
                     blocks=blocks, tokens=[int(snapshots[b].shape[1]) for b in blocks],
                     title=title or f"{strategy} {described}".strip())
