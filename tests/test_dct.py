"""dct against its algorithm written out one image at a time with scipy's DCT (He et al., ACL 2023, as run by
OpenToMe's timm patch): after each block's MLP the patch tokens go through an orthonormal DCT-II along the
token axis, the r highest frequencies are dropped and an orthonormal inverse DCT of the shorter length gives
T - r tokens; the class token is left alone; r is capped at T // 2; an int r is spread over the blocks by
ToMe's schedule with `inflect`. Plus the schedule, the MAC count with the transform declared, and bad input."""
import pytest
import scipy.fft
import torch

import pruning_bench as pb
from pruning_bench.strategies.dct import LowPassResample, truncation_matrix
from macs_at_scale import check_macs_follow_schedule, tiny_timm


def written_out_schedule(r, inflect, depth):
    """ToMe's parse_r: a list padded with zeros; an int from r (1 - inflect) to r (1 + inflect), truncated."""
    if isinstance(r, list):
        return r + [0] * (depth - len(r))
    low = int(r * (1 - inflect))
    return [int(low + (2 * r - 2 * low) / (depth - 1) * i) for i in range(depth)]


def low_pass(tokens: torch.Tensor, r: int) -> torch.Tensor:
    """(T, C) patch tokens -> (T - r, C): DCT-II over the tokens, keep the lowest T - r, inverse DCT."""
    coefficients = scipy.fft.dct(tokens.numpy(), type=2, norm="ortho", axis=0)[: tokens.shape[0] - r]
    return torch.from_numpy(scipy.fft.idct(coefficients, type=2, norm="ortho", axis=0))


def written_out_forward(model, image, schedule, n_prefix=1):
    x = model.norm_pre(model._pos_embed(model.patch_embed(image[None])))[0]
    for layer, block in enumerate(model.blocks):
        x = x + block.ls1(block.attn(block.norm1(x[None])))[0]
        x = x + block.ls2(block.mlp(block.norm2(x)))
        patches = x.shape[0] - n_prefix
        r = min(schedule[layer], patches // 2)
        if r:
            x = torch.cat([x[:n_prefix], low_pass(x[n_prefix:], r)])
    return model.forward_head(model.norm(x[None]))[0]


def _images(n=2):
    torch.manual_seed(3)
    return torch.randn(n, 3, 32, 32, dtype=torch.float64)


def _peaky(model):
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight.mul_(4.0)
    return model.double()


@pytest.mark.parametrize("params", [{}, {"r": 10, "inflect": 0.0}, {"r": [3, 0, 12, 5]}, {"r": 30, "inflect": 0.0}])
def test_dct_equals_the_algorithm_written_out(params):
    model = _peaky(tiny_timm())
    images = _images()
    full = {"r": 9, "inflect": -0.5, **params}
    schedule = written_out_schedule(full["r"], full["inflect"], 4)
    with torch.no_grad():
        expected = torch.stack([written_out_forward(model, im, schedule) for im in images])
        with pb.prune(model, "dct", **params) as h:
            got = model(images)
    tokens = [65]
    for r in schedule[:-1]:
        tokens.append(tokens[-1] - min(r, (tokens[-1] - 1) // 2))
    assert h.stats()["tokens_per_layer"] == tokens
    assert (got - expected).abs().max() < 1e-12, (got - expected).abs().max()


def test_the_default_schedule_is_opentomes_decreasing_one():
    model = tiny_timm()
    with pb.prune(model, "dct") as h, torch.no_grad():
        model(_images().float())
    # r=9, inflect -0.5 on 4 blocks: 13, 10, 7, 5 tokens removed at the blocks' exits
    assert h.stats()["tokens_per_layer"] == [65, 52, 42, 35]
    assert h.stats()["mlp_tokens_per_layer"] == [65, 52, 42, 35]
    assert h.stats()["out_tokens_per_layer"] == [52, 42, 35, 30]


def test_without_a_class_token_the_whole_sequence_is_transformed():
    model = _peaky(tiny_timm(class_token=False, global_pool="avg"))
    images = _images()
    with torch.no_grad():
        expected = torch.stack([written_out_forward(model, im, [6, 6, 6, 6], n_prefix=0) for im in images])
        with pb.prune(model, "dct", r=6, inflect=0.0) as h:
            got = model(images)
    assert h.stats()["tokens_per_layer"] == [64, 58, 52, 46]
    assert (got - expected).abs().max() < 1e-12


def test_prefix_tokens_pass_unchanged_and_a_constant_sequence_stays_constant():
    torch.manual_seed(0)
    x = torch.randn(2, 3 + 20, 5, dtype=torch.float64)
    x[:, 3:] = x[:, 3:4]  # every patch token equal: only the DC coefficient is non-zero
    out = LowPassResample(20, 14, 3).apply(x)
    assert out.shape == (2, 17, 5)
    assert torch.equal(out[:, :3], x[:, :3])
    # the orthonormal pair keeps the DC coefficient, so the constant comes back scaled by sqrt(T / (T - r))
    assert torch.allclose(out[:, 3:], x[:, 3:4].expand(-1, 14, -1) * (20 / 14) ** 0.5, atol=1e-12)


def test_truncation_matrix_is_scipys_transform_pair():
    torch.manual_seed(0)
    signal = torch.randn(23, 4, dtype=torch.float64)
    assert torch.allclose(truncation_matrix(23, 16) @ signal, low_pass(signal, 7), atol=1e-12)
    assert torch.allclose(truncation_matrix(23, 23), torch.eye(23, dtype=torch.float64), atol=1e-12)


def test_resampled_tokens_take_the_rotary_row_under_their_centre():
    rows = torch.arange(2 + 8, dtype=torch.float64)[None, :, None].expand(3, -1, 2)
    out = LowPassResample(8, 3, 2).rotary_rows(rows)
    # centres (i + 1/2) 8 / 3 = 1.33, 4, 6.67 fall in patch tokens 1, 4, 6 (positions 3, 6, 8 after the prefix)
    assert out[0, :, 0].tolist() == [0, 1, 3, 6, 8]


def test_dct_macs_include_the_transform():
    def transform(dims, n_in):  # block exit: a (T - 16, T) matrix over the T patch tokens, every channel
        return (n_in - 1 - 16) * (n_in - 1) * dims.embed_dim

    stats = check_macs_follow_schedule("dct", {"r": 16, "inflect": 0.0}, extra_per_block=transform)
    assert stats["tokens_per_layer"] == [197, 181, 165]


def test_dct_warns_when_r_caps_and_when_nothing_is_removed():
    model = tiny_timm()
    with pb.prune(model, "dct", r=40, inflect=0.0) as h, torch.no_grad():
        with pytest.warns(UserWarning, match="more than half of the 64 patch tokens present; capped to 32"):
            model(_images().float())
    assert h.stats()["tokens_per_layer"] == [65, 33, 17, 9]
    with pytest.warns(UserWarning, match="removes no token"):
        pb.prune(model, "dct", r=0).restore()


@pytest.mark.parametrize("params,match", [
    ({"r": -1}, r"r=-1 is out of range \[0, inf\]"),
    ({"r": [2, "x"]}, r"r\[1\] must be an integer"),
    ({"r": [1] * 5}, "r has 5 entries but the model has 4 blocks"),
    ({"inflect": 1.5}, r"inflect=1.5 is out of range \[-1.0, 1.0\]"),
    ({"ratio": 0.5}, "unknown parameter"),
])
def test_dct_bad_parameters(params, match):
    model = tiny_timm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        pb.prune(model, "dct", **params)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(hasattr(m, "_pb_run") for m in model.modules())
