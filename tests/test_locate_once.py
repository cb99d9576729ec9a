"""Drivers locate a model's family once and pass it down: counting, matching and measuring a model ask
the adapters once per public call, however many trials and forwards they run."""
import warnings

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

import pruning_bench as pb
from pruning_bench.families import ADAPTERS, locate
from pruning_bench.measure.run_efficiency import measure


@pytest.fixture
def locates(monkeypatch):
    """How many times `families.locate` ran: every call starts by asking the first registered adapter."""
    first = ADAPTERS[0]
    original = first.locate.__func__
    calls = []

    def counted(cls, model):
        calls.append(model)
        return original(cls, model)

    monkeypatch.setattr(first, "locate", classmethod(counted))
    return calls


def tiny():
    torch.manual_seed(0)
    return VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=0).eval()


def test_counting_locates_once(locates):
    pb.count_flops(tiny(), torch.randn(2, 3, 32, 32))
    assert len(locates) == 1


def test_matching_locates_once_for_every_trial(locates):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        params = pb.match_macs(tiny(), "tome", 0.8, torch.randn(1, 3, 32, 32), per_block=False)
    assert "r" in params and len(locates) == 1


def test_measuring_a_pruned_model_with_its_family_locates_nothing_more(locates):
    model = tiny()
    with pb.prune(model, "tome", r=2) as handle:
        assert len(locates) == 1
        family = locate(model)
        located = len(locates)
        record = measure(model, torch.randn(2, 3, 32, 32), device="cpu", amp=False, repeats=1, handle=handle,
                         progress=False, family=family)
    assert len(locates) == located and record["tokens_per_layer"] == [17, 15, 13]
