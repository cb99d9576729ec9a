"""`benchmarks/decision_time.py` splits a forward into the strategy's decisions and the rest."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_decision_time_is_inside_the_forward_and_the_rest_is_what_it_leaves():
    from decision_time import run_model

    configs = [("zero_tprune", {"r": 2}), ("ats", {"prune_layers": [1, 2], "keep_rate": 0.5})]
    table, records = run_model("tiny_timm", configs, batch=4, warmup=1, repeats=3)
    rows = table.set_index("strategy")
    assert rows.loc["baseline", "decision_ms"] == 0 and rows.loc["baseline", "efficiency"] == pytest.approx(1.0)
    for name in ("zero_tprune", "ats"):
        row = rows.loc[name]
        assert 0 < row["decision_ms"] < row["forward_ms"] and 0 < row["decision_macs_share"] < 1
        assert len(records["decision_seconds"][f"{name} {dict(configs[[c for c, _ in configs].index(name)][1])}"]) == 4
        base_ms, gmacs, base_gmacs = rows.loc["baseline", "forward_ms"], row["gmacs"], rows.loc["baseline", "gmacs"]
        rest = base_ms / (row["forward_ms"] - row["decision_ms"]) * gmacs * (1 - row["decision_macs_share"]) / base_gmacs
        assert row["efficiency_rest"] == pytest.approx(rest)
    assert records["load_average"]["cpus"] >= 1


def test_decision_time_refuses_an_unknown_strategy_before_building():
    from decision_time import main

    with pytest.raises(SystemExit, match="--only: nope not in FIELD_CONFIGS"):
        main(["--only", "nope"])
