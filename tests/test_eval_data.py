"""Reading CLIP_benchmark's local webdataset layout and the packaged sample images."""
import numpy as np
import pytest
import torch

from pruning_bench.evaluate import data
from colour_webdataset import write_colour_webdataset


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_colour_webdataset(tmp_path_factory.mktemp("wds"), n_train=20, n_test=9, classes=3, shards=3)


def test_prefix_spans_shards_in_order_and_is_class_balanced(root):
    images = data.load("wds/colours", str(root), "train", 12)
    assert len(images) == 12 and images.labelled
    assert images.keys == [f"train_{i:05d}" for i in range(12)]  # shard 0 then shard 1: stream order kept
    assert images.class_counts() == {0: 4, 1: 4, 2: 4}
    assert images.classnames == ["colour0", "colour1", "colour2"]
    assert data.load("wds/colours", str(root), "test").describe()["images"] == 9


def test_root_template_and_missing_split(root):
    template = str(root.parent / "{dataset}")
    renamed = root.parent / "colours"
    if not renamed.exists():
        renamed.symlink_to(root)
    assert len(data.load("wds/colours", template, "test", 3)) == 3
    with pytest.raises(FileNotFoundError):
        data.load("wds/colours", str(root), "validation", 3)
    with pytest.raises(ValueError, match="dataset_root"):
        data.load("wds/colours", None, "test")
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("no_such_thing", None, "test")


def test_loader_decodes_batches_with_labels(root):
    images = data.load("wds/colours", str(root), "test", 6)
    from torchvision.transforms import v2

    transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    batches = list(data.loader(images, transform, 4))
    assert [x.shape for x, _ in batches] == [torch.Size([4, 3, 32, 32]), torch.Size([2, 3, 32, 32])]
    labels = torch.cat([y for _, y in batches])
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    red = batches[0][0][0].mean(dim=(1, 2))  # class 0 is red
    assert red[0] > red[1] and red[0] > red[2]


def test_shuffled_loader_is_seeded(root):
    images = data.load("wds/colours", str(root), "train")
    order = lambda seed: torch.cat([y for _, y in data.loader(images, np.array, 5, shuffle=True, seed=seed)])
    assert torch.equal(order(3), order(3)) and not torch.equal(order(3), order(4))


def test_packaged_sample_images_are_natural_photos():
    images = data.load(data.SAMPLE_IMAGES, None, "test")
    assert len(images) >= 2 and not images.labelled
    assert all(len(b) > 10_000 for b in images.encoded)  # real JPEG photographs, not icons
    assert data.available_splits(data.SAMPLE_IMAGES, None) == ["test"]
