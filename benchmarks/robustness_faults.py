"""The second round of `benchmarks/robustness.py`: finished work lost, silent wrongs and tracebacks found by an
independent battery, each now a row that must land in the first two columns.

Judged with the helpers of `robustness_cases.py`. A full disk is made as the kernel makes it (a file-size
limit, `RLIMIT_FSIZE`, in a child process); a read-only folder, which root can still write, by `os.access`
answering as it does for a non-root user.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from unittest import mock

from robustness_cases import (TINY_EVAL, Case, _cb_judge, _clip_benchmark, api_handles, api_refuses, cli, cli_handles,
                              cli_refuses, expect, judge_refusal, result_file, tiny_vit)

BIN = Path(sys.executable).parent


def _size_limit(n_bytes: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))


class _Executed:
    """Unpickling it would create the file named: proof that nothing unpickles."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


# ---------------------------------------------------------------- finished work lost


def _cb_rerun_past_limit(*extra: str):
    def run(tmp):
        first, res = _clip_benchmark(tmp, *extra, output=str(tmp / "res" / "r.json"))
        files = list(res.glob("r*.json"))
        if first.returncode != 0 or not files:
            return "traceback", f"first run failed: {(first.stderr.strip().splitlines() or ['?'])[-1][:120]}"
        before = files[0].read_bytes()
        command = [a for a in first.args]
        again = subprocess.run(command, capture_output=True, text=True, timeout=600, preexec_fn=_size_limit(64))

        def check():
            expect(files[0].exists() and files[0].read_bytes() == before, "lost data", "the earlier result is gone")
            expect(again.returncode == 2 and "earlier file is kept" in again.stderr, "silent wrong",
                   f"exit {again.returncode}: {(again.stderr.strip().splitlines() or [''])[-1][:100]}")
            return [line for line in again.stderr.splitlines() if "error:" in line][-1].replace(str(tmp), "TMP")[:200]
        return _cb_judge(again, check)
    return run


def _eval_output_directory(tmp):
    (tmp / "r.json").mkdir()
    return cli_refuses(["eval", *TINY_EVAL, "--output", str(tmp / "r.json")], contains="is a directory")


def _eval_save_model(where: str, contains: str):
    def run(tmp):
        (tmp / "file").write_text("")
        (tmp / "m.safetensors").mkdir()
        path = {"dir": str(tmp / "m.safetensors"), "under_file": str(tmp / "file" / "m.safetensors"), "keyword": "none"}[where]
        return cli_refuses(["eval", *TINY_EVAL, "--output", str(tmp / "r.json"), "--save_model", path], contains=contains)
    return run


def _eval_result_past_limit(tmp):
    argv = [str(BIN / "pruning-bench"), "eval", *TINY_EVAL, "--output", str(tmp / "r.json")]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    expect(first.returncode == 0, "traceback", first.stderr[-120:])
    before = (tmp / "r.json").read_bytes()
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600, preexec_fn=_size_limit(256))
    column, detail = judge_refusal(again.returncode, again.stderr, contains="earlier file is kept")
    if (tmp / "r.json").read_bytes() != before:
        return "lost data", "the earlier result was replaced or emptied"
    return column, detail


def _eval_save_fails_at_the_end(tmp):
    import pruning_bench.saved as saved

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    def check(status, out, err):
        expect(status == 0, "lost data", f"exit {status}: the evaluation was lost")
        result = json.loads((tmp / "r.json").read_text())
        expect("No space left" in result.get("saved_model", {}).get("error", ""), "silent wrong", "error not recorded")
        return "evaluation kept; saved_model.error recorded; said on stderr"
    with mock.patch.object(saved, "save_pruned", full):
        return cli_handles(["eval", *TINY_EVAL, "--output", str(tmp / "r.json"), "--save_model",
                            str(tmp / "m.safetensors")], check)


# ---------------------------------------------------------------- silent wrongs: the reporter


def _report_once(setup):
    def run(tmp):
        results = tmp / "results"
        result_file(results / "base.json")
        result_file(results / "tome.json", metrics={"acc1": 0.375}, pruning={"strategy": "tome", "params": {"r": 2}},
                    efficiency={"gmacs": 2.0, "images_per_second": 10.0, "batch_size": 8})
        names = setup(results)

        def check(status, out, err):
            import pandas as pd

            expect(status == 0, "silent wrong", f"exit {status}")
            rows = len(pd.read_csv(tmp / "out" / "r.csv"))
            expect(rows == 2, "silent wrong", f"{rows} rows: a run counted twice")
            note = [line for line in err.splitlines() if "counted once" in line or "temporary" in line]
            expect(bool(note), "silent wrong", "left out without a note")
            return "one row per run; " + note[0].split("skipped ", 1)[-1].replace(str(tmp), "TMP")[:140]
        return cli_handles(["report", *names, "-o", str(tmp / "out" / "r")], check)
    return run


