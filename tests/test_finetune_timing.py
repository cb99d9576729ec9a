"""Training is timed per step after warm-up, data loading apart, with peak memory; the strategy's seed follows --seed."""
import numpy as np
import pytest
import torch

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.evaluate import finetune
from pruning_bench.evaluate.data import ImageSet
from pruning_bench.evaluate.runner import attach
from pruning_bench.run_config import PruningConfig


def small_sets(tmp_path):
    from pruning_bench.evaluate import data
    from colour_webdataset import write_colour_webdataset

    root = write_colour_webdataset(tmp_path / "wds", n_train=10, n_test=4, classes=2)
    return data.load("wds/colours", str(root), "train"), data.load("wds/colours", str(root), "test")


def transform(image):
    import torchvision.transforms.functional as F

    return F.to_tensor(image.convert("RGB").resize((32, 32)))


def test_steps_timed_after_warmup_with_data_apart_and_peak_memory(tmp_path):
    train, test = small_sets(tmp_path)
    model = tiny_timm()
    finetune.new_head(model, 2, 0)
    was = torch.are_deterministic_algorithms_enabled()
    outcome = finetune.train(model, train, test, transform, finetune.FinetuneConfig(
        epochs=1, batch_size=2, progress=False, warmup_steps=2))
    assert torch.are_deterministic_algorithms_enabled() == was  # switched on for training only
    timing = outcome.timing()
    assert timing["steps"] == 5 and timing["warmup_steps_excluded"] == [0, 1]
    assert len(timing["step_seconds_all"]) == 5 and len(timing["data_seconds_all"]) == 5
    kept = timing["step_seconds_all"][2:]
    assert timing["step_seconds"] == {"min": min(kept), "median": float(np.median(kept)), "max": max(kept)}
    assert timing["train_images_per_second"] == pytest.approx(6 / sum(kept))
    assert timing["train_images_per_second_with_data"] < timing["train_images_per_second"]
    memory = timing["peak_memory"]
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    assert memory["bytes_param"] == parameters and memory["bytes_total"] > 2 * parameters  # + gradients or state
    again = tiny_timm()
    finetune.new_head(again, 2, 0)
    repeat = finetune.train(again, train, test, transform, finetune.FinetuneConfig(
        epochs=1, batch_size=2, progress=False, warmup_steps=2))
    assert repeat.train_loss == outcome.train_loss  # same seed, same run


def test_too_few_steps_for_warmup_are_all_kept_and_said(tmp_path):
    train, test = small_sets(tmp_path)
    model = tiny_timm()
    finetune.new_head(model, 2, 0)
    outcome = finetune.train(model, train, test, transform, finetune.FinetuneConfig(
        epochs=1, batch_size=8, progress=False, warmup_steps=2, measure_memory=False))
    timing = outcome.timing()
    assert timing["steps"] == 2 and timing["warmup_steps_excluded"] == [] and "none excluded" in timing["note"]
    assert timing["peak_memory"] is None


def test_strategy_seed_follows_the_run_seed_unless_given():
    model = tiny_timm()
    config = PruningConfig(enabled=True, strategy="tome", params={"r": 2, "match_fraction": 0.5})
    pruned = attach(model, config, None, seed=9)
    assert pruned.handle.describe()[0]["params"]["seed"] == 9
    pruned.handle.restore()
    config.params["seed"] = 4
    pruned = attach(model, config, None, seed=9)
    assert pruned.handle.describe()[0]["params"]["seed"] == 4
    pruned.handle.restore()
