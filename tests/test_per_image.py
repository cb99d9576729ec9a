"""Per-image token budgets: a batch padded and masked gives every image exactly what it gives alone.

A small strategy defined here (a third party's, registered like one) keeps, in blocks 1 and 2, the patch
tokens whose class attention is at least the mean over the image's real tokens, so the count differs per
image and the second stage sees the first stage's padding. Checked in float64: outputs equal runs of
each image alone (average pooling, registers, rotary embeddings, in-projection attention), per-image
counts in `h.stats()`, `count_flops` per image with the padded batch's cost beside it, the efficiency
block's spread and padding overhead.
"""
import warnings

import pytest
import torch

import pruning_bench as pb
from conftest import tiny_eva, tiny_open_clip, tiny_timm
from pruning_bench.measure.analytic import analytic_macs
from pruning_bench.registry import register_strategy
from pruning_bench.strategies.cls_topk import cls_attention
from pruning_bench.strategies.per_image import PerImageStrategy, packed


class AboveMean(PerImageStrategy):
    defaults = {"layers": [1, 2]}
    needs_class_token = True
    example_params = None  # a test helper: the contract sweep leaves it alone
    keep_all_params = None

    def plan_block(self, layer, n_tokens, n_prefix, n_layers):
        return (n_tokens - 1 if layer in self.params["layers"] else n_tokens), None

    def reduces_at(self, layer):
        return layer in self.params["layers"]

    def reduce(self, layer, x, probe, n_prefix, n_out, mask=None):
        attention = cls_attention(probe)[:, n_prefix:]
        real = torch.ones_like(attention, dtype=torch.bool) if mask is None else mask[:, n_prefix:]
        mean = (attention * real).sum(1, keepdim=True) / real.sum(1, keepdim=True)
        keep = torch.cat([torch.ones_like(attention[:, :n_prefix], dtype=torch.bool), (attention >= mean) & real], 1)
        B, N = keep.shape
        return packed(torch.arange(N, device=x.device).expand(B, N), keep)




@pytest.fixture(autouse=True)
def _registered():
    """The helper strategy exists only while this module's tests run (other modules sweep the registry)."""
    from pruning_bench import registry

    register_strategy("_test_above_mean")(AboveMean)
    yield
    registry._STRATEGIES.pop("_test_above_mean", None)

def _peaky(model):
    """Sharper attention (q and k weights scaled up) so the kept counts really differ per image."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("qkv.weight", "in_proj_weight")):
                p[: 2 * p.shape[1]] *= 3
    return model.double()


MODELS = {
    "timm_cls": (lambda: tiny_timm(), lambda m, x: m(x)),
    "timm_avg_registers": (lambda: tiny_timm(global_pool="avg", reg_tokens=2), lambda m, x: m(x)),
    "open_clip_avg": (lambda: tiny_open_clip(pool_type="avg"), lambda m, x: m.encode_image(x)),
    "eva_rope_avg": (lambda: tiny_eva(), lambda m, x: m(x)),
}


def _images(batch=6):
    torch.manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, dtype=torch.float64)
    x[::2, :, :8, :8] *= 5  # a bright corner on every other image
    return x


@pytest.mark.parametrize("family", sorted(MODELS))
def test_padded_batch_equals_each_image_alone_in_float64(family):
    build, run = MODELS[family]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = _peaky(build())
    x = _images()
    with torch.no_grad():
        with pb.prune(model, "_test_above_mean") as h:
            together = run(model, x)
            stats = h.stats()
            alone, counts = [], []
            for i in range(len(x)):
                alone.append(run(model, x[i:i + 1]))
                counts.append(h.stats()["tokens_per_image"][0])
    per_image = stats["tokens_per_image"]
    assert len({tuple(c) for c in per_image}) > 1, per_image  # the counts really differ
    assert per_image == counts  # each image keeps in the batch what it keeps alone
    assert stats["tokens_per_layer"] == [max(c) for c in zip(*per_image)]
    torch.testing.assert_close(together, torch.cat(alone), rtol=0, atol=1e-12)


def test_count_flops_counts_each_images_own_tokens_and_reports_the_padding():
    model = _peaky(tiny_timm(global_pool="avg")).float()
    x = _images().float()
    with pb.prune(model, "_test_above_mean") as h:
        count = pb.count_flops(model, x)
        stats = h.stats()  # the batch: count_flops traces it last
        alone = [pb.count_flops(model, x[i:i + 1]).gmacs for i in range(len(x))]
        padded = pb.count_flops(model, x[:2])
    assert count.per_image == pytest.approx(alone, rel=1e-12)
    assert count.gmacs == pytest.approx(sum(alone) / len(alone), rel=1e-12)
    assert len(set(alone)) > 1
    assert count.as_run > count.gmacs and count.padding_overhead > 0  # the batch pads to its longest image
    assert padded.per_image is not None and len(padded.per_image) == 2
    # the analytic formula over each image's own counts, plus the class-attention rows the decision computes:
    # fvcore's per-image mean (norms left out, ~2% at width 64) within 1%
    decision = sum(n * 64 for image in stats["tokens_per_image"] for n in image[1:3]) / len(x)
    formula = analytic_macs(model, stats).total_macs + decision
    matmul = count.macs - sum(v for op, v in count.by_operator.items() if "norm" in op) * 1e9
    assert abs(matmul - formula) / formula < 0.01, (matmul, formula)
    record = count.as_dict()
    assert record["per_image_gmacs"] == count.per_image and record["padding_overhead"] == count.padding_overhead


def test_efficiency_block_has_the_spread_and_the_padding_overhead():
    from pruning_bench.measure.run_efficiency import measure

    model = _peaky(tiny_timm()).float()
    x = _images().float()
    with pb.prune(model, "_test_above_mean") as h:
        record = measure(model, x, device="cpu", amp=False, repeats=1, handle=h, progress=False)
    spread = record["per_image_gmacs"]
    assert spread["min"] < spread["max"] and spread["images"] == len(x)
    assert record["gmacs"] == pytest.approx(spread["mean"])
    assert record["gmacs_as_run"] > record["gmacs"]
    assert record["padding_overhead"] == pytest.approx(record["gmacs_as_run"] / record["gmacs"] - 1)
    assert len(record["tokens_per_layer_mean"]) == 4


def test_a_fixed_count_strategy_reports_no_per_image_fields():
    model = tiny_timm()
    with pb.prune(model, "cls_topk", keep=20) as h:
        count = pb.count_flops(model, _images().float())
        assert "tokens_per_image" not in h.stats()
    assert count.per_image is None and "padding_overhead" not in count.as_dict()


def test_a_compiled_forward_pads_to_the_static_width_and_matches_eager():
    """Compiled fullgraph, per-image counts stay per image: the padding is the strategy's static width, never
    a host read of the counts, and outputs and per-image counts equal the eager (trimmed) forward's."""
    from torch._dynamo.testing import CompileCounter

    model = tiny_timm(global_pool="avg").eval()
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[:128] *= 16
    x = _images().float()
    with pb.prune(model, "ats", prune_layers=[1, 2], keep_rate=0.5) as h:
        counter = CompileCounter()
        compiled = torch.compile(model, backend=counter, fullgraph=True, dynamic=False)
        torch._dynamo.reset()
        with torch.inference_mode():
            got = compiled(x)
            compiled_stats = h.stats()
            want = model(x)
            eager_stats = h.stats()
    assert counter.frame_count == 1
    assert len({tuple(c) for c in eager_stats["tokens_per_image"]}) > 1
    assert compiled_stats["tokens_per_image"] == eager_stats["tokens_per_image"]
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
