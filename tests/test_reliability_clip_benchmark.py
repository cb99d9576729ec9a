"""`clip_benchmark eval --enable_pruning` under faults and edge cases: nothing lost, nothing silent."""
import json
import shutil
import sys
import warnings

import pytest
from clip_benchmark import cli

import tiny_clip as tiny

warnings.filterwarnings("ignore", message=".*shardshuffle.*")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("cbr")
    tiny.write_webdataset(root / "wds_tiny")
    return {"model": tiny.register_tiny_clip(root), "root": root}


def run(monkeypatch, data, output, *extra, root=None):
    argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", root or str(data["root"] / "wds_tiny"),
            "--model", data["model"], "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "4",
            "--num_workers", "0", "--no_amp", "--quiet", "--output", str(output), *extra]
    monkeypatch.setattr(sys, "argv", argv)
    cli.main()


PRUNE = ["--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=4", "--throughput_repeats", "1"]


def test_output_into_a_missing_nested_folder_is_created_first(monkeypatch, tmp_path, data):
    out = tmp_path / "a" / "b" / "c" / "{pruning}.json"
    run(monkeypatch, data, out, *PRUNE)
    result = json.loads((tmp_path / "a" / "b" / "c" / "cls_topk-keep4-start_layer1.json").read_text())
    assert result["pruning"]["strategy"] == "cls_topk"


def test_attention_output_into_a_missing_folder_leaves_no_empty_result(monkeypatch, tmp_path, data):
    attention = tmp_path / "missing" / "deeper" / "att.pt"
    run(monkeypatch, data, tmp_path / "r.json", *PRUNE, "--extract_attention", "--attention_output", str(attention))
    assert attention.stat().st_size > 0
    result = json.loads(next(tmp_path.glob("r_*.json")).read_text())
    assert result["attention_output"] == str(attention)


def test_output_in_an_impossible_place_is_one_line_before_any_model_loads(monkeypatch, tmp_path, data, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    loads = []
    monkeypatch.setattr(cli, "load_clip", lambda *a, **k: loads.append(1))
    with pytest.raises(SystemExit) as exit_info:
        run(monkeypatch, data, blocker / "r.json", *PRUNE)
    assert exit_info.value.code == 2 and not loads
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--output" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("content", ["", '{"dataset": "tiny", "metr'])
def test_skip_existing_reruns_an_incomplete_result_and_says_so(monkeypatch, tmp_path, data, capsys, content):
    target = tmp_path / "cls_topk-keep4-start_layer1.json"
    target.write_text(content)
    run(monkeypatch, data, tmp_path / "{pruning}.json", *PRUNE, "--skip_existing")
    assert json.loads(target.read_text())["metrics"]
    assert "run again" in capsys.readouterr().err
    assert (tmp_path / (target.name + ".incomplete")).read_text() == content


def test_calibration_count_is_in_the_file_name_and_the_root_template_is_followed(monkeypatch, tmp_path, data):
    template_root = str(data["root"] / "wds_{dataset}")  # clip_benchmark's own template, as evaluation reads it
    common = ["--enable_pruning", "--prune_strategy", "layer_drop", "--prune_param", "keep_layers=2",
              "--prune_param", "importance=cosine", "--throughput_repeats", "1"]
    for n in (2, 4):
        run(monkeypatch, data, tmp_path / "{pruning}.json", *common, "--prune_calibration", str(n), root=template_root)
    names = sorted(p.name for p in tmp_path.glob("*.json"))
    assert len(names) == 2 and any("calib2" in n for n in names) and any("calib4" in n for n in names)
    notes = [json.loads((tmp_path / n).read_text())["pruning"]["notes"] for n in names]
    assert any("first 2 images" in " ".join(n) for n in notes) and any("first 4 images" in " ".join(n) for n in notes)


def test_forward_pass_clamps_are_notes_and_a_run_that_prunes_nothing_says_so(monkeypatch, tmp_path, data, capsys):
    # 16 patches: keep=40 is clamped during the first forward, not at attach time
    run(monkeypatch, data, tmp_path / "{pruning}.json", "--enable_pruning", "--prune_strategy", "cls_topk",
        "--prune_param", "keep=40", "--throughput_repeats", "1")
    result = json.loads(next(tmp_path.glob("cls_topk*.json")).read_text())
    pruning = result["pruning"]
    assert any("clamped" in note for note in pruning["notes"]), pruning["notes"]
    assert pruning["effective"] is False
    err = capsys.readouterr().err
    assert "pruned nothing" in err and "torch.jit.script" not in err
    clamp_lines = [line for line in err.splitlines() if "clamped" in line]
    assert len(clamp_lines) == 1  # one line per distinct clamp, not one per block or batch
    # flat scalar keys so that `clip_benchmark build` tells runs apart
    assert result["pruning_slug"] == pruning["slug"] and result["strategy"] == "cls_topk"
    assert result["pruning_effective"] is False and result["gmacs"] == result["efficiency"]["gmacs"]


def test_clip_benchmark_build_gives_one_row_per_run(monkeypatch, tmp_path, data):
    run(monkeypatch, data, tmp_path / "{pruning}.json", "--measure_efficiency", "--throughput_repeats", "1")
    run(monkeypatch, data, tmp_path / "{pruning}.json", *PRUNE)
    csv_path = tmp_path / "bench.csv"
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "build", str(tmp_path), "--output", str(csv_path)])
    cli.main()
    import pandas as pd

    table = pd.read_csv(csv_path)
    assert sorted(table["pruning_slug"]) == ["baseline", "cls_topk-keep4-start_layer1"]
    assert sorted(table["strategy"]) == ["cls_topk", "none"]
    assert table["gmacs"].nunique() == 2
