"""The cases of `benchmarks/robustness.py`: bad inputs and faults, grouped by where they enter.

Each case returns (column, detail); the helpers judge the outcome the same way for every case.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:  # tiny_clip: the tiny CLIP and webdataset the tests use too
    sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class Case:
    area: str
    name: str
    run: Callable[[Path], tuple[str, str]]
    slow: bool = False


class Wrong(Exception):
    """Raised by a check: (column, detail) of a wrong outcome."""

    def __init__(self, column: str, detail: str):
        super().__init__(detail)
        self.column = column


def expect(condition: bool, column: str, detail: str) -> None:
    if not condition:
        raise Wrong(column, detail)


# ---------------------------------------------------------------- how a case is judged


def api_refuses(fn: Callable, *, contains: str = "") -> tuple[str, str]:
    """The call must raise a ValueError-like error with one line (naming `contains`)."""
    from pruning_bench import UnsupportedModelError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
    except (ValueError, UnsupportedModelError) as exc:
        message = str(exc).splitlines()[0]
        if contains and contains not in str(exc):
            return "silent wrong", f"refused, but the message does not name {contains!r}: {message[:100]}"
        return "clear error", message
    except Exception as exc:  # noqa: BLE001 - the point is to classify it
        return "traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return "silent wrong", "accepted"


def api_handles(fn: Callable[[], str]) -> tuple[str, str]:
    """The call must succeed and its own checks pass (they raise `Wrong` otherwise)."""
    try:
        return "handled", fn()
    except Wrong as wrong:
        return wrong.column, str(wrong)
    except Exception as exc:  # noqa: BLE001
        return "traceback", f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"


def cli(argv: list[str]) -> tuple[int, str, str]:
    """`pruning-bench ARGV` in this process: (status, stdout, stderr); an escaping exception becomes a traceback."""
    from pruning_bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 2
        except Exception:  # noqa: BLE001
            traceback.print_exc(file=err)
            status = 1
    return int(status or 0), out.getvalue(), err.getvalue()


def judge_refusal(status: int, err: str, *, contains: str = "") -> tuple[str, str]:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if "Traceback" in err:
        return "traceback", lines[-1][:140] if lines else "traceback"
    errors = [line for line in lines if "error:" in line]
    if status == 2 and errors:
        if contains and contains not in err:
            return "silent wrong", f"refused without naming {contains!r}: {errors[-1][:100]}"
        return "clear error", errors[-1][:220]
    return "silent wrong", f"exit {status}: {(lines or ['no message'])[-1][:120]}"


def cli_refuses(argv: list[str], *, contains: str = "") -> tuple[str, str]:
    status, _, err = cli(argv)
    return judge_refusal(status, err, contains=contains)


def cli_handles(argv: list[str], check: Callable[[int, str, str], str]) -> tuple[str, str]:
    status, out, err = cli(argv)
    if "Traceback" in err:
        return "traceback", err.strip().splitlines()[-1][:140]
    try:
        return "handled", check(status, out, err)
    except Wrong as wrong:
        return wrong.column, str(wrong)


# ---------------------------------------------------------------- shared fixtures


def tiny_vit(**overrides):
    import torch
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    cfg = dict(img_size=32, patch_size=8, embed_dim=48, depth=3, num_heads=3, num_classes=5)
    cfg.update(overrides)
    return VisionTransformer(**cfg).eval()


def images(n=2, size=32):
    import torch

    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))


def result_file(path: Path, **over) -> Path:
    import json

    data = {"dataset": "wds/cifar10", "model": "ViT-B-32", "pretrained": "openai", "task": "zeroshot_classification",
            "language": "en", "metrics": {"acc1": 0.5}, "pruning": None,
            "efficiency": {"gmacs": 4.0, "images_per_second": 10.0, "batch_size": 8}}
    data.update(over)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


TINY_EVAL = ["--model", "vit_tiny_patch16_224", "--pretrained", "none", "--img_size", "32", "--model_arg",
             "patch_size=8", "--model_arg", "depth=1", "--model_arg", "embed_dim=48", "--model_arg", "num_heads=3",
             "--dataset", "sample_images", "--task", "fidelity", "--test_samples", "2", "--batch_size", "2",
             "--efficiency_batch_size", "1", "--throughput_repeats", "1", "--no_progress"]


# ---------------------------------------------------------------- the API


def _api_cases() -> list[Case]:
    import torch

    import pruning_bench as pb

    def prune(strategy, model=None, **params):
        return lambda: pb.prune(model if model is not None else tiny_vit(), strategy, **params).restore()

    def keep_zero_with_class_token():
        model = tiny_vit()
        with pb.prune(model, "random_drop", keep=0):
            out = model(images())
        expect(bool(torch.isfinite(out).all()), "silent wrong", "NaN output")
        return "class-token pooling needs no patch token: finite output"

    def clamp_is_exact_noop():
        model = tiny_vit()
        reference = model(images())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pb.prune(model, "random_drop", keep=1000):
                out = model(images())
        expect(torch.equal(out, reference), "silent wrong", "output changed although nothing is pruned")
        expect(any("clamped" in str(w.message) for w in caught), "silent wrong", "no clamp warning")
        return "bit-exact no-op with a clamp warning"

    def short_r_list():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pb.prune(tiny_vit(), "tome", r=[2]).restore()
        messages = [str(w.message) for w in caught if "entries for a 3-block model" in str(w.message)]
        expect(bool(messages), "silent wrong", "padded silently")
        return messages[0][:120]

    def restored_after_exception():
        model = tiny_vit()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        reference = model(images())
        try:
            with pb.prune(model, "tome", r=2):
                model(images())
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            pass
        expect(all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "silent wrong", "weights changed")
        expect(torch.equal(model(images()), reference), "silent wrong", "outputs changed after restore")
        return "interrupted inside `with`: model bit-identical afterwards"

    def restore_twice():
        h = pb.prune(tiny_vit(), "tome", r=2)
        h.restore()
        h.restore()
        return "second restore() is a no-op"

    def random_weights_flagged():
        report = pb.check_checkpoint(tiny_vit())
        expect(bool(report.looks_random), "silent wrong", "random weights not flagged")
        return "random-init weights flagged"

    def bn_fingerprint():
        import timm

        from pruning_bench.evaluate.models import LoadedModel

        model = timm.create_model("vit_small_resnet26d_224", pretrained=False, depth=1, img_size=64).eval()
        return f"hybrid ViT with BatchNorm fingerprinted ({LoadedModel(model, None, 'h', 'none', (64, 64)).fingerprint()[:8]}...)"

    wrong_size = [torch.randn(2, 3, 48, 48)]
    resnet = lambda: __import__("timm").create_model("resnet18", pretrained=False)  # noqa: E731
    return [
        Case("api", "unknown strategy name", lambda t: api_refuses(prune("no_such"), contains="no_such")),
        Case("api", "tome r=-1", lambda t: api_refuses(prune("tome", r=-1), contains="r=-1")),
        Case("api", "tome r='8x' (a string)", lambda t: api_refuses(prune("tome", r="8x"), contains="r must be")),
        Case("api", "tome r list longer than depth", lambda t: api_refuses(prune("tome", r=[1] * 9), contains="9 entries")),
        Case("api", "tome r list shorter than depth", lambda t: api_handles(short_r_list)),
        Case("api", "tome seed=2**63", lambda t: api_refuses(prune("tome", seed=2**63), contains="seed")),
        Case("api", "random_drop seed=-1", lambda t: api_refuses(prune("random_drop", seed=-1), contains="seed")),
        Case("api", "random_drop keep=0, avg pooling", lambda t: api_refuses(
            prune("random_drop", tiny_vit(global_pool="avg"), keep=0), contains="keep=0")),
        Case("api", "cls_topk keep=0, avg pooling", lambda t: api_refuses(
            prune("cls_topk", tiny_vit(global_pool="avg"), keep=0), contains="keep=0")),
        Case("api", "random_drop keep=0, no class token", lambda t: api_refuses(
            prune("random_drop", tiny_vit(class_token=False, global_pool="avg"), keep=0), contains="keep=0")),
        Case("api", "random_drop keep=0, class-token pooling", lambda t: api_handles(keep_zero_with_class_token)),
        Case("api", "cls_topk on a model without class token", lambda t: api_refuses(
            prune("cls_topk", tiny_vit(class_token=False, global_pool="avg"), keep=4), contains="class token")),
        Case("api", "budget >= tokens (clamp)", lambda t: api_handles(clamp_is_exact_noop)),
        Case("api", "anchor_diversity alpha=1.5", lambda t: api_refuses(prune("anchor_diversity", alpha=1.5), contains="alpha")),
        Case("api", "anchor_diversity k_anchors=0", lambda t: api_refuses(prune("anchor_diversity", k_anchors=0), contains="k_anchors")),
        Case("api", "head_prune head_ratio=1.0", lambda t: api_refuses(prune("head_prune", head_ratio=1.0), contains="head_ratio")),
        Case("api", "head_prune calibration=5", lambda t: api_refuses(
            prune("head_prune", importance="fisher", calibration=5), contains="calibration")),
        Case("api", "head_prune fisher without calibration", lambda t: api_refuses(
            prune("head_prune", importance="fisher"), contains="calibration")),
        Case("api", "calibration images of the wrong size", lambda t: api_refuses(
            prune("head_prune", importance="fisher", calibration=wrong_size), contains="calibration batch 0")),
        Case("api", "layer_drop drop=[99]", lambda t: api_refuses(prune("layer_drop", drop=[99]), contains="99")),
        Case("api", "prune a ResNet", lambda t: api_refuses(lambda: pb.prune(resnet(), "tome", r=2), contains="supported")),
        Case("api", "two token strategies at once", lambda t: api_refuses(
            lambda: pb.prune(tiny_vit(), [("tome", {"r": 2}), ("random_drop", {"keep": 2})]), contains="one token strategy")),
        Case("api", "count_flops(model, None)", lambda t: api_refuses(lambda: pb.count_flops(tiny_vit(), None), contains="images")),
        Case("api", "count_flops with a 3-D image", lambda t: api_refuses(
            lambda: pb.count_flops(tiny_vit(), images()[0]), contains="(B, C, H, W)")),
        Case("api", "KeyboardInterrupt inside `with pb.prune`", lambda t: api_handles(restored_after_exception)),
        Case("api", "restore() twice", lambda t: api_handles(restore_twice)),
        Case("api", "random weights presented as a checkpoint", lambda t: api_handles(random_weights_flagged)),
        Case("api", "BatchNorm buffers (0-d) in the feature-cache key", lambda t: api_handles(bn_fingerprint)),
    ]


# ---------------------------------------------------------------- report and leaderboard


def _report_cases() -> list[Case]:
    def skipped(command):
        def run(tmp):
            result_file(tmp / "base.json")
            (tmp / "bad.json").write_text('{"dataset": "x", "metrics": {"ac')

            def check(status, out, err):
                expect(status == 0, "silent wrong", f"exit {status}")
                expect(f"skipped {tmp / 'bad.json'}" in err, "silent wrong", "bad file not named")
                expect(any(Path(line).exists() for line in out.split()), "lost data", "no report written")
                return [line for line in err.splitlines() if "skipped" in line][0].split(": ", 1)[1][:140]
            return cli_handles([command, str(tmp), "-o", str(tmp / "out" / "r")], check)
        return run

    def only(content, command="report", contains="bad.json"):
        def run(tmp):
            (tmp / "bad.json").write_text(content)
            return cli_refuses([command, str(tmp / "bad.json"), "-o", str(tmp / "r")], contains=contains)
        return run

    def typed(**over):
        def run(tmp):
            result_file(tmp / "typed.json", **over)
            return cli_refuses(["report", str(tmp / "typed.json"), "-o", str(tmp / "r")], contains=f"'{next(iter(over))}")
        return run

    def impossible(command):
        def run(tmp):
            result_file(tmp / "base.json")
            (tmp / "file").write_text("")
            return cli_refuses([command, str(tmp / "base.json"), "-o", str(tmp / "file" / "r")], contains="-o")
        return run

    return [
        Case("report", "truncated JSON beside good files", skipped("report")),
        Case("report", "empty file only", only("")),
        Case("report", "truncated file only", only('{"metrics": {"acc1": 0.')),
        Case("report", "foreign JSON (a package.json)", only('{"name": "x", "version": "1"}')),
        Case("report", "binary junk", only("\x00\x01\x02")),
        Case("report", "metrics of the wrong type", typed(metrics="high")),
        Case("report", "efficiency.gmacs a string", typed(efficiency={"gmacs": "four"})),
        Case("report", "-o under a file", impossible("report")),
        Case("report", "missing result path", lambda t: cli_refuses(["report", str(t / "nope.json"), "-o", str(t / "r")],
                                                                    contains="nope.json")),
        Case("leaderboard", "truncated JSON beside good files", skipped("leaderboard")),
        Case("leaderboard", "foreign JSON only", only("[1, 2]", "leaderboard")),
        Case("leaderboard", "budget 0", lambda t: cli_refuses(["leaderboard", str(result_file(t / "b.json")), "-o",
                                                                str(t / "r"), "--budget", "0"], contains="budget")),
        Case("leaderboard", "-o under a file", impossible("leaderboard")),
    ]


# ---------------------------------------------------------------- pruning-bench eval and visualize


def _eval_cases() -> list[Case]:
    def eval_refuses(*extra, contains="", drop_tiny_model=False):
        def run(tmp):
            base = [a for a in TINY_EVAL] if not drop_tiny_model else TINY_EVAL[TINY_EVAL.index("--dataset"):]
            return cli_refuses(["eval", *base, *extra, "--output", str(tmp / "r_{pruning}.json")], contains=contains)
        return run

    def rerun_incomplete(tmp):
        target = tmp / "r_baseline.json"
        target.write_text('{"dataset": "sample_images", "metrics": {"co')

        def check(status, out, err):
            expect(status == 0, "silent wrong", f"exit {status}: {err.strip().splitlines()[-1:]}")
            expect("running it again" in err, "silent wrong", "the truncated file counted as done")
            data = json.loads(target.read_text())
            expect(bool(data.get("metrics")), "lost data", "no metrics written")
            return "incomplete result re-run, said so, complete file written"
        return cli_handles(["eval", *TINY_EVAL, "--output", str(tmp / "r_{pruning}.json"), "--skip_existing"], check)

    def vis(*argv, contains=""):
        def run(tmp):
            junk = tmp / "junk.pt"
            junk.write_bytes(b"\x00junk")
            argv2 = [str(junk) if a == "JUNK" else a.replace("TMP", str(tmp)) for a in argv]
            return cli_refuses(["visualize", *argv2, *([] if "-o" in argv2 else ["-o", str(tmp / "m.png")])],
                               contains=contains)
        return run

    return [
        Case("eval", "unknown model", lambda t: cli_refuses(["eval", "--model", "no_such_model", "--dataset", "sample_images"],
                                                          contains="no_such_model")),
        Case("eval", "--model_arg mlp_ratio=abc", eval_refuses("--model_arg", "mlp_ratio=abc", contains="mlp_ratio")),
        Case("eval", "--model_arg given twice", eval_refuses("--model_arg", "depth=2", contains="--model_arg depth is given twice")),
        Case("eval", "start_layer past the model's depth", eval_refuses(
            "--enable_pruning", "--prune_strategy", "random_drop", "--prune_param", "start_layer=5", contains="start_layer=5")),
        Case("eval", "keep=0 on an avg-pooled model", eval_refuses(
            "--model_arg", "global_pool=avg", "--enable_pruning", "--prune_strategy", "cls_topk", "--prune_param", "keep=0",
            contains="keep=0")),
        Case("eval", "unsupported model with --enable_pruning", lambda t: cli_refuses(
            ["eval", "--model", "resnet18", "--dataset", "sample_images", "--task", "fidelity", "--test_samples", "2",
             "--enable_pruning", "--prune_strategy", "tome", "--output", str(t / "r.json")], contains="cannot patch")),
        Case("eval", "--test_samples 0", eval_refuses("--test_samples", "0", contains="test_samples")),
        Case("eval", "--seed 2**63", eval_refuses("--seed", str(2**63), contains="--seed")),
        Case("eval", "--output under a file", lambda t: (t.joinpath("f").write_text(""), cli_refuses(
            ["eval", *TINY_EVAL, "--output", str(t / "f" / "r.json")], contains="cannot create"))[1]),
        Case("eval", "missing --dataset_root", lambda t: cli_refuses(
            ["eval", *TINY_EVAL[:TINY_EVAL.index("--dataset")], "--dataset", "wds/cifar10", "--dataset_root",
             str(t / "none"), "--task", "fidelity"], contains="")),
        Case("eval", "--skip_existing over a truncated result", rerun_incomplete),
        Case("visualize", "junk attention file", vis("--attention_file", "JUNK", contains="not an attention file")),
        Case("visualize", "unknown timm model", vis("--model", "no_such_model", "--dataset", "sample_images",
                                                    contains="no_such_model")),
        Case("visualize", "unknown open_clip model", vis("--model", "open_clip:NoSuchNet", "--dataset", "sample_images",
                                                         contains="NoSuchNet")),
        Case("visualize", "--n_images 0", vis("--model", "vit_tiny_patch16_224", "--dataset", "sample_images",
                                              "--n_images", "0", contains="--n_images")),
        Case("visualize", "-o under a file", vis("--model", "vit_tiny_patch16_224", "--dataset", "sample_images",
                                                 "-o", str(Path("TMP") / "junk.pt" / "m.png"), contains="cannot create")),
    ]


# ---------------------------------------------------------------- sweep, prune_compare.sh


FAKE_CHILD = ROOT / "tests" / "sweep_fake_child.py"
SWEEP_HARNESS = """
import sys
from pathlib import Path
from pruning_bench import sweep
from pruning_bench.commands.sweep import run_planned
out, fake = Path(sys.argv[1]), sys.argv[2]
runs = [sweep.PlannedRun(sweep.SweepPoint("tome", (("r", i),), {"r": i}), [sys.executable, fake, f"p{i}"],
                         [out / "res" / f"p{i}.json"]) for i in range(2)]
