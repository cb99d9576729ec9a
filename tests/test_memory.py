"""Peak inference memory: exact on a layer whose tensors are known, and what pruning does to it."""
import copy
import warnings

import torch

import pruning_bench as pb
from conftest import tiny_open_clip, tiny_timm


def test_a_linear_layer_peaks_at_its_weights_and_output():
    layer = torch.nn.Linear(100, 300)
    m = pb.measure_memory(layer, torch.randn(16, 100))
    assert m.parameter_bytes == (100 * 300 + 300) * 4
    assert m.activation_bytes == 16 * 300 * 4  # the output is the only tensor the forward makes
    assert m.total_bytes == m.parameter_bytes + m.activation_bytes and m.batch_size == 16


def test_clip_counts_the_image_tower_only():
    model = tiny_open_clip()
    m = pb.measure_memory(model, torch.randn(2, 3, 32, 32))
    assert m.parameter_bytes == sum(p.numel() * 4 for p in model.visual.parameters())


def test_structured_pruning_removes_weights_and_token_pruning_keeps_them():
    model, images = tiny_timm(), torch.randn(4, 3, 32, 32)
    base = pb.measure_memory(model, images)
    with pb.prune(copy.deepcopy(model), "head_prune", head_ratio=0.5, mlp_ratio=0.5) as h:
        sliced = pb.measure_memory(h.model, images)
    params_after = h.stats()["vit_parameters"]["after"]
    assert sliced.parameter_bytes < base.parameter_bytes
    assert base.parameter_bytes - sliced.parameter_bytes == (h.stats()["vit_parameters"]["before"] - params_after) * 4
    with pb.prune(copy.deepcopy(model), "cls_topk", keep=8, start_layer=0) as h:
        pruned = pb.measure_memory(h.model, images)
    assert pruned.parameter_bytes == base.parameter_bytes and pruned.activation_bytes < base.activation_bytes


def test_a_reducing_block_does_not_hold_queries_and_keys_through_its_mlp():
    """ToMe reduces in every block; once q and k were freed before the MLP, its peak stays at or below
    the unpruned model's (it held them, and rose above it, before)."""
    model, images = tiny_timm(depth=2), torch.randn(8, 3, 32, 32)
    base = pb.measure_memory(model, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(copy.deepcopy(model), "tome", r=1) as h:
            merged = pb.measure_memory(h.model, images)
    assert merged.activation_bytes <= base.activation_bytes
