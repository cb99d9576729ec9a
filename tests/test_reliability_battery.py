"""The robustness battery (benchmarks/robustness.py): its fast rows, every one a clear error or handled."""
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import robustness  # noqa: E402
from robustness_cases import all_cases  # noqa: E402

QUICK_AREAS = {"api", "report", "leaderboard", "sweep"}  # the other rows have their own tests


def test_battery_has_forty_cases_through_the_api_and_every_command():
    cases = all_cases()
    areas = {c.area for c in cases}
    assert len(cases) >= 40
    assert {"api", "report", "leaderboard", "eval", "visualize", "sweep", "prune_compare.sh", "clip_benchmark"} <= areas


def test_fast_rows_are_clear_errors_or_handled(tmp_path):
    cases = [c for c in all_cases() if not c.slow and c.area in QUICK_AREAS]
    rows = robustness.run_cases(cases, progress=False)
    bad = [(r.area, r.case, r.column, r.detail) for r in rows if r.column not in robustness.GOOD]
    assert not bad
    text = robustness.markdown(rows, "test")
    assert text.count("\n| ") >= len(rows) + 2 and "clear error" in text


def test_a_failing_row_lands_in_its_column():
    """The judge itself: an accepted bad input is 'silent wrong', a stray exception 'traceback'."""
    assert robustness_cases_judge(lambda: None)[0] == "silent wrong"
    assert robustness_cases_judge(lambda: {}["x"])[0] == "traceback"
    assert robustness_cases_judge(lambda: int("x"))[0] == "clear error"


def robustness_cases_judge(fn):
    from robustness_cases import api_refuses

    return api_refuses(fn)
