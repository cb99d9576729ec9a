"""Report pictures and per-block tables: PNGs of the expected size, Pareto fronts, heads/MLP/tokens per block."""
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import pruning_bench as pb
from conftest import tiny_timm
from pruning_bench.report import compare, load_results
from pruning_bench.report.layers import layer_markdown, layer_sections, structure_frame, token_schedule_frame
from pruning_bench.report.plots import figure_pixels, pareto_mask, varying_labels, write_plots


def write_result(root, *, model="ViT-B-32", pretrained="openai", dataset="wds/cifar10", task="zeroshot_classification",
                 strategy=None, params=None, acc1=0.9, gmacs=4.4, ips=100.0, tokens=None, structure=None, metrics=None):
    """A result JSON shaped like `clip_benchmark eval --enable_pruning` writes it (numbers chosen by the test)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    slug = "baseline" if strategy is None else "-".join([strategy] + [f"{k}{v}" for k, v in (params or {}).items()])
    efficiency = {"gmacs": gmacs, "gflops": None if gmacs is None else 2 * gmacs, "images_per_second": ips,
                  "tokens_per_layer": tokens or [50] * 12, "batch_size": 8, "device": "cpu", "dtype": "float32"}
    if structure is not None:
        efficiency["structure"] = structure
    data = {"dataset": dataset, "model": model, "pretrained": pretrained, "task": task, "language": "en",
            "metrics": metrics or {"acc1": acc1, "acc5": 1.0, "mean_per_class_recall": acc1},
            "pruning": None if strategy is None else {"strategy": strategy, "params": params or {}},
            "efficiency": efficiency}
    path = root / f"{dataset.replace('/', '_')}_{model}_{pretrained}_{slug}.json"
    path.write_text(json.dumps(data))
    return path


# (strategy, params, acc1, gmacs, images/s) for one model; baseline 0.90 at 4.4 GMACs, 100 images/s
RUNS = [
    ("tome", {"r": 4}, 0.89, 3.6, 118), ("tome", {"r": 8}, 0.87, 2.9, 140), ("tome", {"r": 16}, 0.76, 1.8, 190),
    ("anchor_diversity", {"k_anchors": 5, "top_m": 30}, 0.80, 2.0, 160),
    ("anchor_diversity", {"k_anchors": 10, "top_m": 50}, 0.86, 2.6, 150),
    ("random_drop", {"keep": 30}, 0.70, 2.1, 165),
]


def write_sweep(root, dataset="wds/cifar10", model="ViT-B-32", scale=1.0):
    write_result(root, dataset=dataset, model=model, acc1=0.9 * scale)
    for strategy, params, acc1, gmacs, ips in RUNS:
        write_result(root, dataset=dataset, model=model, strategy=strategy, params=params, acc1=acc1 * scale,
                     gmacs=gmacs, ips=ips)
    return root


def squeeze(text):
    return re.sub(" +", " ", text)


def assert_png(path, size):
    with Image.open(path) as image:
        image.verify()  # a complete, uncorrupted PNG
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == size
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # something was drawn, not a blank canvas
    return pixels


# ---------------------------------------------------------------- Pareto front


def test_pareto_front_lower_cost_better():
    gmacs = np.array([4.4, 3.6, 2.9, 2.1, 2.0, 2.0, 1.8, 3.0])
    acc = np.array([90, 89, 87, 70, 80, 79, 76, 86])
    assert pareto_mask(gmacs, acc, larger_x_better=False).tolist() == [
        True, True, True, False, True, False, True, False]


def test_pareto_front_larger_speed_better():
    speed = np.array([100, 118, 140, 165, 160, 190])
    acc = np.array([90, 89, 87, 70, 80, 76])
    assert pareto_mask(speed, acc, larger_x_better=True).tolist() == [True, True, True, False, True, True]


def test_pareto_front_keeps_one_of_exact_duplicates():
    assert pareto_mask(np.array([2.0, 2.0]), np.array([80, 80]), larger_x_better=False).sum() == 1


def test_labels_show_only_the_parameters_that_vary():
    import pandas as pd

    params = pd.Series(["r=4, prop_attn=True, r_list=[4, 8]", "r=8, prop_attn=True, r_list=[4, 8]"])
    assert varying_labels(params).tolist() == ["r=4", "r=8"]


# ---------------------------------------------------------------- pictures


@pytest.mark.parametrize("n_datasets", [1, 2, 4])
def test_plots_are_valid_pngs_of_the_expected_size(tmp_path, n_datasets):
    for i in range(n_datasets):
        write_sweep(tmp_path / "res", dataset=f"wds/set{i}", scale=1 - 0.1 * i)
    table = compare(load_results([tmp_path / "res"]))
    paths = write_plots(table, tmp_path / "out" / "demo")
    assert [p.name for p in paths] == ["demo_accuracy_vs_gmacs.png", "demo_accuracy_vs_throughput.png"]
    cols = min(3, n_datasets)
    rows = -(-n_datasets // cols)
    assert figure_pixels(n_datasets) == (600 * cols, 480 * rows + 84)
    for path in paths:
        assert_png(path, figure_pixels(n_datasets))


def test_one_panel_figure_is_600_by_564(tmp_path):
    table = compare(load_results([write_sweep(tmp_path / "res")]))
    for path in write_plots(table, tmp_path / "x"):
        assert_png(path, (600, 564))


def test_runs_without_efficiency_give_no_plot(tmp_path):
    write_result(tmp_path / "res", gmacs=None, ips=None)
    write_result(tmp_path / "res", strategy="tome", params={"r": 8}, gmacs=None, ips=None)
    assert write_plots(compare(load_results([tmp_path / "res"])), tmp_path / "x") == []
    assert not list(tmp_path.glob("x*.png"))


def test_throughput_plot_needs_only_speed(tmp_path):
    write_result(tmp_path / "res", gmacs=None)
    write_result(tmp_path / "res", strategy="tome", params={"r": 8}, gmacs=None, ips=150)
    paths = write_plots(compare(load_results([tmp_path / "res"])), tmp_path / "x")
    assert [p.name for p in paths] == ["x_accuracy_vs_throughput.png"]


def test_panel_rings_the_front_and_stars_the_baseline(tmp_path):
    """The drawn artists: rings exactly on the Pareto points, one star at the baseline, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from pruning_bench.report.plots import _draw_panel, _strategy_colours

    table = compare(load_results([write_sweep(tmp_path / "res")]))
    fig, ax = plt.subplots()
    _draw_panel(ax, table, "gmacs", False, _strategy_colours(set(table["strategy"]) - {"baseline"}))
    rings = [c for c in ax.collections if len(c.get_facecolors()) == 0]
    assert len(rings) == 1
    ringed = {(round(x, 3), round(y, 3)) for x, y in rings[0].get_offsets()}
    assert ringed == {(4.4, 90.0), (3.6, 89.0), (2.9, 87.0), (2.6, 86.0), (2.0, 80.0), (1.8, 76.0)}
    stars = [c for c in ax.collections if c not in rings and len(c.get_offsets()) == 1]
    assert [tuple(np.round(c.get_offsets()[0], 3)) for c in stars] == [(4.4, 90.0)]
    lines = {tuple(line.get_xdata()) for line in ax.lines if line.get_marker() == "o"}
    assert lines == {(1.8, 2.9, 3.6), (2.0, 2.6), (2.1,)}
    plt.close(fig)


