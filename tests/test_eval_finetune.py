"""`--task finetune`: the strategy stays active while training; a fixed seed gives the same run twice."""
import json

from pruning_bench.cli import main
from colour_webdataset import write_colour_webdataset


def finetune(tmp_path, root, name, *extra):
    out = tmp_path / name
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
            "--model_arg", "patch_size=8", "--model_arg", "depth=2", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3", "--dataset", "wds/colours", "--dataset_root", str(root),
            "--task", "finetune", "--epochs", "1", "--batch_size", "4", "--lr", "1e-3", "--seed", "7",
            "--throughput_repeats", "1", "--efficiency_batch_size", "2",
            "--output", str(out / "{dataset}_{task}_{pruning}.json"), *extra]
    assert main(argv) == 0
    (path,) = out.glob("*.json")
    return json.loads(path.read_text())


def test_finetune_with_pruning_is_reproducible(tmp_path, capsys):
    root = write_colour_webdataset(tmp_path / "wds", n_train=12, n_test=6, classes=3)
    pruned = ["--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=3"]
    first = finetune(tmp_path, root, "a", *pruned)
    second = finetune(tmp_path, root, "b", *pruned)
    assert "epoch 1/1" in capsys.readouterr().err  # progress bar
    strip = lambda m: {k: v for k, v in m.items() if not k.startswith("seconds")}
    assert strip(first["metrics"]) == strip(second["metrics"])
    m = first["metrics"]
    assert len(m["train_loss"]) == 1 and len(m["seconds_per_epoch"]) == 1 and m["seconds_per_epoch"][0] > 0
    assert 0 <= m["acc1"] <= 1 and m["gmacs"] == first["efficiency"]["gmacs"]
    assert first["efficiency"]["tokens_per_layer"] == [17, 14]  # merging during training and testing
    assert first["pruning"]["params"]["r"] == 3 and first["training"]["head"] == "new linear head, 3 classes"
    baseline = finetune(tmp_path, root, "c")
    assert baseline["efficiency"]["gmacs"] > m["gmacs"]
    assert baseline["metrics"]["train_loss"] != m["train_loss"]  # merging changed the training itself
    other_seed = finetune(tmp_path, root, "d", "--seed", "8")  # the later --seed wins
    assert other_seed["metrics"]["train_loss"] != baseline["metrics"]["train_loss"]
    from pruning_bench.report.uncertainty import unpack_correct

    for run in (first, baseline):  # per-image correctness after the last epoch, so a pair gets a paired interval
        correct = unpack_correct(run["per_image"]["correct"], run["per_image"]["n"])
        assert len(correct) == 6 and correct.mean() == run["metrics"]["acc1"]


def test_finetune_of_exactly_ten_steps_runs(tmp_path):
    """10 optimiser steps: torch's OneCycleLR at pct_start 0.1 would end its warm-up at step 0."""
    root = write_colour_webdataset(tmp_path / "wds", n_train=40, n_test=4, classes=2)
    result = finetune(tmp_path, root, "ten")
    assert len(result["metrics"]["train_loss"]) == 1 and result["metrics"]["acc1"] == result["metrics"]["acc1"]


def test_one_cycle_schedule_for_every_short_run():
    import torch

    from pruning_bench.evaluate.finetune import one_cycle

    for steps in range(1, 41):
        optimiser = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        schedule = one_cycle(optimiser, 0.1, steps)
        rates = []
        for _ in range(steps):
            rates.append(optimiser.param_groups[0]["lr"])
            optimiser.step()
            schedule.step()
        assert 0.09 < max(rates) <= 0.1 + 1e-12, steps  # the peak is (about) reached, never passed
        if steps >= 3:
            assert rates[0] < 0.1 and rates[-1] < rates[rates.index(max(rates))], steps  # warm-up, then anneal
