"""Feature fidelity: cosine similarity and MSE of pruned against unpruned image features."""
import math

import pytest
import torch

from pruning_bench.measure.fidelity import FidelityMeter, feature_fidelity, image_features, measure_fidelity


def test_identical_features_are_perfect():
    f = torch.randn(5, 16)
    result = feature_fidelity(f, f.clone())
    assert result["cosine_mean"] == pytest.approx(1.0) and result["cosine_min"] == pytest.approx(1.0)
    assert result["mse"] == 0.0 and result["relative_mse"] == 0.0 and result["images"] == 5


def test_values_by_hand():
    ref = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    out = torch.tensor([[0.0, 1.0], [6.0, 8.0]])
    result = feature_fidelity(ref, out)
    assert result["cosine_mean"] == pytest.approx(0.5)  # orthogonal (0) and parallel (1)
    assert result["cosine_min"] == pytest.approx(0.0)
    assert result["mse"] == pytest.approx((1 + 1 + 9 + 16) / 4)
    assert result["relative_mse"] == pytest.approx(27 / 26)


def test_batches_accumulate_like_one_set():
    torch.manual_seed(0)
    ref, out = torch.randn(10, 8), torch.randn(10, 8)
    meter = FidelityMeter()
    for i in range(0, 10, 3):
        meter.update(ref[i:i + 3], out[i:i + 3])
    whole = feature_fidelity(ref, out)
    assert meter.result() == pytest.approx(whole)


def test_bad_input():
    with pytest.raises(ValueError, match="feature shapes differ"):
        feature_fidelity(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="no features compared"):
        FidelityMeter().result()


def test_measure_fidelity_on_pruned_models(family, images):
    _, model, run = family
    state = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [images[:4], (images[4:], torch.zeros(4))]
    with pytest.warns(UserWarning):
        same = measure_fidelity(model, batches, "head_prune", head_ratio=0, mlp_ratio=0)
    assert same["cosine_mean"] == pytest.approx(1.0) and same["mse"] == 0.0 and same["images"] == 8
    heads = measure_fidelity(model, batches, "head_prune", head_ratio=0.5, mlp_ratio=0.5)
    drop = measure_fidelity(model, batches, [("layer_drop", {"drop": [1, 2]})])
    for result in (heads, drop):
        assert -1 <= result["cosine_min"] <= result["cosine_mean"] < 1
        assert result["mse"] > 0 and math.isfinite(result["relative_mse"])
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(image_features(model, images), run(model, images))
