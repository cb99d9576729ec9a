"""Token maps drawn over the images: one row per image, the input then one panel per chosen block.

Dropped patches are darkened, patches merged into one token share a colour (blended over the
image), tokens that hold a single patch show the image untouched, and a thin line separates
patches held by different tokens.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .maps import TokenMaps

CELL_INCHES = 2.0
TITLE_INCHES = 0.45
DPI = 100
DARKEN = 0.18
BLEND = 0.55


def figure_pixels(n_images: int, n_blocks: int) -> tuple[int, int]:
    """(width, height) of the rendered PNG."""
    return round((n_blocks + 1) * CELL_INCHES * DPI), round((n_images * CELL_INCHES + TITLE_INCHES) * DPI)


def denormalise(images: torch.Tensor, mean, std) -> np.ndarray:
    """Model inputs (B, 3, H, W) back to displayable (B, H, W, 3) floats in [0, 1]."""
    mean = torch.as_tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
    return (images.detach().cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def normalisation_of(transform) -> tuple[tuple, tuple] | None:
    """Mean and std of the Normalize step inside a (possibly nested) torchvision transform, or None."""
    if hasattr(transform, "mean") and hasattr(transform, "std"):
        return tuple(map(float, transform.mean)), tuple(map(float, transform.std))
    for step in getattr(transform, "transforms", []):
        found = normalisation_of(step)
        if found is not None:
            return found
    return None


def _palette(n: int) -> np.ndarray:
    """`n` distinct-looking RGB colours (tab20 then golden-angle hues)."""
    import matplotlib

    base = np.array(matplotlib.colormaps["tab20"].colors)
    if n <= len(base):
        return base[:n]
    hues = (np.arange(n) * 0.618033988749895) % 1.0
    extra = matplotlib.colors.hsv_to_rgb(np.stack([hues, np.full(n, 0.75), np.full(n, 0.95)], axis=1))
    return np.concatenate([base, extra[len(base):]])


def _upsample(per_patch: np.ndarray, grid: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """(P,) values on the patch grid -> (H, W) by nearest patch."""
    rows = np.arange(size[0]) * grid[0] // size[0]
    cols = np.arange(size[1]) * grid[1] // size[1]
    return per_patch.reshape(grid)[rows[:, None], cols[None, :]]


def overlay(image: np.ndarray, owner: np.ndarray, group_size: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """One panel: `image` (H, W, 3) with dropped patches dark, merged groups coloured, token borders drawn."""
    size = image.shape[:2]
    owner_px = _upsample(owner, grid, size)
    size_px = _upsample(group_size, grid, size)
    out = image.copy()
    out[owner_px < 0] *= DARKEN
    merged = size_px > 1
    if merged.any():
        colours = _palette(int(owner.max()) + 1)
        out[merged] = (1 - BLEND) * out[merged] + BLEND * colours[owner_px[merged]]
    border = np.zeros(size, bool)
    border[:, 1:] |= owner_px[:, 1:] != owner_px[:, :-1]
    border[1:, :] |= owner_px[1:, :] != owner_px[:-1, :]
    out[border] = 0.5 * out[border] + 0.5
    return out


def render_token_maps(maps: TokenMaps, images: np.ndarray, path, *, title: str | None = None) -> Path:
    """Write the grid PNG to `path`; `images` are (B, H, W, 3) in [0, 1], one per map image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(images) != maps.n_images:
        raise ValueError(f"{len(images)} images for {maps.n_images} token maps")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n_cols = len(maps.blocks) + 1
    width, height = figure_pixels(maps.n_images, len(maps.blocks))
    fig, axes = plt.subplots(maps.n_images, n_cols, figsize=(width / DPI, height / DPI), dpi=DPI, squeeze=False)
    top = 1 - TITLE_INCHES / (height / DPI)
    fig.subplots_adjust(left=0.005, right=0.995, bottom=0.005, top=top, wspace=0.03, hspace=0.1)
    patches = maps.grid[0] * maps.grid[1]
    for row, image in enumerate(images):
        axes[row, 0].imshow(image)
        for col, block in enumerate(maps.blocks, start=1):
            owner, group = maps.owner[col - 1, row], maps.group_size[col - 1, row]
            axes[row, col].imshow(overlay(image, owner, group, maps.grid))
            if row == 0:
                axes[row, col].set_title(f"after block {block}: {maps.tokens[col - 1]} tokens", fontsize=8)
            kept = int((owner >= 0).sum())
            groups = len(np.unique(owner[owner >= 0]))
            note = f"{kept}/{patches} patches" if groups == kept else f"{groups} tokens hold {kept} patches"
            axes[row, col].text(0.02, 0.02, note, transform=axes[row, col].transAxes, fontsize=6, color="white",
                                bbox=dict(facecolor="black", alpha=0.5, pad=1, linewidth=0))
        if row == 0:
            axes[row, 0].set_title("input", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(title if title is not None else maps.title, fontsize=9, y=1 - 0.1 * TITLE_INCHES / (height / DPI),
                 va="top")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path