sys.exit(run_planned(runs, log_dir=out / "logs", progress=False))
"""


def _sweep_killed(signum: int):
    """A sweep stopped mid-point by `signum`, then resumed: every result once, valid, no process left."""
    from pruning_bench.record import check as result_check
    from pruning_bench.sweep.control import pid_alive

    def run(tmp):
        return api_handles(lambda: checked(tmp))

    def checked(tmp):
        (tmp / "state").mkdir()
        (tmp / "state" / "slow_p1").write_text("")
        script = tmp / "harness.py"
        script.write_text(SWEEP_HARNESS)
        env = {**os.environ, "FAKE_STATE": str(tmp / "state")}
        start = lambda: subprocess.Popen([sys.executable, str(script), str(tmp), str(FAKE_CHILD)],  # noqa: E731
                                         stderr=subprocess.PIPE, text=True, env=env)
        sweep = start()
        deadline = time.time() + 60
        while "start p1" not in ((tmp / "state" / "events").read_text() if (tmp / "state" / "events").exists() else ""):
            expect(time.time() < deadline, "silent wrong", "the sweep never reached the second point")
            time.sleep(0.05)
        sweep.send_signal(signum)
        _, err = sweep.communicate(timeout=60)
        expect("Traceback" not in err, "traceback", err.strip().splitlines()[-1] if err.strip() else "traceback")
        time.sleep(0.5)
        pids = [int(p.name) for p in (tmp / "state" / "pids").iterdir()]
        expect(not any(pid_alive(p) for p in pids), "lost data", "a child kept running after the sweep stopped")
        (tmp / "state" / "slow_p1").unlink()
        resumed = start()
        _, err2 = resumed.communicate(timeout=120)
        expect(resumed.returncode == 0, "lost data", f"resume exit {resumed.returncode}")
        ends = [line.split()[1] for line in (tmp / "state" / "events").read_text().splitlines() if line.startswith("end")]
        expect(sorted(ends) == ["p0", "p1"], "lost data", f"points finished: {ends}")
        expect(all(result_check.is_complete(tmp / "res" / f"p{i}.json") for i in range(2)), "lost data", "invalid result")
        said = "stopped" if signum != signal.SIGKILL else "killed"
        return f"{said}: child stopped; resume re-ran only the missing point, each result once"
    return run


def _sweep_cases() -> list[Case]:
    def truncated_point(tmp):
        from pruning_bench import sweep

        runs = [sweep.PlannedRun(sweep.SweepPoint("tome", (("r", 2),), {"r": 2}), ["x"], [tmp / "r.json"])]
        (tmp / "r.json").write_text('{"metrics": {"acc1": 0.')

        def runner(run, log):
            result_file(run.outputs[0], pruning={"strategy": "tome", "params": {"r": 2}})
            return 0
        with contextlib.redirect_stderr(io.StringIO()) as err:
            summary = sweep.run_sweep(runs, log_dir=tmp / "logs", runner=runner, progress=False)
        expect(len(summary.ran) == 1, "silent wrong", "the truncated point counted as done")
        expect("re-running" in err.getvalue(), "silent wrong", "re-run without saying so")
        return "truncated result re-run and said so (moved to r.json.incomplete)"

    def live_lock(tmp):
        from pruning_bench import sweep

        run = sweep.PlannedRun(sweep.SweepPoint("tome", (("r", 2),), {"r": 2}), ["x"], [tmp / "r.json"])
        holder = subprocess.Popen(["sleep", "1"])
        run.lock_path.write_text(f"{holder.pid}\n")
        calls = []

        def runner(run, log):
            calls.append(time.time())
            result_file(run.outputs[0], pruning={"strategy": "tome"})
            return 0
        with contextlib.redirect_stderr(io.StringIO()):
            sweep.run_sweep([run], log_dir=tmp / "logs", runner=runner, progress=False)
        holder.wait()
        expect(len(calls) == 1, "silent wrong", f"ran {len(calls)} times")
        return "point locked by a live process: waited for it, then ran once"

    grid_args = ["--dry_run", "--", "--dataset", "wds/x"]
    return [
        Case("sweep", "unknown strategy in --grid", lambda t: cli_refuses(["sweep", "--grid", "nope r=2", *grid_args],
                                                                        contains="nope")),
        Case("sweep", "--grid tome r=-1", lambda t: cli_refuses(["sweep", "--grid", "tome r=-1", *grid_args], contains="r=-1")),
        Case("sweep", "--seeds 0,x", lambda t: cli_refuses(["sweep", "--grid", "tome r=2", "--seeds", "0,x", *grid_args],
                                                           contains="'x'")),
        Case("sweep", "--seed among the eval args with --seeds", lambda t: cli_refuses(
            ["sweep", "--grid", "tome r=2", "--seeds", "0,1", "--dry_run", "--", "--dataset", "wds/x", "--seed", "3"],
            contains="--seed")),
        Case("sweep", "truncated result of a point", lambda t: api_handles(lambda: truncated_point(t))),
        Case("sweep", "point locked by a live process", lambda t: api_handles(lambda: live_lock(t))),
        Case("sweep", "SIGTERM mid-point, then resume", _sweep_killed(signal.SIGTERM), slow=True),
        Case("sweep", "SIGINT mid-point, then resume", _sweep_killed(signal.SIGINT), slow=True),
        Case("sweep", "SIGHUP mid-point, then resume", _sweep_killed(signal.SIGHUP), slow=True),
        Case("sweep", "SIGKILL mid-point, then resume", _sweep_killed(signal.SIGKILL), slow=True),
        Case("prune_compare.sh", "malformed --config", _prune_compare_bad_config),
        Case("prune_compare.sh", "truncated result in the results folder",
             lambda t: api_handles(lambda: _prune_compare_truncated(t)), slow=True),
    ]


def _prune_compare(tmp: Path, *args: str, fake: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    if fake:
        script = tmp / "fake_clip_benchmark"
        script.write_text(f"#!{sys.executable}\n" + (
            "import json, sys\nargv = sys.argv[1:]\n"
            "s = argv[argv.index('--prune_strategy') + 1] if '--prune_strategy' in argv else None\n"
            "out = argv[argv.index('--output') + 1].format(dataset='d', pretrained='p', model='m', language='en',"
            " task='zeroshot_classification', pruning=s or 'baseline')\n"
            "json.dump({'dataset': 'd', 'model': 'm', 'pretrained': 'p', 'task': 'zeroshot_classification',"
            " 'language': 'en', 'metrics': {'acc1': 0.5}, 'pruning': {'strategy': s, 'params': {}} if s else None,"
            " 'efficiency': {'gmacs': 2.0 if s else 4.0, 'images_per_second': 1.0}}, open(out, 'w'))\n"))
        script.chmod(0o755)
        env["CLIP_BENCHMARK"] = str(script)
    return subprocess.run(["bash", str(ROOT / "prune_compare.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=600)


def _prune_compare_bad_config(tmp):
    done = _prune_compare(tmp, "--config", "tome r", "--", "--dataset", "x")
    return judge_refusal(done.returncode, done.stderr.replace("prune_compare.sh:", "prune_compare.sh: error:"),
                         contains="key=value")


def _prune_compare_truncated(tmp):
    results = tmp / "cmp" / "results"
    results.mkdir(parents=True)
    bad = results / "d_p_m_en_zeroshot_classification_baseline.json"
    bad.write_text('{"metrics": {"acc')
    done = _prune_compare(tmp, "--out", str(tmp / "cmp"), "--config", "tome r=2", "--", "--dataset", "x", "--skip_existing")
    expect(done.returncode == 0, "silent wrong", f"exit {done.returncode}: {done.stderr[-200:]}")
    expect("its run is redone" in done.stdout, "silent wrong", "not said")
    from pruning_bench.record import check as result_check

    expect(result_check.is_complete(bad), "lost data", "baseline result missing")
    return "moved to .incomplete, said so, baseline run again"


# ---------------------------------------------------------------- clip_benchmark eval (the plugin)


def _clip_benchmark(tmp: Path, *extra: str, n_train: int = 0, output: str | None = None) -> tuple[subprocess.CompletedProcess, Path]:
    import tiny_clip as tiny

    data = tiny.write_webdataset(tmp / "wds", n_test=4, n_train=n_train)
    model_dir = tmp / "tinyclip"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny.TINY_CLIP_CONFIG}))
    out = output or str(tmp / "res" / "r_{pruning}.json")
    (tmp / "res").mkdir(exist_ok=True)
    command = [str(Path(sys.executable).parent / "clip_benchmark"), "eval", "--dataset", "wds/tiny", "--dataset_root",
               str(data), "--model", f"local-dir:{model_dir}", "--pretrained", "", "--task", "zeroshot_classification",
               "--batch_size", "2", "--num_workers", "0", "--no_amp", "--quiet", "--throughput_repeats", "1",
               "--output", out, *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600), tmp / "res"


def _cb_judge(done: subprocess.CompletedProcess, check: Callable[[], str]) -> tuple[str, str]:
    text = done.stdout + done.stderr
    if "Traceback" in text:
        return "traceback", text.strip().splitlines()[-1][:140]
    try:
        return "handled", check()
    except Wrong as wrong:
        return wrong.column, str(wrong)


def _cb_refusal(*extra: str, contains: str = ""):
    def run(tmp):
        done, _ = _clip_benchmark(tmp, *extra)
        text = done.stdout + done.stderr
        if "Traceback" in text:
            return "traceback", text.strip().splitlines()[-1][:140]
        lines = [line for line in text.strip().splitlines() if "rror" in line]
        if done.returncode != 0 and lines and contains in text:
            return "clear error", lines[-1][:160]
        return "silent wrong", f"exit {done.returncode}"
    return run


def _cb_nested_output(tmp):
    done, _ = _clip_benchmark(tmp, output=str(tmp / "a" / "b" / "r_{pruning}.json"))

    def check():
        files = list((tmp / "a" / "b").glob("*.json")) if (tmp / "a" / "b").exists() else []
        expect(bool(files), "lost data", f"exit {done.returncode}; no result written")
        return "missing nested folder created, result written"
    return _cb_judge(done, check)


def _cb_attention_missing_folder(tmp):
    done, res = _clip_benchmark(tmp, "--enable_pruning", "--prune_strategy", "tome", "--prune_param", "r=2",
                                "--extract_attention", "--attention_output", str(tmp / "missing" / "att.pt"))

    def check():
        for path in res.glob("*.json"):
            expect(path.stat().st_size > 0, "lost data", f"0-byte {path.name} left behind")
        from pruning_bench.record import check as result_check

        files = list(res.glob("*.json"))
        expect(bool(files) and all(result_check.is_complete(p) for p in files) or done.returncode == 2,
               "lost data", f"exit {done.returncode}; no complete result")
        return "attention folder created (or refused up front); no 0-byte result"
    return _cb_judge(done, check)


def _cb_skip_existing_empty(tmp):
    (tmp / "res").mkdir()
    (tmp / "res" / "r_baseline.json").write_text("")
    done, res = _clip_benchmark(tmp, "--skip_existing")

    def check():
        from pruning_bench.record import check as result_check

        expect(result_check.is_complete(res / "r_baseline.json"), "silent wrong",
               "a 0-byte result counted as done by --skip_existing")
        return "0-byte result re-run"
    return _cb_judge(done, check)


def _cb_calibration_names(tmp):
    flags = ["--enable_pruning", "--prune_strategy", "head_prune", "--prune_param", "importance=fisher",
             "--prune_param", "head_ratio=0.5"]
    first, res = _clip_benchmark(tmp, *flags, "--prune_calibration", "2", n_train=4)
    second, _ = _clip_benchmark(tmp, *flags, "--prune_calibration", "4", n_train=4)

    def check():
        names = sorted(p.name for p in res.glob("*.json"))
        expect(first.returncode == 0 and second.returncode == 0, "silent wrong", f"exit {first.returncode}/{second.returncode}")
        expect(len(names) == 2, "lost data", f"calibration 2 and 4 wrote {len(names)} file(s): {names}")
        return "different calibration sizes, different result files"
    return _cb_judge(second if "Traceback" not in first.stdout + first.stderr else first, check)


def _clip_benchmark_cases() -> list[Case]:
    return [
        Case("clip_benchmark", "--prune_param r=-1", _cb_refusal("--enable_pruning", "--prune_strategy", "tome",
                                                                 "--prune_param", "r=-1", contains="r=-1"), slow=True),
        Case("clip_benchmark", "unknown --prune_strategy", _cb_refusal("--enable_pruning", "--prune_strategy", "nope",
                                                                       contains="nope"), slow=True),
        Case("clip_benchmark", "--output into a missing nested folder", _cb_nested_output, slow=True),
        Case("clip_benchmark", "--attention_output into a missing folder", _cb_attention_missing_folder, slow=True),
        Case("clip_benchmark", "--skip_existing over a 0-byte result", _cb_skip_existing_empty, slow=True),
        Case("clip_benchmark", "--prune_calibration 2 vs 4: result names", _cb_calibration_names, slow=True),
    ]


def all_cases() -> list[Case]:
    from robustness_faults import fault_cases  # the second round (same folder)

    return [*_api_cases(), *_report_cases(), *_eval_cases(), *_sweep_cases(), *_clip_benchmark_cases(),
            *fault_cases()]
