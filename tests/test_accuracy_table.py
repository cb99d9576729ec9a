"""The accuracy benchmark's table: plan order, the per-budget summary, and ids read alike by a resume and a rebuild."""
import importlib.util
import json
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def accuracy():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("accuracy_benchmark", BENCHMARKS / "accuracy.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def record(id_, strategy, group, budget, params, acc1, start_layer=None, gmacs=4.0):
    return {
        "id": id_, "strategy": strategy, "group": group, "budget": budget, "start_layer": start_layer,
        "params": params, "gmacs": gmacs, "images_per_second": 20.0, "images_per_second_baseline_same_window": 16.0,
        "cifar10": {"acc1": acc1, "acc1_unpruned": 0.7, "agreement": 0.9, "cosine": 0.99, "cosine_centred": 0.9},
        "imagenet": None,
    }


def test_summary_pivots_delta_by_budget(accuracy):
    records = [
        record("baseline", "baseline", "baseline", None, {}, 0.7, gmacs=5.0),
        record("a@0.80/s1", "anchor_diversity", "main", 0.8, {"top_m": 10, "alpha": 0.5}, 0.65, 1),
        record("a@0.60/s1", "anchor_diversity", "main", 0.6, {"top_m": 5, "alpha": 0.5}, 0.55, 1),
        record("a[alpha=1]@0.80/s1", "anchor_diversity", "alpha", 0.8, {"top_m": 10, "alpha": 1.0}, 0.68, 1),
        record("h@0.80", "head_prune", "structured", 0.8, {"head_ratio": 0.2, "importance": "fisher"}, 0.3),
        record("t[match_fraction=0.4]@0.80", "tome", "match_fraction", 0.8, {"r": 8, "match_fraction": 0.4}, 0.6),
    ]
    frame = accuracy.table(records)
    assert frame.loc[1, "macs_ratio"] == pytest.approx(0.8)  # fvcore GMACs over the baseline's
    summary = accuracy.summary(frame)
    rows = summary.set_index("row")
    assert list(summary.columns[-2:]) == ["80% MACs", "60% MACs"]
    assert rows.loc["anchor_diversity", "80% MACs"] == "-5.0"
    assert rows.loc["anchor_diversity", "60% MACs"] == "-15.0"
    assert rows.loc["anchor_diversity [alpha=1.0]", "80% MACs"] == "-2.0"
    assert rows.loc["anchor_diversity [alpha=1.0]", "60% MACs"] == ""  # not measured is blank, not nan
    assert rows.loc["head_prune [fisher]", "80% MACs"] == "-40.0"
    assert rows.loc["tome [match_fraction=0.4]", "80% MACs"] == "-10.0"
    text = accuracy.markdown(frame, "# header\n")
    assert "nan" not in text and "## All measurements" in text


def test_records_follow_the_plan_not_completion_order(accuracy):
    configs = [{"id": "baseline"}, {"id": "x"}, {"id": "y"}]
    done = {"y": {"id": "y"}, "old": {"id": "old"}, "baseline": {"id": "baseline"}, "x": {"id": "x"}}
    assert [r["id"] for r in accuracy.in_plan_order(done, configs)] == ["baseline", "x", "y", "old"]


def test_field_and_protocol_rows_name_their_schedule(accuracy):
    records = [
        record("baseline", "baseline", "baseline", None, {}, 0.7, gmacs=5.0),
        record("cls_topk@0.80/s1", "cls_topk", "main", 0.8, {"keep": 200, "start_layer": 1}, 0.65, 1),
        record("anchor_diversity[prune_layers=3,6,9]@0.80/field", "anchor_diversity", "field", 0.8,
               {"prune_layers": [3, 6, 9], "keep_rate": 0.8}, 0.66),
        record("evit@0.60/field", "evit", "field", 0.6, {"prune_layers": [3, 6, 9], "keep_rate": 0.5}, 0.6),
        record("evit@evit_protocol", "evit", "evit_protocol", None, {"prune_layers": [3, 6, 9], "keep_rate": 0.7},
               0.69, gmacs=3.5),
    ]
    records[2]["variant"], records[3]["variant"] = "prune_layers=3,6,9", ""
    records[4]["variant"] = "keep_rate=0.7 at 3,6,9"
    summary = accuracy.summary(accuracy.table(records))
    rows = summary.set_index("row")
    assert list(summary.columns[-3:]) == ["80% MACs", "60% MACs", "EViT protocol"]  # protocol last, budgets descending
    assert rows.loc["anchor_diversity [prune_layers=3,6,9]", "80% MACs"] == "-4.0"
    assert rows.loc["evit", "60% MACs"] == "-10.0"
    assert rows.loc["evit [keep_rate=0.7 at 3,6,9]", "EViT protocol"] == "-1.0 (70% MACs)"  # what it cost beside it
    assert rows.loc["cls_topk", "EViT protocol"] == ""


def test_field_configs_resolve_their_knob_only_when_run(accuracy, monkeypatch):
    calls = []

    class Matched(dict):
        ratio = 0.61

    def fake_match(model, strategy, target, images=None, tolerance=None, **fixed):
        calls.append((strategy, target, fixed, len(images)))
        return Matched({**fixed, "keep_rate": 0.45})

    monkeypatch.setattr(accuracy.pb, "match_macs", fake_match)
    batch = torch.zeros(16, 3, 8, 8)
    config = accuracy.field_config(object(), batch, "anchor_diversity", 0.6, {"prune_layers": [3, 6, 9]})
    assert config["id"] == "anchor_diversity[prune_layers=3,6,9]@0.60/field" and config["params"] is None and not calls
    config["resolve"]()
    assert calls == [("anchor_diversity", 0.6, {"prune_layers": [3, 6, 9]}, 1)]
    assert config["params"] == {"prune_layers": [3, 6, 9], "keep_rate": 0.45} and config["analytic_ratio"] == 0.61
    accuracy.field_config(object(), batch, "ats", 0.6, {})["resolve"]()  # per-image counts: matched on their mean
    assert calls[-1] == ("ats", 0.6, {}, 16)


def test_ids_written_with_other_digits_name_one_configuration(accuracy):
    key = accuracy.id_key
    assert key("tome[match_fraction=0.80]@0.8") == key("tome[match_fraction=0.8]@0.80") == "tome[match_fraction=0.8]@0.8"
    assert key("anchor_diversity[alpha=0.50000001]@0.60/s1") == key("anchor_diversity[alpha=0.5]@0.60/s1")
    assert key("anchor_diversity[prune_layers=3,6,9]@0.80/field") == "anchor_diversity[prune_layers=3,6,9]@0.8/field"
    assert len({key(i) for i in ("tome@0.80", "tome@0.60", "cls_topk@0.80/s1", "cls_topk@0.80/s0",
                                 "anchor_diversity[alpha=1]@0.80/s1", "anchor_diversity[alpha=0]@0.80/s1")}) == 6


def test_every_recorded_configuration_is_one_the_default_plan_names(accuracy):
    """reports/accuracy.jsonl against the ids the script plans now: a resume runs only what has no record."""
    configs = accuracy.plan(None, None, None, accuracy.build_parser().parse_args([]), None)
    done = accuracy.done_ids(BENCHMARKS.parent / "reports" / "accuracy.jsonl")
    planned = {accuracy.id_key(c["id"]) for c in configs}
    assert set(done) <= planned  # nothing measured under an id the plan no longer names
    assert [c["id"] for c in accuracy.to_run(configs, done)] == [c["id"] for c in configs
                                                                 if accuracy.id_key(c["id"]) not in done]


def test_a_resume_and_the_table_rebuild_read_old_ids_alike(accuracy, tmp_path):
    """Records written under older ids (other digits) and one configuration recorded twice: a resume runs neither
    again, `--table_only` shows each configuration once (the later record), in plan order, numbers unchanged."""
    options = ["--budgets", "0.8", "--no-structured", "--sweep_budgets", "--alpha_budgets", "--field_budgets",
               "--no-protocol", "--out", str(tmp_path / "acc")]
    records = [record("baseline", "baseline", "baseline", None, {}, 0.7, gmacs=5.0),
               record("cls_topk@0.8/s1", "cls_topk", "main", 0.8, {"keep": 200}, 0.61, 1),
               record("tome@0.8", "tome", "main", 0.8, {"r": 8}, 0.66),
               record("cls_topk@0.80/s1", "cls_topk", "main", 0.8, {"keep": 200}, 0.62, 1),
               record("kept@0.50", "kept", "main", 0.5, {}, 0.5)]  # from another plan
    (tmp_path / "acc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    configs = accuracy.plan(None, None, None, accuracy.build_parser().parse_args(options), None)
    assert [c["id"] for c in configs] == ["baseline", "tome@0.80", "anchor_diversity@0.80/s1", "cls_topk@0.80/s1",
                                          "random_drop@0.80/s1"]
    done = accuracy.done_ids(tmp_path / "acc.jsonl")
    assert [c["id"] for c in accuracy.to_run(configs, done)] == ["anchor_diversity@0.80/s1", "random_drop@0.80/s1"]
    assert [c["id"] for c in accuracy.to_run(configs, done, only=["tome@0.8", "random_drop@0.8/s1"])] == \
        ["random_drop@0.80/s1"]
    accuracy.main(["--table_only", *options])
    table = pd.read_csv(tmp_path / "acc.csv")
    assert list(table["strategy"]) == ["baseline", "tome", "cls_topk", "kept"]
    assert list(table["acc1"]) == [0.7, 0.66, 0.62, 0.5]


def test_a_field_strategy_without_a_knob_reaches_the_budget_itself(accuracy, monkeypatch):
    monkeypatch.setattr(accuracy.pb, "match_macs", lambda *a, **k: pytest.fail("diffrate is not matched by a knob"))
    calibration = [object()]
    config = accuracy.field_config(object(), None, "diffrate", 0.8, {}, calibration)
    assert config["id"] == "diffrate@0.80/field" and "resolve" not in config
    assert config["params"] == {"target_ratio": 0.8, "calibration": calibration}
    assert ("diffrate", {}) in accuracy.FIELD
