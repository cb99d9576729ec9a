"""Test fixtures: a tiny webdataset and a small CLIP, offline (the tests and the robustness battery use them).

`write_webdataset` writes clip_benchmark's local webdataset layout (train/ and test/ shards,
classnames and templates, or captions and dataset_type.txt for retrieval) with random images.
`register_tiny_clip` adds a small open_clip config (ViT image tower, 32x32 images) to open_clip's
registry of the current process, so `load_clip(..., model_name=TINY_CLIP, pretrained='')` works.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np

TINY_CLIP = "pb-tiny-vit"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 4, "width": 64, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_shard(path: Path, samples: list[dict[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for i, sample in enumerate(samples):
            for ext, data in sample.items():
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def write_webdataset(root, *, classes=("cat", "dog", "car"), n_test=6, n_train=6, image_size=32,
                     retrieval=False, seed=0) -> Path:
    """A class-interleaved webdataset with random images under `root`; returns `root`."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, n in (("test", n_test), ("train", n_train)):
        (root / split).mkdir(parents=True, exist_ok=True)
        samples = []
        for i in range(n):
            label = i % len(classes)
            sample = {"png": _png(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))}
            if retrieval:
                sample["txt"] = f"a photo of a {classes[label]}\na {classes[label]} in a picture".encode()
            else:
                sample["cls"] = str(label).encode()
            samples.append(sample)
        _write_shard(root / split / "0.tar", samples)
        (root / split / "nshards.txt").write_text("1")
    if retrieval:
        (root / "dataset_type.txt").write_text("retrieval")
    else:
        (root / "classnames.txt").write_text("\n".join(classes))
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na picture of a {c}.")
    return root


def register_tiny_clip(directory) -> str:
    """Write the tiny config to `directory` and register it with open_clip; returns its model name."""
    import open_clip

    path = Path(directory) / f"{TINY_CLIP}.json"
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(os.fspath(path))
    return TINY_CLIP
