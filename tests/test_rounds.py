"""`--task finetune --rounds N`: each round prunes the last round's fine-tuned compact model; the table says so."""
import json

import pytest

from pruning_bench.cli import main
from pruning_bench.report.rounds import rounds_sections
from colour_webdataset import write_colour_webdataset


def run(tmp_path, *extra):
    root = write_colour_webdataset(tmp_path / "wds", n_train=8, n_test=4, classes=2)
    argv = ["eval", "--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32",
            "--model_arg", "patch_size=8", "--model_arg", "depth=2", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3", "--dataset", "wds/colours", "--dataset_root", str(root),
            "--task", "finetune", "--epochs", "1", "--batch_size", "4", "--seed", "3", "--no_progress",
            "--throughput_repeats", "1", "--efficiency_batch_size", "2",
            "--output", str(tmp_path / "out" / "{pruning}.json"), *extra]
    code = main(argv)
    files = list((tmp_path / "out").glob("*.json"))
    return code, (json.loads(files[0].read_text()) if files else None), files


def test_two_rounds_compound_and_fill_the_round_table(tmp_path):
    code, result, files = run(tmp_path, "--enable_pruning", "--prune_strategy", "head_prune", "--prune_param",
                              "head_ratio=0.34", "--prune_param", "mlp_ratio=0.3", "--prune_param", "scope=layerwise",
                              "--rounds", "2")
    assert code == 0
    first, second = result["rounds"]
    assert [first["round"], second["round"]] == [1, 2]
    # 3 heads -> 2 (34% of 3 rounds to 1) -> 1 (34% of 2 rounds to 1): the ratio applies to what is left
    assert first["heads_per_layer"] == [2, 2] and second["heads_per_layer"] == [1, 1]
    assert first["mlp_hidden_per_layer"] == [134, 134] and second["mlp_hidden_per_layer"] == [94, 94]
    assert second["head_sparsity_per_layer"] == [pytest.approx(2 / 3, abs=1e-4)] * 2
    assert second["parameters"] < first["parameters"] and second["gmacs"] < first["gmacs"]
    assert all(0 <= r["acc1"] <= 1 and r["train_seconds"] > 0 for r in (first, second))
    assert result["efficiency"]["gmacs"] == second["gmacs"]  # the result's own record is the last round
    assert second["train_loss"] != first["train_loss"]
    table = rounds_sections(files)
    assert "| 2 |" in table and "1 1 | 94 94 |" in table and "0.67 / 0.51" in table
    assert main(["report", str(tmp_path / "out"), "-o", str(tmp_path / "report" / "cmp"), "--no-plot"]) == 0
    report = (tmp_path / "report" / "cmp.md").read_text()
    assert "## Prune and fine-tune rounds" in report and table.split("\n", 2)[2] in report  # the same table, in the report


def test_rounds_need_a_structured_strategy(tmp_path, capsys):
    code, _, files = run(tmp_path, "--enable_pruning", "--prune_strategy", "tome", "--rounds", "2")
    assert code == 2 and not files
    assert "--rounds=2" in capsys.readouterr().err
