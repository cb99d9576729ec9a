"""A family registered from outside the package: a toy ViT-like model, its adapter beside it, and every
registered strategy passing the same contract checks as the built-in families (`test_contract.py`).

The toy names its parts unlike any supported library (`to_q`/`to_k`/`to_v`/`to_out`, `ffn.up`/`ffn.down`,
`ln_a`/`ln_b`, blocks in `layers`), so nothing outside its adapter can know them: if a patch, a slicer,
a statistic or a counter probed attribute names instead of asking the adapter, these tests fail.
"""
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pruning_bench as pb
from pruning_bench.families import ADAPTERS, Family, locate, register_family
from pruning_bench.families.attention import QkvAttentionView
from pruning_bench.families.base import BlockLayout, linear_macs
from pruning_bench.families.dims import VitDims
from pruning_bench.families.mlp import MlpView
from pruning_bench.errors import UnsupportedModelError
from test_contract import check_example, check_keep_all, check_restore_after_exception


# ---------------------------------------------------------------- the toy model (another library's, say)


class ToyAttention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.head_width = heads, dim // heads
        self.to_q, self.to_k, self.to_v, self.to_out = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = (p(x).reshape(B, N, -1, self.head_width).transpose(1, 2) for p in (self.to_q, self.to_k, self.to_v))
        return self.to_out(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1))


class ToyFeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.down(F.gelu(self.up(x)))


class ToyBlock(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.ln_a, self.attention, self.ln_b, self.ffn = nn.LayerNorm(dim), ToyAttention(dim, heads), nn.LayerNorm(dim), ToyFeedForward(dim, 3 * dim)

    def forward(self, x):
        x = x + self.attention(self.ln_a(x))
        return x + self.ffn(self.ln_b(x))


class ToyViT(nn.Module):
    """Patches of 4 px, a class token, learned positions, pre-norm blocks, a linear classifier on the class token."""

    def __init__(self, image=32, patch=4, dim=48, depth=4, heads=4, classes=10):
        super().__init__()
        self.image, self.patch = image, patch
        self.embed = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, (image // patch) ** 2 + 1, dim))
        self.layers = nn.ModuleList(ToyBlock(dim, heads) for _ in range(depth))
        self.norm, self.classifier = nn.LayerNorm(dim), nn.Linear(dim, classes)

    def pooled(self, images):
        x = self.embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)[:, 0]

    def forward(self, images):
        return self.classifier(self.pooled(images))


# ---------------------------------------------------------------- its adapter, as a user would write it


class ToyFamily(Family):
    name = "toy"
    label = "ToyViT (registered by the tests)"

    @classmethod
    def locate(cls, model):
        return cls(model, model, model) if isinstance(model, ToyViT) else None

    @property
    def blocks_owner(self):
        return self.core, "layers"

    @property
    def n_prefix(self):
        return 1

    @classmethod
    def block_layout(cls, block):
        if not isinstance(block, ToyBlock):
            raise UnsupportedModelError(f"not a ToyBlock: {type(block).__name__}")
        return BlockLayout("ln_a", "attention", (), "ln_b", "ffn", ())

    def attention_view(self, block):
        return QkvAttentionView(block.attention, q="to_q", k="to_k", v="to_v", out="to_out", heads="heads")

    def mlp_view(self, block):
        return MlpView(block.ffn, inputs=("up",), out="down")

    def features(self, images):
        pooled = self.core.pooled(images)
        return pooled, self.core.classifier(pooled)

    def patch_grid(self):
        side = self.core.image // self.core.patch
        return side, side

    def dims(self):
        conv, d = self.core.embed, self.core.embed.out_channels
        return VitDims(family=self.name, embed_dim=d, in_chans=3, patch_size=(self.core.patch,) * 2,
                       image_size=(self.core.image,) * 2, num_prefix_tokens=1,
                       blocks=tuple(self.block_dims(b, d) for b in self.blocks),
                       head_linear_macs=linear_macs(self.core.classifier))


def build():
    torch.manual_seed(0)
    return ToyViT().eval()


def run(model, x):
    return model(x)


@pytest.fixture(scope="module", autouse=True)
def toy_registered():
    """Registered for these tests only, so the package's own adapter list is as it was afterwards."""
    register_family(ToyFamily)
    yield
    ADAPTERS.remove(ToyFamily)


def test_the_toy_is_located_and_unknown_to_the_package_without_its_adapter():
    model = build()
    assert locate(model).name == "toy"
    ADAPTERS.remove(ToyFamily)
    try:
        with pytest.raises(UnsupportedModelError):
            pb.prune(model, "tome", r=2)
    finally:
        register_family(ToyFamily)


STRATEGIES = pb.list_strategies()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_passes_the_contract_on_an_outside_family(strategy):
    check_example(strategy, build, run)
    check_keep_all(strategy, build, run)
    check_restore_after_exception(strategy, build, run)


def test_structured_statistics_come_from_the_adapter():
    model = build()
    with pb.prune(model, "layer_drop", drop=[2]) as h:
        assert h.stats()["heads_per_layer"] == [4, 4, 4] and h.stats()["mlp_hidden_per_layer"] == [144] * 3
    with pb.prune(model, "head_prune", head_ratio=0.5, mlp_ratio=0.5) as h:
        assert h.stats()["heads_per_layer"] == [2] * 4 and h.stats()["mlp_hidden_per_layer"] == [72] * 4


# Attribute names of supported libraries' attention, MLP and classifier layouts. Only the adapters
# (`families/`) may name them; the saved formats of one library (`saved/timm_vit.py` writes timm's own
# constructor arguments) and the reference weights' timm key map (`reference.py`) are that library's.
LAYOUT_NAME = re.compile(r"""["'.](qkv|q_proj|k_proj|v_proj|in_proj_weight|in_proj_bias|out_proj|o_proj|get_classifier|"""
                         r"""QuickGELU|q_bias|k_bias|v_bias|q_norm|k_norm|ln_q|ln_k|logit_scale|head_scale|ln_inner|"""
                         r"""c_fc|c_proj|fc1|fc2|fc1_g|fc1_x|gate_proj|up_proj)\b""")
LIBRARY_FORMATS = {"saved/timm_vit.py", "reference.py"}


def test_no_module_outside_the_adapters_names_a_layout_attribute():
    package = Path(pb.__file__).parent
    found = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative.startswith("families/") or relative in LIBRARY_FORMATS:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LAYOUT_NAME.search(line):
                found.append(f"{relative}:{number}: {line.strip()}")
    assert not found, "\n".join(found)
