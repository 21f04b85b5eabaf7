import pandas as pd
import pytest

from backtrans.review_table import Filters, Workbench, measure_bins, page, threshold_counts


def _bench(n: int = 20) -> Workbench:
    frame = pd.DataFrame({"instruction": [f"q{i}" for i in range(n)], "generation": [f"a{i}" for i in range(n)]})
    bench = Workbench.from_frame(frame)
    for i in range(n - 2):
        bench.set_result(i, {"score": i % 5 + 1, "reason": "r", "status": "ok", "expected_score": i % 5 + 0.5})
    bench.set_result(n - 2, {"score": None, "status": "parse_error", "raw_output": "?", "error": "no score"})
    return bench


def test_filters_by_score_status_and_text():
    bench = _bench()
    assert set(bench.filtered(Filters(min_score=4, statuses=("ok",)), 4)["score"]) == {4, 5}
    assert list(bench.filtered(Filters(statuses=("parse_error",)), 4)["row"]) == [18]
    assert list(bench.filtered(Filters(statuses=("pending",)), 4)["row"]) == [19]
    assert list(bench.filtered(Filters(text="Q1"), 4)["row"]) == [1, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
    assert Filters(None, None, None, None, "nonsense").text == ""  # an emptied form is not an error


def test_sorting_keeps_unscored_last():
    view = _bench().filtered(Filters(sort="score, high first"), 4)
    assert list(view["score"].dropna()) == sorted(view["score"].dropna(), reverse=True)
    assert view["score"].iloc[-1] is pd.NA


def test_overrides_and_human_decisions_decide_final_keep():
    bench = _bench()
    assert not bool(bench.with_decisions(4).loc[0, "final_keep"])  # score 1
    bench.override(0, True)
    bench.override(4, False)  # score 5
    decided = bench.with_decisions(4)
    assert bool(decided.loc[0, "final_keep"]) and not bool(decided.loc[4, "final_keep"])
    kept = {row["instruction"] for row in bench.rows_for_export(4)}
    assert "q0" in kept and "q4" not in kept and "q3" in kept
    bench.override(0, None)
    assert not bool(bench.with_decisions(4).loc[0, "final_keep"])


def test_pages_are_bounded():
    frame = pd.DataFrame({"instruction": ["x" * 1000] * 120, "generation": [f"a{i}" for i in range(120)]})
    bench = Workbench.from_frame(frame)
    shown, number, pages = page(bench.filtered(Filters(), 4), 3, 50)
    assert (number, pages, len(shown), list(shown["row"])[0]) == (3, 3, 20, 100)
    assert shown["instruction"].str.len().max() == 1000  # the model keeps texts whole; the face shortens them
    assert page(bench.filtered(Filters(), 4), 99, 50)[:2][1] == 3  # past the end: the last page


def test_counts_and_the_papers_levels():
    bench = _bench()
    assert threshold_counts(bench.frame["score"], 4) == {"scored": 18, "kept": 6, "A4": 6, "A5": 3}


def test_bins_split_at_the_threshold_so_kept_bars_add_up_to_the_kept_count():
    bench = _bench()  # expected scores 1.5, 2.5, ..., 5.5 clipped into the last bin
    bench.keep_by = "expected_score"
    for threshold in (3.8, 3.6, 4.0, 2.1):
        decided = bench.with_decisions(threshold)
        bins = measure_bins(decided, "expected_score", threshold)
        assert sum(b.kept for b in bins) == int(decided["final_keep"].sum()), threshold
        assert any(b.low == threshold for b in bins)
        assert all(b.kept == 0 for b in bins if b.high <= threshold)  # nothing green below the threshold
        assert all(b.discarded == 0 for b in bins if b.low >= threshold)
    bench.keep_by = "score"
    bench.override(0, True)  # a person keeps a score-1 pair: its bar turns green, and the count follows
    decided = bench.with_decisions(4)
    bins = measure_bins(decided, "score", 4)
    assert sum(b.kept for b in bins) == int(decided["final_keep"].sum()) == 7
    assert [b.low for b in bins][:2] == [1, 2] and bins[0].kept == 1


def test_keep_by_expected_score_falls_back_to_the_score():
    bench = _bench(6)  # scores 1..4 with expected score - 0.5; row 4 unparsed; row 5 pending
    bench.keep_by = "expected_score"
    decided = bench.with_decisions(3.4)
    assert list(decided["final_keep"]) == [False, False, False, True, False, False]
    bench.set_result(2, {"score": 3, "status": "ok", "expected_score": None})  # no logprobs: the score counts
    assert bool(bench.with_decisions(2.9).loc[2, "final_keep"])


def test_results_written_while_a_page_holds_the_table_keep_their_types_and_leave_the_page_as_it_was():
    bench = Workbench.from_frame(pd.DataFrame({"instruction": ["q0", "q1", "q2"], "generation": ["a0", "a1", "a2"],
                                               "extra": pd.array([1, None, 3], dtype="Int64")}))
    shown = bench.with_decisions(4)  # what a running job's page holds between two looks
    version = bench.version
    bench.set_result(2, {"score": 5, "expected_score": 4.6, "reason": "clear", "status": "ok"})
    bench.set_result(0, {"score": None, "reason": None, "status": "parse_error", "error": "no score"})
    bench.set_cell(1, "human_note", "check me")
    frame = bench.frame
    assert str(frame["score"].dtype) == "Float64" and frame["score"].iloc[0] is pd.NA
    assert frame["score"].iloc[2] == 5 and frame["expected_score"].iloc[2] == 4.6
    assert frame["reason"].dtype == object and frame["reason"].iloc[2] == "clear" and frame["reason"].iloc[0] is None
    assert list(frame["status"]) == ["parse_error", None, "ok"] and frame["human_note"].iloc[1] == "check me"
    assert str(frame["extra"].dtype) == "Int64" and list(frame.columns[:3]) == ["row", "instruction", "generation"]
    assert shown["score"].isna().all() and shown["status"].isna().all()  # the page's copy saw none of it
    assert bench.changed_since(version, [2]) and bench.changed_since(version, [0]) and bench.changed_since(version, [1])
    assert not bench.changed_since(bench.version, [0, 1, 2])


def test_a_result_for_a_row_the_table_lacks_is_an_error_and_rows_are_found_by_label():
    bench = Workbench.from_frame(pd.DataFrame({"instruction": ["q0"], "generation": ["a0"]}))
    bench.set_result(5, {"score": 3})
    with pytest.raises(KeyError, match="5"):
        len(bench.frame)
    two = Workbench.from_frame(pd.DataFrame({"instruction": ["q", "r"], "generation": ["a", "b"]}))
    labelled = Workbench(_frame=two.frame.set_axis([10, 20]))
    labelled.set_result(20, {"score": 2, "status": "ok"})
    assert list(labelled.frame["score"].fillna(0)) == [0, 2]
