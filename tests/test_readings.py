"""Readings of the benchmark tables are computed from their records: the committed reports and README blocks are
what `python benchmarks/readings.py` makes of the committed jsonl, and the reading rules hold on made-up tables
(a gap within noise groups its neighbours, a significant one orders them)."""
import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from pruning_bench.report.uncertainty import pack_correct

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
N = 2000


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import finetune_tome
        import readings

        spec = importlib.util.spec_from_file_location("accuracy_benchmark", BENCHMARKS / "accuracy.py")
        accuracy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(accuracy)
        yield readings, accuracy, finetune_tome
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_committed_reports_and_readme_are_what_the_records_give(bench, tmp_path):
    readings, accuracy, finetune_tome = bench
    for name in ("accuracy.jsonl", "accuracy.csv", "accuracy.md", "finetune_tome.jsonl", "finetune_tome.md"):
        shutil.copy(ROOT / "reports" / name, tmp_path / name)
    accuracy.rebuild_table(tmp_path / "accuracy")
    finetune_tome.rebuild(tmp_path / "finetune_tome")
    for name in ("accuracy.md", "accuracy.csv", "finetune_tome.md"):
        assert (tmp_path / name).read_text() == (ROOT / "reports" / name).read_text(), (
            f"reports/{name} differs from what its records give: run python benchmarks/readings.py")
    readme = (ROOT / "README.md").read_text()
    for name, body in readings.readme_blocks(ROOT).items():
        assert readings.block(readme, name) == body, f"README block {name} is stale: run python benchmarks/readings.py"
    assert "## Readings" in (ROOT / "reports" / "accuracy.md").read_text()


def correct(n_right, flips=(), seed=0):
    """Per-image correctness: the first `n_right` images right, then each (start, stop) range flipped."""
    bits = np.zeros(N, bool)
    bits[:n_right] = True
    for start, stop in flips:
        bits[start:stop] = ~bits[start:stop]
    return bits


def record(strategy, bits, group="field", budget=0.6, per_image=True, agreement=0.8, **extra):
    r = {"id": f"{strategy}@{budget}/{group}", "strategy": strategy, "group": group, "budget": budget,
         "start_layer": extra.pop("start_layer", None), "params": extra, "gmacs": 3.0, "variant": "",
         "cifar10": {"acc1": float(bits.mean()), "acc1_unpruned": 0.75, "agreement": agreement, "images": N}}
    if per_image:
        r["per_image"] = pack_correct(bits)
    return r


def test_a_gap_within_noise_groups_neighbours_and_a_significant_one_orders_them(bench):
    readings = bench[0]
    a = record("a", correct(1400))
    b = record("b", correct(1400, [(0, 60), (1400, 1450)]))  # 60 images lost, 50 gained: within noise
    c = record("c", correct(1400, [(0, 260), (1400, 1450)]))  # 200 more lost: significant
    assert not readings.gap(a, b).significant and readings.gap(b, c).significant
    rows = [("c", c), ("a", a), ("b", b)]
    assert readings.ordering(rows) == "a (-5.0) ~ b (-5.5) > c (-15.5)"
    assert readings.groups_within_noise(rows) == [["a", "b"], ["c"]]


def test_a_chain_of_gaps_within_noise_is_one_group_even_when_its_ends_differ(bench):
    readings = bench[0]
    a = record("a", correct(1400))
    b = record("b", correct(1400, [(0, 150), (1400, 1520)]))  # 150 lost, 120 gained
    c = record("c", correct(1400, [(0, 300), (1400, 1640)]))  # as many again from b
    assert not readings.gap(a, b).significant and not readings.gap(b, c).significant
    assert readings.gap(a, c).significant
    assert readings.groups_within_noise([("a", a), ("b", b), ("c", c)]) == [["a", "b", "c"]]


def test_gaps_fall_back_to_the_agreement_bound_and_to_no_interval(bench):
    readings = bench[0]
    a = record("a", correct(1400), per_image=False, agreement=0.9)
    b = record("b", correct(1300), per_image=False, agreement=0.85)
    g = readings.gap(a, b)
    assert g.method == "agreement bound" and g.diff == pytest.approx(0.05)
    half = 1.959963984540054 * np.sqrt((0.25 - 0.05 ** 2) / N)
    assert (g.low, g.high) == pytest.approx((0.05 - half, 0.05 + half))
    del b["cifar10"]["images"]
    g = readings.gap(a, b)
    assert g.method == "none" and not g.significant and g.text() == "+5.0 (no interval)"


