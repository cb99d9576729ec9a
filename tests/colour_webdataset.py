"""Test fixture: a tiny labelled webdataset whose classes any encoder can tell apart (each class has its own colour).

Written in CLIP_benchmark's local layout (train/ and test/ shards, class-interleaved, classnames),
it lets the probe and fine-tuning paths be checked offline where a real data set would be too big:
even a randomly initialised ViT separates flat colours, so a probe must score well on it.
"""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np

COLOURS = ((220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 210, 40))


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_colour_webdataset(root, *, n_train: int = 16, n_test: int = 8, classes: int = 3, image_size: int = 32,
                            noise: int = 30, shards: int = 2, seed: int = 0) -> Path:
    """Class k is colour k plus uniform noise; samples interleave classes (0, 1, 2, 0, ...)."""
    if not 2 <= classes <= len(COLOURS):
        raise ValueError(f"classes={classes} is out of range [2, {len(COLOURS)}]")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("test", n_test)):
        folder = root / split
        folder.mkdir(parents=True, exist_ok=True)
        labels = np.arange(n) % classes
        base = np.asarray(COLOURS, dtype=np.int16)[labels][:, None, None, :]
        pixels = np.clip(base + rng.integers(-noise, noise + 1, (n, image_size, image_size, 3)), 0, 255).astype(np.uint8)
        for shard, index in enumerate(np.array_split(np.arange(n), shards)):
            with tarfile.open(folder / f"{shard}.tar", "w") as tar:
                for i in index:
                    for ext, payload in (("png", _png(pixels[i])), ("cls", str(labels[i]).encode())):
                        info = tarfile.TarInfo(f"{split}_{i:05d}.{ext}")
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        (folder / "nshards.txt").write_text(str(shards))
    (root / "classnames.txt").write_text("\n".join(f"colour{k}" for k in range(classes)))
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.")
    return root
