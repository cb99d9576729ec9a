"""Images for `pruning-bench eval`, kept encoded in memory and decoded batch by batch.

Sources:
- `wds/<name>` with a root in CLIP_benchmark's local webdataset layout: `<root>/<split>/{0..n-1}.tar`
  (count in `nshards.txt`), samples `<key>.{jpg,jpeg,png,webp}` + `<key>.cls`, `classnames.txt`
  beside the splits. Shards are read in order and only until `n` samples are complete, so the first
  n samples of a class-interleaved stream (as CLIP_benchmark's exports are) are class-balanced;
  the class counts are kept so a result can show it.
- `sample_images`: the natural photographs that ship inside installed dependencies (scikit-learn's
  two sample images, matplotlib's portrait), unlabelled: enough for a label-free fidelity check
  when no data set is around.
- a directory: every image file below it, sorted, unlabelled.

Only the encoded bytes stay in memory (CIFAR-10's 60,000 JPEGs take ~150 MB), so a training set can be
shuffled and re-read each epoch without holding decoded 224 px tensors.
"""
from __future__ import annotations

import io
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")
SAMPLE_IMAGES = "sample_images"


@dataclass
class ImageSet:
    """Encoded images of one split, with integer labels when the source has them."""

    name: str
    split: str
    encoded: list[bytes]
    labels: np.ndarray | None = None
    classnames: list[str] | None = None
    keys: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.encoded)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def class_counts(self) -> dict[int, int]:
        if self.labels is None:
            return {}
        values, counts = np.unique(self.labels, return_counts=True)
        return {int(v): int(c) for v, c in zip(values, counts)}

    def head(self, n: int) -> "ImageSet":
        """The first `n` samples (a class-balanced prefix for interleaved sources)."""
        return ImageSet(self.name, self.split, self.encoded[:n], None if self.labels is None else self.labels[:n],
                        self.classnames, self.keys[:n], self.source)

    def describe(self) -> dict:
        counts = self.class_counts()
        return {
            "name": self.name, "split": self.split, "images": len(self), "source": self.source,
            "classes": len(self.classnames) if self.classnames else (len(counts) or None),
            "images_per_class": {"min": min(counts.values()), "max": max(counts.values())} if counts else None,
        }


class DecodedImages(torch.utils.data.Dataset):
    """Decodes and transforms one image per item (what a DataLoader batches)."""

    def __init__(self, images: ImageSet, transform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.images.encoded[index])) as image:
                pixels = self.transform(image.convert("RGB"))
        except (OSError, SyntaxError) as exc:  # PIL: UnidentifiedImageError, truncated data, broken chunks
            key = self.images.keys[index] if index < len(self.images.keys) else f"#{index}"
            raise ValueError(f"image {key} of {self.images.source or self.images.name} cannot be decoded "
                             f"({type(exc).__name__}: {exc})") from None
        label = -1 if self.images.labels is None else int(self.images.labels[index])
        return pixels, label


def loader(images: ImageSet, transform, batch_size: int, *, shuffle: bool = False, seed: int = 0,
           workers: int = 0) -> torch.utils.data.DataLoader:
    """Batches of (images, labels); unlabelled images carry label -1. Shuffling is seeded."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return torch.utils.data.DataLoader(DecodedImages(images, transform), batch_size=batch_size, shuffle=shuffle,
                                       generator=generator, num_workers=workers)


# ---------------------------------------------------------------- webdataset layout


def _shards(root: Path, split: str) -> list[Path]:
    folder = root / split
    if not folder.is_dir():
        raise FileNotFoundError(f"no split {split!r} under {root} (expected {folder}/0.tar ...)")
    count_file = folder / "nshards.txt"
    if count_file.is_file():
        shards = [folder / f"{i}.tar" for i in range(int(count_file.read_text().strip()))]
    else:  # numeric order when the names are numbers, else by name
        shards = sorted(folder.glob("*.tar"), key=lambda p: (not p.stem.isdigit(), int(p.stem) if p.stem.isdigit() else 0, p.name))
    missing = [str(p) for p in shards if not p.is_file()]
    if missing or not shards:
        raise FileNotFoundError(f"webdataset shards missing under {folder}: {missing or 'no *.tar'}")
    return shards


def _split_name(member: str) -> tuple[str, str]:
    """(key, extension) by the webdataset convention: the extension starts at the basename's first dot."""
    directory, base = os.path.split(member)
    stem, _, ext = base.partition(".")
    return os.path.join(directory, stem), ext.lower()


