"""Saved-model files checked before anything is built: foreign, truncated or edited files are one line, nothing unpickles."""
import json
import pickle
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import pruning_bench as pb
from pruning_bench.cli import main
from pruning_bench.saved import validate
from tests.conftest import tiny_timm

EVAL = ["--model", "vit_tiny_patch16_224", "--dataset", "sample_images", "--task", "fidelity", "--test_samples", "2",
        "--batch_size", "2", "--efficiency_batch_size", "1", "--throughput_repeats", "1", "--no_progress"]


@pytest.fixture
def good(tmp_path):
    model = tiny_timm(depth=2)
    with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
        pb.save_pruned(model, tmp_path / "good.safetensors")
    return tmp_path / "good.safetensors"


def rewrite(good, target, edit):
    with safe_open(str(good), framework="pt") as handle:
        record = json.loads(handle.metadata()["pruning_bench"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edit(record)
    save_file(tensors, str(target), metadata={"pruning_bench": json.dumps(record)})
    return target


class RunsCode:
    def __reduce__(self):  # unpickling would create this file
        return (open, (str(MARKER[0]), "w"))


MARKER = [None]


def refused(path, contains):
    start = time.perf_counter()
    with pytest.raises(ValueError) as caught:
        pb.load_pruned(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and contains in message, message
    assert time.perf_counter() - start < 10  # refused before any large allocation
    return message


def test_metadata_dtype_unlike_the_stored_tensors_is_refused(tmp_path, good):
    path = rewrite(good, tmp_path / "f16.safetensors", lambda r: r.__setitem__("dtype", "float16"))
    refused(path, "says dtype float16 but the stored weights are float32")


@pytest.mark.parametrize("edit, contains", [
    (lambda r: r.__setitem__("architecture", "no_such_vit") or r.__setitem__("builder", "timm.create_model"),
     "'no_such_vit' is not a timm model"),
    (lambda r: r["constructor_args"].__setitem__("embed_dim", 2**20), "embed_dim=1048576 does not fit"),
    (lambda r: r["constructor_args"].__setitem__("mlp_ratio", 1e5), "mlp_ratio x width=6400000 does not fit"),
    (lambda r: r["constructor_args"].__setitem__("img_size", [2**18, 2**18]), "image size"),
    (lambda r: r["constructor_args"].__setitem__("depth", 100000), "depth 100000"),
    (lambda r: r.__setitem__("heads_per_block", [3, 3]), "do not fit"),
], ids=["unknown_architecture", "embed_dim", "mlp_width", "image_size", "depth", "widths_vs_tensors"])
def test_records_that_do_not_fit_their_tensors_are_refused_before_building(tmp_path, good, edit, contains):
    refused(rewrite(good, tmp_path / "edited.safetensors", edit), contains)


def test_truncated_and_foreign_files_are_named(tmp_path, good):
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:-64])
    refused(tmp_path / "cut.safetensors", "truncated")
    MARKER[0] = tmp_path / "executed"
    (tmp_path / "pickle.safetensors").write_bytes(pickle.dumps({"w": RunsCode()}))
    refused(tmp_path / "pickle.safetensors", "a pickle file")
    torch.save({"w": torch.zeros(2)}, tmp_path / "zip.safetensors")
    refused(tmp_path / "zip.safetensors", "torch.save checkpoint")
    (tmp_path / "dir.safetensors").mkdir()
    refused(tmp_path / "dir.safetensors", "a directory")
    assert not MARKER[0].exists()


@pytest.mark.parametrize("make, contains", [
    (lambda p, good: p.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2]), "truncated"),
    (lambda p, good: p.write_bytes(pickle.dumps({"w": RunsCode()})), "a pickle file"),
    (lambda p, good: p.mkdir(), "directory"),
    (lambda p, good: rewrite(good, p, lambda r: r.__setitem__("dtype", "float16")), "dtype float16"),
], ids=["truncated", "pickle", "directory", "dtype"])
@pytest.mark.parametrize("command", ["eval", "visualize"])
def test_commands_name_the_file_in_one_line(tmp_path, good, capsys, make, contains, command):
    MARKER[0] = tmp_path / "executed"
    path = tmp_path / "m.safetensors"
    make(path, good)
    argv = ["eval", *EVAL, "--pretrained", str(path), "--output", str(tmp_path / "r.json")] if command == "eval" else \
        ["visualize", "--model", "vit_tiny_patch16_224", "--dataset", "sample_images", "--pretrained", str(path),
         "-o", str(tmp_path / "m.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1 and str(path) in lines[0] and contains in lines[0], err
    assert not MARKER[0].exists()


def test_a_pt_whose_unpickling_runs_code_is_one_line_and_never_runs(tmp_path, capsys):
    MARKER[0] = tmp_path / "executed"
    torch.save({"w": RunsCode()}, tmp_path / "evil.pt")
    assert main(["eval", *EVAL, "--pretrained", str(tmp_path / "evil.pt"), "--output", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "evil.pt" in err and "not unpickled" in err, err
    assert not MARKER[0].exists()


def test_a_saved_model_is_recognised_by_its_content_not_its_name(tmp_path, good, capsys):
    other = tmp_path / "m.model"
    other.write_bytes(good.read_bytes())
    assert validate.kind(other) == "saved_model" and validate.claims_saved_model(other)
    assert main(["eval", *EVAL, "--pretrained", str(other), "--output", str(tmp_path / "r.json")]) == 0
    assert json.loads((tmp_path / "r.json").read_text())["metrics"]
    model = pb.load_pruned(other)
    assert [b.attn.num_heads for b in model.blocks] == [b.attn.num_heads for b in pb.load_pruned(good).blocks]


def test_save_model_under_any_file_name_loads_back(tmp_path, capsys):
    tiny = ["--img_size", "32", "--model_arg", "patch_size=8", "--model_arg", "depth=1", "--model_arg", "embed_dim=48",
            "--model_arg", "num_heads=3"]
    assert main(["eval", *EVAL, *tiny, "--pretrained", "none", "--output", str(tmp_path / "a.json"),
                 "--save_model", str(tmp_path / "m.model")]) == 0
    assert main(["eval", *EVAL, "--pretrained", str(tmp_path / "m.model"), "--output", str(tmp_path / "b.json")]) == 0
    assert "Traceback" not in capsys.readouterr().err
