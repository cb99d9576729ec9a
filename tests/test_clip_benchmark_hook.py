"""The start-up hook: it adapts only its targets, never breaks them, and is installed by both install modes."""
import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from pruning_bench.clip_benchmark_ext import hook

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN = Path(PYTHON).parent


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A package `pbfake` with a module `pbfake.target` and adapters in `pbfake_adapters`."""
    (tmp_path / "pbfake").mkdir()
    (tmp_path / "pbfake" / "__init__.py").write_text("")
    (tmp_path / "pbfake" / "target.py").write_text("VALUE = 'upstream'\ndef run():\n    return 'upstream'\n")
    (tmp_path / "pbfake" / "other.py").write_text("VALUE = 'other'\n")
    (tmp_path / "pbfake_adapters.py").write_text(textwrap.dedent("""
        def adapt(module):
            module.VALUE = 'adapted'
        def broken(module):
            raise RuntimeError('boom')
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in ("pbfake", "pbfake.target", "pbfake.other", "pbfake_adapters"):
        sys.modules.pop(name, None)


def with_finder(targets):
    finder = hook.ClipBenchmarkFinder(targets)
    sys.meta_path.insert(0, finder)
    return finder


def test_target_is_adapted_after_it_ran_and_others_are_not(fake_package):
    finder = with_finder({"pbfake.target": "pbfake_adapters:adapt"})
    try:
        target = importlib.import_module("pbfake.target")
        other = importlib.import_module("pbfake.other")
    finally:
        sys.meta_path.remove(finder)
    assert target.VALUE == "adapted" and target.run() == "upstream"
    assert other.VALUE == "other"
    assert "def run" in target.__loader__.get_source("pbfake.target")  # loader services still work


def test_failing_adapter_leaves_module_as_upstream_with_one_line(fake_package, capsys):
    finder = with_finder({"pbfake.target": "pbfake_adapters:broken"})
    try:
        target = importlib.import_module("pbfake.target")
    finally:
        sys.meta_path.remove(finder)
    assert target.VALUE == "upstream"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: boom" in err and "runs unmodified" in err


def test_missing_adapter_module_is_also_harmless(fake_package, capsys):
    finder = with_finder({"pbfake.target": "no_such_module_pb:adapt"})
    try:
        assert importlib.import_module("pbfake.target").VALUE == "upstream"
    finally:
        sys.meta_path.remove(finder)
    assert "ModuleNotFoundError" in capsys.readouterr().err


@pytest.mark.parametrize("value, expected", [(None, "on"), ("on", "on"), ("compat", "compat"), ("off", "off"), ("0", "off")])
def test_mode_from_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv(hook.ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(hook.ENV_VAR, value)
    assert hook.mode() == expected
    assert set(hook.targets_for(expected)) <= set(hook.TARGETS)
    cli_adapter = hook.targets_for(expected).get("clip_benchmark.cli", "")
    assert ("integration" in cli_adapter) == (expected == "on")  # compat mode only keeps `{pruning}` harmless


def python(code, **env):
    environment = {**os.environ, **env}
    return subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, env=environment, timeout=300)


def test_installed_environment_runs_the_hook_at_start_up():
    code = "import sys; print(any(type(f).__name__ == 'ClipBenchmarkFinder' for f in sys.meta_path))"
    assert python(code).stdout.strip() == "True"
    assert python(code, **{hook.ENV_VAR: "off"}).stdout.strip() == "False"


def test_clip_benchmark_help_lists_every_flag():
    out = subprocess.run([str(BIN / "clip_benchmark"), "eval", "--help"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0
    for flag in ("--enable_pruning", "--prune_strategy", "--k_anchors", "--top_m", "--alpha", "--prune_param",
                 "--extract_attention", "--attention_output", "--measure_efficiency", "--dataset", "--skip_existing"):
        assert flag in out.stdout
    assert "pruning-bench strategies" in " ".join(out.stdout.split())


def test_compat_mode_names_a_pruning_template_baseline_instead_of_crashing(tmp_path):
    code = f"""
import sys
sys.path.insert(0, {str(Path(__file__).parent)!r})
import tiny_clip as tiny
tiny.write_webdataset({str(tmp_path / 'wds')!r})
model = tiny.register_tiny_clip({str(tmp_path)!r})
from clip_benchmark import cli
sys.argv = ["clip_benchmark", "eval", "--dataset", "wds/tiny", "--dataset_root", {str(tmp_path / 'wds')!r},
            "--model", model, "--pretrained", "", "--task", "zeroshot_classification", "--batch_size", "4",
            "--num_workers", "0", "--no_amp", "--quiet", "--output", {str(tmp_path / '{pruning}_{task}.json')!r}]
cli.main()
"""
    done = python(code, **{hook.ENV_VAR: "compat"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "baseline_zeroshot_classification.json").exists()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """`pip install --no-deps --target DIR .`: a regular (non-editable) install of this checkout."""
    target = tmp_path_factory.mktemp("target") / "site"
    done = subprocess.run(
        [PYTHON, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return target


def test_regular_install_ships_the_pth_and_it_works_from_a_site_dir(installed, tmp_path):
    target = installed
    pth = target / "pruning_bench_clip_benchmark.pth"
    assert pth.is_file() and pth.read_text().startswith("import ")
    assert (target / "pruning_bench" / "clip_benchmark_ext" / "hook.py").is_file()
    # -S: no environment site-packages, so only the freshly installed copy can answer
    code = (f"import site, sys; site.addsitedir({str(target)!r}); import pruning_bench; "
            "print(pruning_bench.__file__); print([type(f).__name__ for f in sys.meta_path])")
    out = subprocess.run([PYTHON, "-S", "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, finders = out.stdout.splitlines()
    assert where.startswith(str(target)) and "ClipBenchmarkFinder" in finders


def test_pth_line_is_silent_when_the_package_is_gone(installed, tmp_path):
    target = tmp_path / "site"
    target.mkdir()
    shutil.copy(installed / "pruning_bench_clip_benchmark.pth", target)
    code = f"import site; site.addsitedir({str(target)!r}); print('alive')"
    out = subprocess.run([PYTHON, "-S", "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.strip() == "alive" and out.stderr == ""


def test_editable_install_ships_the_pth(tmp_path):
    """`pip install -e .` into a scratch environment: the .pth lands beside setuptools' editable finder."""
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    scratch_python = venv / "bin" / "python"
    done = subprocess.run([PYTHON, "-m", "pip", "--python", str(scratch_python), "install", "--no-deps", "-q",
                           "-e", str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    site_packages = Path(subprocess.run([str(scratch_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                        capture_output=True, text=True, check=True).stdout.strip())
    assert (site_packages / "pruning_bench_clip_benchmark.pth").is_file()
    assert list(site_packages.glob("__editable__*pruning_bench*.pth"))
    code = "import sys, pruning_bench; print(pruning_bench.__file__); print([type(f).__name__ for f in sys.meta_path])"
    out = subprocess.run([str(scratch_python), "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    where, finders = out.stdout.splitlines()
    assert where == str(ROOT / "pruning_bench" / "__init__.py") and "ClipBenchmarkFinder" in finders


def test_this_environment_has_the_pth_beside_the_editable_install():
    site_packages = Path(sysconfig.get_paths()["purelib"])
    assert (site_packages / "pruning_bench_clip_benchmark.pth").is_file()
