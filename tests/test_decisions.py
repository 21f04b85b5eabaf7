import math

import pandas as pd
import pytest

from backtrans.decisions import decide_frame, final_keep, human_keep, judge_keeps, judge_measure
from backtrans.records import missing


def test_missing_knows_every_library_s_empty_cell():
    assert all(missing(v) for v in (None, float("nan"), pd.NA, pd.NaT, math.nan))
    assert not any(missing(v) for v in (0, 0.0, "", False, "nan"))


def test_final_keep_prefers_the_human_decision():
    assert final_keep({"score": 4}, 4) and not final_keep({"score": 3}, 4) and not final_keep({"score": None}, 4)
    assert not final_keep({"score": 5, "final_keep": False}, 4)
    assert final_keep({"score": 1, "final_keep": True}, 4)
    assert final_keep({"score": 4, "final_keep": float("nan")}, 4)
    assert not final_keep({"score": 5, "human_keep": False, "final_keep": True}, 4)


def test_an_override_wins_and_afresh_ignores_a_recorded_final_keep():
    assert final_keep({"score": 1, "human_keep": False}, 4, override=True)
    stale = {"score": 3.0, "final_keep": False}  # recorded at threshold 4
    assert not final_keep(stale, 3) and final_keep(stale, 3, afresh=True)
    assert not final_keep({**stale, "human_keep": False}, 3, afresh=True)


def test_keep_by_expected_score():
    row = {"score": 4, "expected_score": 3.6}
    assert final_keep(row, 4) and not final_keep(row, 3.8, "expected_score") and final_keep(row, 3.5, "expected_score")
    assert final_keep({"score": 4, "expected_score": None}, 3.8, "expected_score")
    assert judge_measure(row, "expected_score") == 3.6 and judge_measure(row) == 4.0
    assert judge_keeps({"score": None}, 1) is None and human_keep({"human_keep": pd.NA}) is None
    with pytest.raises(ValueError, match="unknown measure"):
        judge_keeps(row, 4, "score ")


CASES = [  # (score, expected_score, human_keep, override, recorded final_keep)
    (5, 4.6, None, None, None), (3, 3.9, None, None, None), (4, 3.2, None, None, None),
    (None, None, None, None, None), (2, 2.1, True, None, None), (5, 4.9, False, None, None),
    (1, 1.0, None, True, None), (5, 5.0, True, False, None), (None, None, False, None, None),
    (4, None, None, None, None),
    # a file's recorded decision, made at another threshold: the table on screen decides afresh
    (1, 1.2, None, None, True), (5, 4.8, None, None, False), (2, 2.0, True, None, False), (3, 3.0, None, False, True),
]


@pytest.mark.parametrize("by", ["score", "expected_score"])
@pytest.mark.parametrize("threshold", [3.5, 4])
def test_the_table_rule_is_the_row_rule_deciding_afresh(by, threshold):
    # Two spellings of one rule (per row for streams, per column for the 100k-row review table) must agree.
    frame = pd.DataFrame([{"row": i, "score": s, "expected_score": e, "human_keep": h, "final_keep": f}
                          for i, (s, e, h, _, f) in enumerate(CASES)])
    for column in ("human_keep", "final_keep"):
        frame[column] = frame[column].astype("object").where(frame[column].notna(), None)
    overrides = {i: o for i, (*_, o, _) in enumerate(CASES) if o is not None}
    decided = decide_frame(frame, threshold, by, overrides)
    differs = 0
    for i, (score, expected, human, override, recorded) in enumerate(CASES):
        row = {"score": score, "expected_score": expected, "human_keep": human, "final_keep": recorded}
        afresh = final_keep(row, threshold, by, override=override, afresh=True)
        assert bool(decided.loc[i, "final_keep"]) == afresh, i
        differs += final_keep(row, threshold, by, override=override) != afresh
        judge = judge_keeps(row, threshold, by)
        assert (None if missing(decided.loc[i, "judge_keep"]) else bool(decided.loc[i, "judge_keep"])) == judge, i
        who = "you" if override is not None else "reviewer" if human is not None else "judge"
        assert decided.loc[i, "decided_by"] == who, i
    assert differs == 2  # only where a recorded decision and no person's stand: rows 10 and 11


def test_overrides_follow_the_row_not_the_position():
    frame = pd.DataFrame({"row": [7, 3], "score": [1, 1]})
    decided = decide_frame(frame, 4, "score", {3: True})
    assert list(decided["final_keep"]) == [False, True]
