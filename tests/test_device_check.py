"""`bash scripts/device_check.sh` runs in CI on the CPU (the fallback path) and its report names every
figure it would produce on a GPU: every (model, dtype, mode) group and every configuration, registered
strategies included, each with a figure or the reason it was not run."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pruning_bench as pb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("device_check") / "speed_gpu.md"
    env = {**os.environ, "PRUNING_BENCH_PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TOME_REFERENCE_PATH", None)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "device_check.sh"), "--output", str(out), "--budget-seconds", "45"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, out.read_text()


def test_cpu_fallback_is_labelled_as_cpu(report):
    stdout, text = report
    assert text.startswith("# GPU speed check: CPU FALLBACK")
    assert "measured on the CPU" in text and "device cpu" in text
    assert "on a GPU the same command names the same figures" in stdout and "ViT-B-16" in stdout and "vit_base_patch16_224" in stdout


def test_report_names_every_figure_of_the_plan(report, monkeypatch):
    from device_check import config_names, configs_for

    monkeypatch.delenv("TOME_REFERENCE_PATH", raising=False)  # the run above had no reference ToMe either

    _, text = report
    rows = [line for line in text.split("## Tables")[0].splitlines() if line.startswith("| tiny_")]
    configs = config_names("tiny_timm")
    assert configs == config_names("tiny_open_clip") and "layer_drop {'keep_layers': 3, 'importance': 'cosine'}" in configs
    assert {s for s, _ in configs_for(4)} >= set(pb.list_strategies()) - {"baseline"}  # every registered strategy
    for model in ("tiny_timm", "tiny_open_clip"):
        for dtype in ("bfloat16", "float32"):
            for mode in ("eager", "compiled"):
                for config in configs:
                    prefix = f"| {model} | {dtype} | {mode} | {config} |"
                    found = [r for r in rows if r.startswith(prefix)]
                    assert len(found) == 1, f"{prefix} appears {len(found)} times"
                    assert re.search(r"img/s, speedup [\d.]+, efficiency [\d.]+ \|$", found[0]) or "not run" in found[0]
    assert len(rows) == 2 * 2 * 2 * len(configs)


def test_eager_groups_measured_and_compiled_path_ran(report):
    _, text = report
    rows = [line for line in text.split("## Tables")[0].splitlines() if line.startswith("| tiny_")]
    eager = [r for r in rows if "| eager |" in r]
    assert eager and all("img/s" in r for r in eager)
    compiled = [r for r in rows if "| compiled |" in r and "img/s" in r]
    assert any("baseline" in r for r in compiled) and any("tome" in r for r in compiled)
    assert "graphs" in text and "recompil" in text


def test_plan_fits_the_gpu_budget_and_names_every_group():
    from device_check import plan

    n = 16
    groups = plan(True, True, n, 5, 2, 450.0)
    assert len(groups) == 12 and {g["mode"] for g in groups} == {"eager", "compiled"}
    assert sum(g["estimate_s"] for g in groups) <= 450.0
    assert all(g["configs"] == n + 1 for g in groups if g["mode"] == "eager" and g["model"] != "open_clip_l14")
    assert all(g["configs"] >= 2 for g in groups if g["mode"] == "compiled" and g["dtype"] == "bfloat16"
               and g["model"] != "open_clip_l14")
    assert all(g["configs"] in (0,) or g["configs"] >= 2 for g in groups)
    more = plan(True, True, n, 5, 2, 3600.0)
    assert sum(g["configs"] for g in more) > sum(g["configs"] for g in groups)  # a larger budget times more


def test_bad_budget_is_a_value_error():
    from device_check import main

    with pytest.raises(ValueError, match="budget-seconds=-1"):
        main(["--budget-seconds", "-1"])


def test_speed_keeps_every_repeat_and_memory_casts_the_model():
    import torch
    from memory import run_model as memory_rows
    from speed import round_robin_repeats

    times = round_robin_repeats({"a": lambda x: x + 1, "b": lambda x: x * 2}, torch.ones(2, 3), warmup=1, repeats=4)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4} and all(t >= 0 for v in times.values() for t in v)
    configs = [("tome", {"r": 8})]
    fp32, bf16 = (memory_rows("tiny_timm", 2, [(s, dict(p)) for s, p in configs], dtype=d) for d in ("float32", "bfloat16"))
    assert list(bf16["weights_mb"] * 2) == pytest.approx(list(fp32["weights_mb"]), rel=1e-3)
    assert "cuda_peak_mb" not in fp32  # the allocator's peak exists on CUDA only; the exact count everywhere
    assert fp32["activations_mb"].iloc[1] < fp32["activations_mb"].iloc[0]


@pytest.mark.parametrize("argv,message", [(["--batch", "0"], "--batch=0"), (["--dtype", "int8"], None)])
def test_speed_refuses_bad_arguments_before_building(argv, message):
    from speed import main

    if message is None:  # argparse refuses a dtype outside the choices
        with pytest.raises(SystemExit):
            main(argv)
    else:
        with pytest.raises(ValueError, match=message):
            main(argv)


def test_speed_counts_per_image_budgets_on_the_timed_batch_and_reports_the_padding():
    """ats keeps a different number of tokens per image: its GMACs are the mean of the timed images' own counts,
    and the padded batch it really runs is reported beside them (`padding`, `efficiency_as_run`)."""
    from speed import build, prepare, speed_table, timed_images

    base = build("tiny_timm")
    configs = [("ats", {"prune_layers": [1, 2], "keep_rate": 0.9}), ("tome", {"r": 2})]
    models, labels, macs, as_run = prepare(base, configs, with_reference=False, batch=8)
    key = "ats {'prune_layers': [1, 2], 'keep_rate': 0.9}"
    count = pb.count_flops(models[key], timed_images(base, 8))
    assert list(as_run) == [key] and as_run[key] == pytest.approx(count.as_run) and macs[key] == pytest.approx(count.gmacs)
    assert len(set(count.per_image)) > 1 and as_run[key] > macs[key]  # the images kept different counts
    times = {k: [1.0] for k in models}
    table = speed_table("tiny_timm", models, labels, macs, times, {}, 8, as_run=as_run).set_index("strategy")
    assert table.loc["ats", "padding"] == pytest.approx(as_run[key] / macs[key] - 1)
    assert table.loc["ats", "efficiency_as_run"] > table.loc["ats", "efficiency"]
    assert table.loc["tome", "padding"] == 0 and table.loc["tome", "efficiency_as_run"] == table.loc["tome", "efficiency"]