def _copy(results):
    shutil.copy(results / "tome.json", results / "tome_copy.json")
    return [str(results)]


def _twice(results):
    return [str(results), str(results / "tome.json")]


def _temporary(results):
    shutil.copy(results / "tome.json", results / ".tome.json.k3j9x2.tmp.json")
    return [str(results)]


# ---------------------------------------------------------------- saved models


def _saved(tmp) -> Path:
    import pruning_bench as pb

    model = tiny_vit(depth=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
            pb.save_pruned(model, tmp / "good.safetensors")
    return tmp / "good.safetensors"


def _edited(tmp, edit, good: Path | None = None) -> Path:
    """`good` (a saved tiny ViT by default) with its metadata record changed by `edit`, as m.safetensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    good = good or _saved(tmp)
    with safe_open(str(good), framework="pt") as handle:
        record = json.loads(handle.metadata()["pruning_bench"])
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    edit(record)
    save_file(tensors, str(tmp / "m.safetensors"), metadata={"pruning_bench": json.dumps(record)})
    return tmp / "m.safetensors"


def _load_refused(make, contains):
    def run(tmp):
        import pruning_bench as pb

        _Executed.path = str(tmp / "executed")
        path = make(tmp)
        start = time.perf_counter()
        column, detail = api_refuses(lambda: pb.load_pruned(path), contains=contains)
        expect(not os.path.exists(_Executed.path), "silent wrong", "unpickled: code ran")
        seconds = time.perf_counter() - start
        if column == "clear error" and seconds > 10:
            return "silent wrong", f"refused only after {seconds:.0f} s"
        return column, detail.replace(str(tmp), "TMP")
    return run


def _truncated(tmp):
    good = _saved(tmp)
    (tmp / "m.safetensors").write_bytes(good.read_bytes()[:-64])
    return tmp / "m.safetensors"


def _pickle_renamed(tmp):
    (tmp / "m.safetensors").write_bytes(pickle.dumps({"w": _Executed()}))
    return tmp / "m.safetensors"


def _directory(tmp):
    (tmp / "m.safetensors").mkdir()
    return tmp / "m.safetensors"


def _evil_pt(tmp):
    import torch

    _Executed.path = str(tmp / "executed")
    torch.save({"w": _Executed()}, tmp / "evil.pt")
    column, detail = cli_refuses(["eval", *TINY_EVAL[:TINY_EVAL.index("--img_size")], "--dataset", "sample_images",
                                  "--task", "fidelity", "--test_samples", "2", "--pretrained", str(tmp / "evil.pt"),
                                  "--output", str(tmp / "r.json")], contains="evil.pt")
    if os.path.exists(_Executed.path):
        return "silent wrong", "unpickled: code ran"
    return column, detail.replace(str(tmp), "TMP")


def _other_name_loads(tmp):
    def check(status, out, err):
        expect(status == 0, "silent wrong", f"exit {status}: {(err.strip().splitlines() or [''])[-1][:100]}")
        return "--save_model m.model, then --pretrained m.model: recognised by content and evaluated"
    first = cli(["eval", *TINY_EVAL, "--output", str(tmp / "a.json"), "--save_model", str(tmp / "m.model")])
    if first[0] != 0:
        return "traceback", first[2].strip().splitlines()[-1][:140]
    base = TINY_EVAL[:TINY_EVAL.index("--img_size")] + TINY_EVAL[TINY_EVAL.index("--dataset"):]
    return cli_handles(["eval", *base, "--pretrained", str(tmp / "m.model"), "--output", str(tmp / "b.json")], check)


def _visualize_truncated(tmp):
    path = _truncated(tmp)
    column, detail = cli_refuses(["visualize", "--model", "vit_tiny_patch16_224", "--dataset", "sample_images",
                                  "--pretrained", str(path), "-o", str(tmp / "m.png")], contains="truncated")
    return column, detail.replace(str(tmp), "TMP")


def _cb_saved_widths(tmp):
    """clip_benchmark eval --pretrained a saved open_clip model whose record does not fit its tensors."""
    import open_clip

    import pruning_bench as pb
    import tiny_clip as tiny

    name = tiny.register_tiny_clip(tmp)
    model = open_clip.create_model(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
            pb.save_pruned(model, tmp / "good.safetensors", model_name=name)
    _edited(tmp, lambda r: r.__setitem__("heads_per_block", [3] * len(r["heads_per_block"])), tmp / "good.safetensors")
    data = tiny.write_webdataset(tmp / "wds", n_test=2, n_train=0)
    code = ("import sys, open_clip; open_clip.add_model_config(sys.argv[1]); from clip_benchmark.cli import main; "
            "sys.argv = ['clip_benchmark'] + sys.argv[2:]; main()")
    done = subprocess.run([sys.executable, "-c", code, str(tmp / f"{name}.json"), "eval", "--dataset", "wds/tiny",
                           "--dataset_root", str(data), "--model", name, "--pretrained", str(tmp / "m.safetensors"),
                           "--task", "zeroshot_classification", "--num_workers", "0", "--output", str(tmp / "r.json")],
                          capture_output=True, text=True, timeout=600)
    column, detail = judge_refusal(done.returncode, done.stderr, contains="do not fit")
    return column, detail.replace(str(tmp), "TMP")


# ---------------------------------------------------------------- the rest


def _nan_calibration(tmp):
    import torch

    import pruning_bench as pb

    bad = torch.full((2, 3, 32, 32), float("nan"))
    return api_refuses(lambda: pb.prune(tiny_vit(), "head_prune", head_ratio=0.5, importance="fisher",
                                        calibration=[bad]).restore(), contains="calibration batch 0")


def _stale_locks(tmp):
    from pruning_bench import sweep

    def checked():
        runs = [sweep.PlannedRun(sweep.SweepPoint("tome", (("r", i),), {"r": i}), ["x"], [tmp / f"r{i}.json"])
                for i in range(2)]
        result_file(runs[0].outputs[0], pruning={"strategy": "tome", "params": {"r": 0}})
        dead = subprocess.Popen(["true"])
        dead.wait()
        for run in runs:
            run.lock_path.write_text(f"{dead.pid}\n")

        def runner(run, log):
            result_file(run.outputs[0], pruning={"strategy": "tome", "params": {"r": 1}})
            return 0
        with contextlib.redirect_stderr(io.StringIO()):
            sweep.run_sweep(runs, log_dir=tmp / "logs", runner=runner, progress=False)
        left = list(tmp.glob("*.lock"))
        expect(not left, "silent wrong", f"{len(left)} lock(s) of a dead process left")
        return "locks of dead processes removed at start (finished point included), said once"
    return api_handles(checked)


def _sweep_read_only(tmp):
    from pruning_bench.sweep import control as sweep_control

    results = tmp / "res"
    results.mkdir()
    real = os.access

    def access(path, mode, *a, **k):  # what a non-root user sees in a chmod 555 folder
        return False if str(path).startswith(str(results)) and mode & os.W_OK else real(path, mode, *a, **k)
    with mock.patch.object(os, "access", access), \
            mock.patch.object(sweep_control, "run_child", side_effect=AssertionError("a point ran")):
        column, detail = cli_refuses(["sweep", "--grid", "tome r=2", "--no_baseline", "--quiet", "--log_dir",
                                      str(tmp / "logs"), "--", "--dataset", "wds/tiny", "--dataset_root", str(tmp),
                                      "--model", "ViT-B-32", "--pretrained", "", "--task", "zeroshot_classification",
                                      "--output", str(results / "r_{pruning}.json")], contains="not writable")
    return column, detail.replace(str(tmp), "TMP")


def _feature_cache_truncated(tmp):
    argv = ["eval", *TINY_EVAL, "--feature_cache", str(tmp / "cache"), "--output", str(tmp / "r.json")]
    status, _, err = cli(argv)
    expect(status == 0, "traceback", err[-120:])
    [entry] = (tmp / "cache").glob("*.pt")
    entry.write_bytes(entry.read_bytes()[:100])

    def check(status, out, err):
        expect(status == 0, "silent wrong", f"exit {status}")
        expect("recomputed" in err, "silent wrong", "recomputed without a note")
        return err[err.index("feature cache entry"):].splitlines()[0].replace(str(tmp), "TMP")[:160]
    return cli_handles(argv, check)


def _count_flops(images_shape, contains):
    def run(tmp):
        import torch

        import pruning_bench as pb

        return api_refuses(lambda: pb.count_flops(tiny_vit(), torch.randn(*images_shape)), contains=contains)
    return run


def _match_macs_wrong_size(tmp):
    import torch

    import pruning_bench as pb

    return api_refuses(lambda: pb.match_macs(tiny_vit(), "tome", 0.7, images=torch.randn(1, 3, 48, 48)),
                       contains="48x48")


def _unreadable_images(tmp):
    from PIL import Image

    folder = tmp / "images"
    folder.mkdir()
    Image.new("RGB", (40, 40), "red").save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"\xff\xd8 no jpeg")
    base = [a for a in TINY_EVAL]
    base[base.index("sample_images")] = str(folder)
    column, detail = cli_refuses(["eval", *base, "--output", str(tmp / "r.json")], contains="b.jpg")
    return column, detail.replace(str(tmp), "TMP")


def _head_prune_twice(saved: bool):
    def run(tmp):
        def checked():
            import open_clip
            import torch

            import pruning_bench as pb
            import tiny_clip as tiny

            name = tiny.register_tiny_clip(tmp)
            model = open_clip.create_model(name).eval()
            x = torch.randn(2, 3, 32, 32)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
                    if saved:
                        pb.save_pruned(model, tmp / "m.safetensors", model_name=name)
                    else:
                        with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude") as h:
                            expect(bool(model.encode_image(x).isfinite().all()), "silent wrong", "non-finite output")
                            heads = h.stats()["heads_per_layer"]
                if saved:
                    loaded = pb.load_pruned(tmp / "m.safetensors")
                    with pb.prune(loaded, "head_prune", head_ratio=0.5, importance="magnitude") as h:
                        expect(bool(loaded.encode_image(x).isfinite().all()), "silent wrong", "non-finite output")
                        heads = h.stats()["heads_per_layer"]
            return f"pruned again: heads per block {heads}"
        return api_handles(checked)
    return run


def _sweep_match_saved(tmp):
    import open_clip

    import pruning_bench as pb
    import tiny_clip as tiny

    name = tiny.register_tiny_clip(tmp)
    model = open_clip.create_model(name).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, "head_prune", head_ratio=0.5, importance="magnitude"):
            pb.save_pruned(model, tmp / "m.safetensors", model_name=name)
    root = tiny.write_webdataset(tmp / "wds", n_test=2, n_train=0)

    def check(status, out, err):
        expect(status == 0, "silent wrong", f"exit {status}: {(err.strip().splitlines() or [''])[-1][:100]}")
        line = [line.strip() for line in out.splitlines() if "achieves" in line]
        expect(bool(line), "silent wrong", "no matched point")
        return line[0]
    return cli_handles(["sweep", "--match_macs", "0.8", "--grid", "tome", "--dry_run", "--log_dir", str(tmp / "logs"),
                        "--", "--dataset", "wds/tiny",
                        "--dataset_root", str(root), "--model", name, "--pretrained", str(tmp / "m.safetensors"),
                        "--task", "zeroshot_classification", "--output", str(tmp / "res" / "{pruning}.json")], check)


def _cb_command(tmp, *extra) -> list[str]:
    """clip_benchmark eval on the tiny CLIP and a 4-image one-shard webdataset (written once), default workers."""
    import tiny_clip as tiny

    data = tiny.write_webdataset(tmp / "wds", n_test=4, n_train=0)
    model_dir = tmp / "tinyclip"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    return [str(BIN / "clip_benchmark"), "eval", "--dataset", "wds/tiny", "--dataset_root", str(data), "--model",
            f"local-dir:{model_dir}", "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "2",
            "--no_amp", "--quiet", "--throughput_repeats", "1", "--output", str(tmp / "res" / "r_{pruning}.json"),
            *extra]


def _cb_empty_split(tmp):
    import tarfile

    command = _cb_command(tmp, "--enable_pruning", "--prune_strategy", "tome")
    tarfile.open(tmp / "wds" / "test" / "0.tar", "w").close()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    column, detail = judge_refusal(done.returncode, done.stderr, contains="holds no sample")
    return column, detail.replace(str(tmp), "TMP")


def _cb_default_workers(tmp):
    res = tmp / "res"
    command = _cb_command(tmp, "--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=2")
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # clip_benchmark's 4 workers

    def check():
        expect(again.returncode == 0 and bool(list(res.glob("*.json"))), "lost data", f"exit {again.returncode}")
        note = [line for line in again.stderr.splitlines() if "capped" in line]
        expect(bool(note), "silent wrong", "workers changed without a note")
        return note[0][:160]
    return _cb_judge(again, check)


def fault_cases() -> list[Case]:
    return [
        Case("lost work", "clip_benchmark re-run past a file-size limit", _cb_rerun_past_limit(), slow=True),
        Case("lost work", "clip_benchmark --extract_attention re-run past a size limit", _cb_rerun_past_limit(
            "--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=2", "--extract_attention"), slow=True),
        Case("lost work", "eval --output an existing directory", _eval_output_directory),
        Case("lost work", "eval --save_model an existing directory", _eval_save_model("dir", "is a directory")),
        Case("lost work", "eval --save_model under a file", _eval_save_model("under_file", "cannot create")),
        Case("lost work", "eval result past a file-size limit", _eval_result_past_limit, slow=True),
        Case("lost work", "eval --save_model fails at the end (disk full)", _eval_save_fails_at_the_end),
        Case("silent wrong", "report: a copy of a result under another name", _report_once(_copy)),
        Case("silent wrong", "report: the same file named twice", _report_once(_twice)),
        Case("silent wrong", "report: a stray temporary file", _report_once(_temporary)),
        Case("silent wrong", "head_prune fisher on NaN calibration images", _nan_calibration),
        Case("silent wrong", "saved model: metadata float16 over float32 tensors", _load_refused(
            lambda t: _edited(t, lambda r: r.__setitem__("dtype", "float16")), "dtype float16")),
        Case("silent wrong", "killed sweep: locks of dead processes", _stale_locks),
        Case("saved model", "metadata naming an unregistered model", _load_refused(
            lambda t: _edited(t, lambda r: r.update(builder="timm.create_model", architecture="no_such_vit")),
            "no_such_vit")),
        Case("saved model", "absurd width (embed_dim 2**20)", _load_refused(
            lambda t: _edited(t, lambda r: r["constructor_args"].__setitem__("embed_dim", 2**20)), "embed_dim")),
        Case("saved model", "absurd image size", _load_refused(
            lambda t: _edited(t, lambda r: r["constructor_args"].__setitem__("img_size", [2**18, 2**18])), "image size")),
        Case("saved model", "depth 100000", _load_refused(
            lambda t: _edited(t, lambda r: r["constructor_args"].__setitem__("depth", 100000)), "depth 100000")),
        Case("saved model", "widths that do not fit the tensors", _load_refused(
            lambda t: _edited(t, lambda r: r.__setitem__("heads_per_block", [3, 3])), "do not fit")),
        Case("saved model", "truncated file", _load_refused(_truncated, "truncated")),
        Case("saved model", "a pickle renamed .safetensors", _load_refused(_pickle_renamed, "a pickle file")),
        Case("saved model", "a directory", _load_refused(_directory, "a directory")),
        Case("saved model", "eval --pretrained a .pt whose unpickling runs code", _evil_pt),
        Case("saved model", "visualize --pretrained a truncated file", _visualize_truncated),
        Case("saved model", "--save_model m.model then --pretrained m.model", _other_name_loads),
        Case("saved model", "--save_model none (a keyword, not a file)", _eval_save_model("keyword", "keyword")),
        Case("saved model", "clip_benchmark --pretrained: widths that do not fit", _cb_saved_widths, slow=True),
        Case("api", "count_flops on 1-channel images", _count_flops((2, 1, 32, 32), "1 channel")),
        Case("api", "match_macs with images of the wrong resolution", _match_macs_wrong_size),
        Case("api", "head_prune on a head-pruned open_clip model", _head_prune_twice(False)),
        Case("api", "head_prune on a saved head-pruned open_clip model", _head_prune_twice(True)),
        Case("eval", "--feature_cache: a truncated entry", _feature_cache_truncated),
        Case("eval", "an image folder with an unreadable file", _unreadable_images),
        Case("sweep", "results into a read-only folder", _sweep_read_only),
        Case("sweep", "--match_macs over a saved open_clip model", _sweep_match_saved),
        Case("clip_benchmark", "an empty dataset", _cb_empty_split, slow=True),
        Case("clip_benchmark", "default 4 workers on a one-shard split", _cb_default_workers, slow=True),
    ]