def _samples(shards: list[Path]):
    """Yield (key, {extension: bytes}) in stream order, one complete sample at a time."""
    for shard in shards:
        key, parts = None, {}
        with tarfile.open(shard, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name, ext = _split_name(member.name)
                if name != key:
                    if parts:
                        yield key, parts
                    key, parts = name, {}
                parts[ext] = tar.extractfile(member).read()
        if parts:
            yield key, parts


def _read_lines(path: Path) -> list[str] | None:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else None


def read_webdataset(root, split: str, n: int | None = None, name: str | None = None) -> ImageSet:
    """The first `n` (all when None) image samples of `<root>/<split>`."""
    root = Path(root)
    encoded, labels, keys = [], [], []
    for key, parts in _samples(_shards(root, split)):
        image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
        if image is None:
            continue
        encoded.append(image)
        keys.append(key)
        labels.append(int(parts["cls"].decode().strip()) if "cls" in parts else None)
        if n is not None and len(encoded) >= n:
            break
    if not encoded:
        raise ValueError(f"no images in {root / split}")
    has_labels = all(label is not None for label in labels)
    return ImageSet(
        name=name or root.name, split=split, encoded=encoded,
        labels=np.asarray(labels, dtype=np.int64) if has_labels else None,
        classnames=_read_lines(root / "classnames.txt"), keys=keys, source=str(root / split),
    )


def has_split(root, split: str) -> bool:
    return (Path(root) / split).is_dir()


# ---------------------------------------------------------------- other sources


def packaged_image_files() -> list[Path]:
    """Natural photographs shipped inside installed dependencies (no download)."""
    files = []
    try:
        from importlib.resources import files as resource_files

        folder = resource_files("sklearn.datasets.images")
        files += sorted(Path(str(folder / name)) for name in ("china.jpg", "flower.jpg"))
    except ModuleNotFoundError:
        pass
    try:
        from matplotlib import cbook

        files.append(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    except (ImportError, OSError, ValueError):
        pass
    return [f for f in files if f.is_file()]


def read_files(files: list[Path], name: str, source: str, n: int | None = None) -> ImageSet:
    files = files[:n] if n is not None else files
    if not files:
        raise ValueError(f"no image files found for {name} ({source})")
    encoded = [f.read_bytes() for f in files]
    for path, data in zip(files, encoded):
        unreadable_image(path, data)
    return ImageSet(name=name, split="test", encoded=encoded, keys=[f.name for f in files], source=source)


def unreadable_image(path, data: bytes) -> None:
    """A ValueError naming `path` when its bytes are not an image PIL can read (checked before any model work)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError, truncated or corrupt data
        reason = "no image format PIL knows" if type(exc).__name__ == "UnidentifiedImageError" else str(exc)
        raise ValueError(f"{path} is not a readable image ({type(exc).__name__}: {reason})") from None


def image_files(folder) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS)


def dataset_root(template: str, dataset: str) -> str:
    """CLIP_benchmark's `--dataset_root` template: `{dataset}` and `{dataset_cleaned}` are filled in."""
    name = dataset[len("wds/"):] if dataset.startswith("wds/") else dataset
    return template.format(dataset=name, dataset_cleaned=name.replace("/", "-"))


def load(dataset: str, root: str | None, split: str, n: int | None = None) -> ImageSet:
    """Images of `dataset` (`wds/<name>`, `sample_images` or a directory) for `split`."""
    if dataset == SAMPLE_IMAGES:
        if split != "test":
            raise FileNotFoundError(f"{SAMPLE_IMAGES} has only a test split")
        return read_files(packaged_image_files(), SAMPLE_IMAGES, "images shipped with scikit-learn and matplotlib", n)
    if dataset.startswith("wds/"):
        if not root:
            raise ValueError(f"{dataset} needs --dataset_root (the folder holding train/ and test/)")
        return read_webdataset(dataset_root(root, dataset), split, n, name=dataset)
    if os.path.isdir(dataset):
        if split != "test":
            raise FileNotFoundError(f"an image folder has only a test split: {dataset}")
        return read_files(image_files(dataset), os.path.basename(os.path.normpath(dataset)), dataset, n)
    raise ValueError(f"unknown dataset {dataset!r}: use wds/<name> with --dataset_root, {SAMPLE_IMAGES}, "
                     "or a folder of images")


def available_splits(dataset: str, root: str | None) -> list[str]:
    if dataset.startswith("wds/") and root:
        base = dataset_root(root, dataset)
        return [s for s in ("train", "test") if has_split(base, s)]
    return ["test"]