# ---------------------------------------------------------------- per-block tables


def _tiny_stats(strategy, **params):
    model = tiny_timm(depth=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pb.prune(model, strategy, **params) as handle:
            with torch.no_grad():
                model(torch.randn(2, 3, 32, 32))
            return handle.stats()


def test_head_prune_table_matches_the_pruned_model(tmp_path):
    stats = _tiny_stats("head_prune", head_ratio=0.3, mlp_ratio=0.3, importance="magnitude", scope="global")
    frame = structure_frame(stats)
    assert frame["heads"].tolist() == stats["heads_per_layer"] and (frame["heads_total"] == 4).all()
    assert frame["mlp_hidden"].tolist() == stats["mlp_hidden_per_layer"] and (frame["mlp_hidden_total"] == 256).all()
    assert np.allclose(frame["head_sparsity"], 1 - np.array(stats["heads_per_layer"]) / 4)
    record = json.loads(write_result(tmp_path, strategy="head_prune", params={"head_ratio": 0.3, "mlp_ratio": 0.3},
                                     tokens=stats["tokens_per_layer"], structure=stats).read_text())
    text = squeeze(layer_markdown([record]))
    assert "### Heads and MLP width kept per block" in text
    kept, total = sum(stats["heads_per_layer"]), 24
    assert f"heads kept: {kept} of {total} ({(1 - kept / total) * 100:.2f}% removed)" in text
    for block, heads in enumerate(stats["heads_per_layer"]):
        assert f"| {block} | {heads} / 4 | {(1 - heads / 4) * 100:.2f}% |" in text
    assert "Token schedule" not in text  # a structured run alone has no token schedule


def test_layer_drop_table_marks_dropped_blocks():
    stats = _tiny_stats("layer_drop", drop=[1, 4])
    frame = structure_frame(stats)
    assert frame["dropped"].tolist() == [False, True, False, False, True, False]
    text = layer_markdown([{"model": "tiny", "dataset": "d", "pruning": {"strategy": "layer_drop", "params": {"drop": [1, 4]}},
                            "efficiency": {"tokens_per_layer": stats["tokens_per_layer"], "structure": stats}}])
    assert text.count("| dropped ") == 2 * 4 and "blocks kept: 4 of 6" in text


def test_token_schedule_rows_per_configuration(tmp_path):
    write_result(tmp_path, tokens=[65] * 6)
    for r in (2, 8):
        write_result(tmp_path, strategy="tome", params={"r": r}, tokens=_tiny_stats("tome", r=r)["tokens_per_layer"])
    write_result(tmp_path, strategy="cls_topk", params={"keep": 16}, tokens=_tiny_stats("cls_topk", keep=16)["tokens_per_layer"])
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    frame = token_schedule_frame(records)
    assert list(frame.index) == ["baseline", "tome r=2", "tome r=8", "cls_topk keep=16"]
    assert frame.loc["tome r=8"].tolist() == [65, 57, 49, 41, 33, 25, 270]
    assert frame.loc["cls_topk keep=16"].tolist() == [65, 65, 17, 17, 17, 17, 198]
    text = layer_sections(compare(load_results([tmp_path])))
    assert "| tome r=8 | 65 | 57 | 49 | 41 | 33 | 25 | 270 (69%) |" in squeeze(text)


def test_no_per_block_section_for_baselines_only(tmp_path):
    write_result(tmp_path)
    assert layer_sections(compare(load_results([tmp_path]))) == ""


@pytest.mark.parametrize("block, key", [("pruning", "stats"), ("efficiency", "pruning_stats"), ("efficiency", None)])
def test_structure_is_found_where_writers_put_it(block, key):
    from pruning_bench.report.layers import structure_of

    stats = {"heads_per_layer": [2, 3], "mlp_hidden_per_layer": [10, 12], "layers_kept": [0, 1]}
    record = {"pruning": {"strategy": "head_prune", "params": {}}, "efficiency": {"tokens_per_layer": [5, 5]}}
    record[block].update({key: stats} if key else stats)
    assert structure_of(record) == stats


def test_legend_stays_inside_a_one_panel_figure_with_many_strategies(tmp_path):
    import matplotlib.pyplot as plt
    from pruning_bench.report.plots import accuracy_figure

    write_sweep(tmp_path)
    for i, name in enumerate(["cls_topk", "head_prune", "layer_drop"]):
        write_result(tmp_path, strategy=name, params={"x": 1}, acc1=0.8, gmacs=3.0 - i / 10, ips=120)
    fig = accuracy_figure(compare(load_results([tmp_path])), "gmacs")
    fig.canvas.draw()
    box = fig.legends[0].get_window_extent()
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width and box.y0 >= 0
    assert box.y1 <= fig.axes[0].get_tightbbox().y0 + 1  # below the panel and its axis labels
    plt.close(fig)
