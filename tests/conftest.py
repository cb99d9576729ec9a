"""Small randomly initialised models of every supported family, built offline in well under a second."""
import os
import sys
import warnings

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

TEXT_CFG = dict(context_length=16, vocab_size=200, width=32, heads=2, layers=1)


def _eval(model):
    torch.manual_seed(0)
    return model.eval()


def tiny_timm(**overrides):
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=10)
    cfg.update(overrides)
    return VisionTransformer(**cfg).eval()


def tiny_open_clip(**vision_overrides):
    from open_clip.model import CLIP

    torch.manual_seed(0)
    vision = dict(image_size=32, patch_size=4, width=64, layers=4, head_width=16)
    vision.update(vision_overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT_CFG).eval()


def timm_trunk_clip():
    from open_clip.model import CLIP

    torch.manual_seed(0)
    vision = dict(image_size=224, timm_model_name="vit_tiny_patch16_224", timm_model_pretrained=False, timm_pool="", timm_proj="linear")
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT_CFG)
    return model.eval()


# name -> (builder, how to run the image tower)
FAMILIES = {
    "timm": (lambda: tiny_timm(), lambda m, x: m(x)),
    "timm_registers_ls_qknorm_avg": (
        lambda: tiny_timm(reg_tokens=4, init_values=0.1, qk_norm=True, global_pool="avg"),
        lambda m, x: m(x),
    ),
    "open_clip": (lambda: tiny_open_clip(), lambda m, x: m.encode_image(x)),
    "open_clip_custom_avg": (
        lambda: tiny_open_clip(qk_norm=True, pool_type="avg", ls_init_value=0.1),
        lambda m, x: m.encode_image(x),
    ),
}


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    build, run = FAMILIES[request.param]
    return request.param, build(), run


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(8, 3, 32, 32)


def pytest_configure(config):
    path = os.environ.get("TOME_REFERENCE_PATH")
    if path and path not in sys.path:
        sys.path.insert(0, path)