def test_the_field_reading_follows_the_records(bench):
    readings = bench[0]
    base = record("baseline", correct(1500), group="baseline", budget=None)
    base["id"], base["gmacs"] = "baseline", 5.0  # every row at 60% of its MACs, the budget
    close = [base, record("evit", correct(1400)), record("cls_topk", correct(1400, [(0, 60), (1400, 1450)]))]
    apart = [base, record("evit", correct(1400)), record("cls_topk", correct(1400, [(0, 200)]))]
    assert "evit (-5.0) ~ cls_topk (-5.5)" in "\n".join(readings.accuracy_readings(close))
    assert "evit (-5.0) > cls_topk (-15.0)" in "\n".join(readings.accuracy_readings(apart))
    section = readings.accuracy_section(apart)
    assert section.startswith("## Readings\n") and "The field at 60% MACs" in section


def test_a_field_row_off_its_budget_says_at_what_macs(bench):
    readings = bench[0]
    base = record("baseline", correct(1500), group="baseline", budget=None)
    base["id"], base["gmacs"] = "baseline", 5.0
    on, off = record("evit", correct(1400)), record("ats", correct(1300))
    on["gmacs"], off["gmacs"] = 3.04, 3.25  # 60.8% and 65% of the unpruned MACs, at a 60% budget
    text = "\n".join(readings.accuracy_readings([base, on, off]))
    assert "evit (-5.0) > ats at 65% MACs (-10.0)" in text


def test_the_proportional_attention_reading_pairs_tome_with_and_without_it_and_tofu(bench):
    readings = bench[0]
    rows = [record("tome", correct(1400), group="main"),
            record("tome", correct(1400, [(0, 100)]), prop_attn=False),  # 100 images lost without it
            record("tofu", correct(1400, [(0, 120)]))]
    text = "\n".join(readings.accuracy_readings(rows))
    assert "ToMe at 60% MACs with proportional attention (its default) against without: +5.0 [" in text
    assert "its lead over ToFu (which runs without it) with it +6.0 [" in text and "without it +1.0 [" in text
    assert "proportional attention" not in "\n".join(readings.accuracy_readings(rows[:1] + rows[2:]))


def test_the_fine_tuning_reading_names_a_run_short_of_its_merges(bench):
    readings = bench[0]

    def run(r, p, seed, merges, acc1=0.2):
        return {"key": f"r{r}_p{p}_s{seed}", "r": r, "p": p, "seed": seed, "acc1": acc1,
                "gmacs": 1.0 - 0.01 * sum(merges), "train_images_per_second": 10.0, "merges_per_layer": merges}

    rows = [run(0, 1.0, s, [0, 0], acc1=0.2 + 0.01 * s) for s in range(3)]
    rows += [run(4, 1.0, s, [4, 4]) for s in range(3)] + [run(4, 0.4, s, [4, 4 - (s == 2)]) for s in range(3)]
    text = "\n".join(readings.finetune_readings(rows))
    assert "match_fraction 1.0: 24 of 24; match_fraction 0.4: 23 of 24 (r4_p0.4_s2 merged 7 of 8)" in text
    assert "every merge asked was done" not in text
    full = [x for x in rows if x["p"] == 1.0]
    assert "(every merge asked was done)" in "\n".join(readings.finetune_readings(full))


def test_a_readme_block_is_replaced_between_its_markers_only(bench):
    readings = bench[0]
    text = "before\n<!-- readings:x:start -->\nold\n<!-- readings:x:end -->\nafter\n"
    new = readings.replace_block(text, "x", "new\nlines")
    assert new == "before\n<!-- readings:x:start -->\nnew\nlines\n<!-- readings:x:end -->\nafter\n"
    assert readings.block(new, "x") == "new\nlines"
    with pytest.raises(ValueError, match="readings:y"):
        readings.replace_block(text, "y", "z")
