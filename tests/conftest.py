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


def tiny_eva(**overrides):
    from timm.models.eva import Eva

    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4 * 2 / 3, swiglu_mlp=True,
               scale_mlp=True, use_rot_pos_emb=True, ref_feat_shape=(8, 8), init_values=0.1, num_classes=10)
    cfg.update(overrides)
    return Eva(**cfg).eval()


def tiny_deit_distilled():
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    return VisionTransformerDistilled(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=4, num_classes=10).eval()


def _hf_vision(**extra):
    return dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, image_size=32,
                patch_size=4, **extra)


def tiny_hf_clip(kind="vision"):
    import transformers

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "vision":
            return transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**_hf_vision())).eval()
        if kind == "projection":
            config = transformers.CLIPVisionConfig(**_hf_vision(projection_dim=16))
            return transformers.CLIPVisionModelWithProjection(config).eval()
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
                    bos_token_id=0, eos_token_id=1, pad_token_id=1)
        return transformers.CLIPModel(transformers.CLIPConfig(vision_config=_hf_vision(), text_config=text,
                                                              projection_dim=16)).eval()


def tiny_siglip(kind="vision"):
    import transformers

    torch.manual_seed(0)
    if kind == "vision":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**_hf_vision())).eval()
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100)
    return transformers.SiglipModel(transformers.SiglipConfig(vision_config=_hf_vision(), text_config=text)).eval()


def tiny_open_clip_eva():
    """An open_clip CLIP whose image tower is a timm Eva trunk, as open_clip's EVA02-* configs build it."""
    from open_clip.model import CLIP

    torch.manual_seed(0)
    vision = dict(image_size=224, timm_model_name="eva02_tiny_patch14_224", timm_model_pretrained=False,
                  timm_pool="token", timm_proj="linear")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CLIP(embed_dim=32, vision_cfg=vision, text_cfg=TEXT_CFG).eval()


def _hf_image(model, x):
    from pruning_bench.families import encode_images

    return encode_images(model, x)


def tiny_hf_encoder(kind="dinov2", **extra):
    """transformers DINOv2 / DINOv2 with registers / ViT / DeiT encoders (or the distilled DeiT classifier)."""
    import transformers

    torch.manual_seed(0)
    dims = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=32, patch_size=4, **extra)
    if kind in ("dinov2", "dinov2_registers"):
        registers = kind == "dinov2_registers"
        config = (transformers.Dinov2WithRegistersConfig if registers else transformers.Dinov2Config)(mlp_ratio=4, **dims)
        return (transformers.Dinov2WithRegistersModel if registers else transformers.Dinov2Model)(config).eval()
    if kind == "vit":
        return transformers.ViTModel(transformers.ViTConfig(intermediate_size=256, **dims)).eval()
    config = transformers.DeiTConfig(intermediate_size=256, num_labels=10, **dims)
    return (transformers.DeiTModel(config) if kind == "deit" else transformers.DeiTForImageClassificationWithTeacher(config)).eval()


# families beyond the four above: run by the strategy x family contract tests (tests/test_contract.py)
MORE_FAMILIES = {
    "timm_eva": (lambda: tiny_eva(), lambda m, x: m(x)),
    "timm_deit_distilled": (lambda: tiny_deit_distilled(), lambda m, x: m(x)),
    "hf_clip_vision": (lambda: tiny_hf_clip("vision"), _hf_image),
    "hf_clip_projection": (lambda: tiny_hf_clip("projection"), _hf_image),
    "hf_clip_model": (lambda: tiny_hf_clip("model"), lambda m, x: m.get_image_features(pixel_values=x).pooler_output),
    "hf_siglip_vision": (lambda: tiny_siglip("vision"), _hf_image),
    "hf_siglip_model": (lambda: tiny_siglip("model"), _hf_image),
    "hf_dinov2": (lambda: tiny_hf_encoder("dinov2", layerscale_value=0.1), _hf_image),
    "hf_dinov2_registers_swiglu": (lambda: tiny_hf_encoder("dinov2_registers", num_register_tokens=4, use_swiglu_ffn=True),
                                   _hf_image),
    "hf_vit": (lambda: tiny_hf_encoder("vit"), _hf_image),
    "hf_deit_distilled": (lambda: tiny_hf_encoder("deit_distilled"), lambda m, x: m(pixel_values=x).logits),
}
ALL_FAMILIES = {**FAMILIES, **MORE_FAMILIES}
# the adapter (`Family.name`) each builder's model is located as: every registered adapter needs one
ADAPTER_OF = {"timm": "timm", "timm_registers_ls_qknorm_avg": "timm", "timm_deit_distilled": "timm",
              "open_clip": "open_clip", "open_clip_custom_avg": "open_clip", "timm_eva": "eva",
              "hf_clip_vision": "hf_clip", "hf_clip_projection": "hf_clip", "hf_clip_model": "hf_clip",
              "hf_siglip_vision": "hf_clip", "hf_siglip_model": "hf_clip", "hf_dinov2": "hf_dinov2",
              "hf_dinov2_registers_swiglu": "hf_dinov2_registers", "hf_vit": "hf_vit", "hf_deit_distilled": "hf_deit"}


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


# ---------------------------------------------------------------- the quick subset (pytest -m "not slow")
# Modules whose tests run real commands in new processes, compile, or sweep every strategy over every
# family take most of the suite's time; their tests carry the `slow` marker (as do single tests marked
# in place), so `pytest -m "not slow"` is a smoke subset of well under a minute.
SLOW_MODULES = {
    "test_prune_compare", "test_device_check", "test_contract", "test_compile", "test_clip_benchmark_e2e",
    "test_clip_benchmark_hook", "test_flops", "test_sweep_match_macs", "test_sweep_signals", "test_sweep",
    "test_report", "test_saved_open_clip", "test_plots", "test_reference", "test_families", "test_visionzip",
    "test_clip_benchmark_compat", "test_reliability_prune_compare", "test_saved", "test_clip_benchmark_run",
    "test_schedules", "test_visualize", "test_reliability_sweep_seeds", "test_reliability_bad_input",
    "test_checkpoint", "test_match_macs", "test_reliability_battery", "test_reliability_clip_benchmark",
    "test_hf_encoders", "test_matched_means_matched", "test_researcher_workflow", "test_reliability_kept_results",
    "test_reliability_faults", "test_reliability_saved_files", "test_reliability_sweep_faults", "test_refill_rsst",
    "test_run_identity", "test_saved_reapply", "test_docs_and_flags", "test_outside_family", "test_coverage",
    "test_per_image", "test_token_patches", "test_readme_examples", "test_eval_probe", "test_strategy_declarations",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rsplit(".", 1)[-1] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
