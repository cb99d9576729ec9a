"""A result file that existed before a run survives that run's failure, whichever writer failed."""
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from pruning_bench.cli import main
import tiny_clip as tiny
from pruning_bench.record.atomic_file import AtomicFile, ResultWriteError

BIN = Path(sys.executable).parent


def _size_limit(n_bytes: int):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))
    return limit


def test_atomic_file_keeps_the_earlier_content_when_the_write_fails(tmp_path):
    target = tmp_path / "r.json"
    target.write_text('{"old": 1}')
    with pytest.raises(TypeError):
        with AtomicFile(target, "w") as handle:
            handle.write('{"new": ')
            json.dump(object(), handle)  # fails half-way, as clip_benchmark's json.dump of a bad value would
    assert target.read_text() == '{"old": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary file left
    with AtomicFile(target, "w") as handle:
        handle.write('{"new": 2}')
    assert json.loads(target.read_text()) == {"new": 2}


def _clip_benchmark(tmp_path, output, *extra, preexec=None):
    data = tiny.write_webdataset(tmp_path / "wds", n_test=4, n_train=0)
    model_dir = tmp_path / "tinyclip"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    command = [str(BIN / "clip_benchmark"), "eval", "--dataset", "wds/tiny", "--dataset_root", str(data),
               "--model", f"local-dir:{model_dir}", "--pretrained", "", "--task", "zeroshot_classification",
               "--batch_size", "2", "--num_workers", "0", "--no_amp", "--quiet", "--output", str(output), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=preexec)


@pytest.mark.slow
@pytest.mark.parametrize("pruned", [False, True], ids=["plain", "pruned"])
def test_clip_benchmark_rerun_past_a_size_limit_keeps_the_earlier_result(tmp_path, pruned):
    extra = ["--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=2", "--throughput_repeats", "1"] \
        if pruned else []
    output = tmp_path / "res" / "r.json"
    first = _clip_benchmark(tmp_path, output, *extra)
    assert first.returncode == 0, first.stderr[-2000:]
    result = next((tmp_path / "res").glob("r*.json"))
    before = result.read_bytes()
    assert json.loads(before)["metrics"]
    again = _clip_benchmark(tmp_path, output, *extra, preexec=_size_limit(64))  # the result is larger
    assert again.returncode == 2, again.stderr[-2000:]
    assert "Traceback" not in again.stderr
    errors = [line for line in again.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and str(result) in errors[0] and "earlier file is kept" in errors[0], again.stderr
    assert result.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [result.name]


TINY = ["--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32", "--model_arg", "patch_size=8",
        "--model_arg", "depth=1", "--model_arg", "embed_dim=48", "--model_arg", "num_heads=3",
        "--dataset", "sample_images", "--task", "fidelity", "--test_samples", "2", "--batch_size", "2",
        "--efficiency_batch_size", "1", "--throughput_repeats", "1", "--no_progress"]


def one_error(capsys, command="eval") -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def test_eval_output_that_is_a_directory_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch):
    from pruning_bench.evaluate import runner

    (tmp_path / "r.json").mkdir()
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["eval", *TINY, "--output", str(tmp_path / "r.json")]) == 2
    line = one_error(capsys)
    assert "--output" in line and "is a directory" in line


@pytest.mark.parametrize("case", ["directory", "folder_under_a_file", "keyword"])
def test_eval_save_model_path_checked_before_the_model_loads(tmp_path, capsys, monkeypatch, case):
    from pruning_bench.evaluate import runner

    (tmp_path / "file").write_text("")
    (tmp_path / "m.safetensors").mkdir()
    path = {"directory": tmp_path / "m.safetensors", "folder_under_a_file": tmp_path / "file" / "m.safetensors",
            "keyword": "none"}[case]
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    assert main(["eval", *TINY, "--output", str(tmp_path / "r.json"), "--save_model", str(path)]) == 2
    assert "--save_model" in one_error(capsys)


def test_eval_save_model_failing_at_the_end_keeps_the_result_with_the_error(tmp_path, capsys, monkeypatch):
    import pruning_bench.saved as saved

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(saved, "save_pruned", full_disk)
    assert main(["eval", *TINY, "--output", str(tmp_path / "r.json"), "--save_model", str(tmp_path / "m.safetensors")]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["metrics"] and "No space left" in result["saved_model"]["error"]
    assert "not saved" in capsys.readouterr().err


@pytest.mark.slow
def test_eval_result_past_a_size_limit_is_one_line_and_keeps_the_earlier_result(tmp_path):
    output = tmp_path / "r.json"
    argv = [str(BIN / "pruning-bench"), "eval", *TINY, "--output", str(output)]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    before = output.read_bytes()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, preexec_fn=_size_limit(256))
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert "earlier file is kept" in again.stderr and str(output) in again.stderr
    assert output.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_result_write_error_names_the_file(tmp_path):
    error = ResultWriteError(tmp_path / "x.json", OSError(27, "File too large"))
    assert str(error) == f"cannot write {tmp_path / 'x.json'} (File too large); nothing was written"
    assert isinstance(error, OSError) and os.strerror(27) == "File too large"


@pytest.mark.parametrize("flag", ["--output", "--prune_save_model"])
def test_clip_benchmark_paths_that_are_directories_are_refused_before_the_model_loads(monkeypatch, tmp_path, capsys,
                                                                                       flag):
    from clip_benchmark import cli

    name = tiny.register_tiny_clip(tmp_path)
    root = tiny.write_webdataset(tmp_path / "wds", n_test=2, n_train=0)
    (tmp_path / "r.json").mkdir()
    (tmp_path / "m.safetensors").mkdir()
    output = tmp_path / ("r.json" if flag == "--output" else "ok.json")
    loads = []
    monkeypatch.setattr(cli, "load_clip", lambda *a, **k: loads.append(1))
    monkeypatch.setattr(sys, "argv", ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", str(root),
                                      "--model", name, "--pretrained", "", "--task", "zeroshot_classification",
                                      "--num_workers", "0", "--output", str(output),
                                      *([] if flag == "--output" else ["--enable_pruning", "--prune_strategy", "tome",
                                                                        "--prune_save_model",
                                                                        str(tmp_path / "m.safetensors")])])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 2 and not loads
    line = one_error(capsys, "clip_benchmark")
    assert flag in line and "is a directory" in line
