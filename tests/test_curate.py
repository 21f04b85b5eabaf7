import pandas as pd

from backtrans.curate import Filters, Workbench, histogram, page, record_html, threshold_counts


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


def test_pages_are_bounded_and_texts_shortened():
    frame = pd.DataFrame({"instruction": ["x" * 1000] * 120, "generation": [f"a{i}" for i in range(120)]})
    bench = Workbench.from_frame(frame)
    shown, pages = page(bench.filtered(Filters(), 4), 3, 50)
    assert pages == 3 and len(shown) == 20 and list(shown["row"])[0] == 100
    assert shown["instruction"].str.len().max() == 201
    assert page(bench.filtered(Filters(), 4), 99, 50)[0]["row"].iloc[0] == 100  # past the end: last page


def test_histogram_and_counts():
    bench = _bench()
    table = histogram(bench.frame)
    assert dict(zip(table["score"], table["pairs"], strict=True)) == {
        "0": 0, "1": 4, "2": 4, "3": 4, "4": 3, "5": 3, "none": 2}
    assert threshold_counts(bench.frame["score"], 4) == {"scored": 18, "kept": 6, "A4": 6, "A5": 3}


def test_record_html_escapes_everything():
    html = record_html({"row": 1, "instruction": "<b>x</b>", "generation": "<script>1</script>",
                        "reason": "&", "raw_output": "<i>", "score": 3, "status": "ok"})
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html and "&lt;script&gt;" in html


def test_keep_by_expected_score_falls_back_to_the_score():
    bench = _bench(6)  # scores 1..4 with expected score - 0.5; row 4 unparsed; row 5 pending
    bench.keep_by = "expected_score"
    decided = bench.with_decisions(3.4)
    assert list(decided["final_keep"]) == [False, False, False, True, False, False]
    bench.set_result(2, {"score": 3, "status": "ok", "expected_score": None})  # no logprobs: the score counts
    assert bool(bench.with_decisions(2.9).loc[2, "final_keep"])
