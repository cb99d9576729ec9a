"""The reporter counts each run once: copies, a file named twice and temporary files are not more runs."""
import json
import shutil

import pytest

from pruning_bench.cli import main
from pruning_bench.report import load_results


def result(path, acc, seed=0, strategy=None):
    data = {"dataset": "wds/cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
            "language": "en", "metrics": {"acc1": acc}, "seed": seed,
            "pruning": {"strategy": strategy, "params": {"r": 2}} if strategy else None,
            "efficiency": {"gmacs": 2.0 if strategy else 4.0, "images_per_second": 10.0, "batch_size": 8}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def results(tmp_path):
    folder = tmp_path / "results"
    result(folder / "base.json", 0.5)
    result(folder / "tome.json", 0.375, strategy="tome")
    return folder


def _skips(caught):
    return [str(w.message) for w in caught]


def test_a_copy_under_another_name_is_one_run(results):
    shutil.copy(results / "tome.json", results / "tome_copy.json")
    (results / "reindented.json").write_text(json.dumps(json.loads((results / "base.json").read_text()), indent=3))
    with pytest.warns(UserWarning) as caught:
        table = load_results([results])
    assert len(table) == 2
    notes = _skips(caught)
    assert any("tome_copy.json has the same content as" in n and "counted once" in n for n in notes), notes
    assert any("reindented.json has the same content as" in n for n in notes), notes


def test_the_same_file_named_twice_is_one_run(results):
    with pytest.warns(UserWarning, match="named again; counted once"):
        table = load_results([results, results / "tome.json", str(results) + "/../results/base.json"])
    assert len(table) == 2


def test_temporary_and_hidden_files_are_not_results(results):
    shutil.copy(results / "tome.json", results / ".tome.json.k3j9x2.tmp.json")
    result(results / ".hidden.json", 0.1, strategy="tome", seed=7)
    with pytest.warns(UserWarning, match="temporary file"):
        table = load_results([results])
    assert len(table) == 2 and set(table["acc1"]) == {0.5, 0.375}


def test_report_command_says_so_and_counts_one_run(results, tmp_path, capsys):
    shutil.copy(results / "tome.json", results / "tome_again.json")
    assert main(["report", str(results), str(results / "tome.json"), "-o", str(tmp_path / "out" / "r")]) == 0
    err = capsys.readouterr().err
    assert "tome_again.json has the same content" in err and "named again" in err
    import pandas as pd

    table = pd.read_csv(tmp_path / "out" / "r.csv")
    assert len(table) == 2
