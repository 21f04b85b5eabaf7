"""Review plans and estimates, checked against synthetic data whose true labels the test knows."""

import math
import random

import pandas as pd
import pytest

from backtrans import review


def population(size: int, seed: int, by: str = "expected_score") -> pd.DataFrame:
    """Judged pairs whose truth is known: a pair is good with a probability that rises with the judge's measure."""
    rng = random.Random(seed)
    rows = []
    for i in range(size):
        expected = rng.uniform(1, 5)
        good = rng.random() < 1 / (1 + math.exp(-2.2 * (expected - 3.4)))
        score = min(5, max(1, round(expected + rng.gauss(0, 0.4))))
        rows.append({"instruction": f"q{i}", "generation": f"a{i}", "score": score,
                     "expected_score": expected if by == "expected_score" else None, "truth": good})
    return pd.DataFrame(rows)


def reviewed(frame: pd.DataFrame, planned: pd.DataFrame) -> pd.DataFrame:
    """Simulated reviewers: they label each planned pair with its truth; everyone else stays unreviewed."""
    out = frame.copy()
    out["human_keep"] = None
    picked = out["instruction"].isin(set(planned["instruction"]))
    out.loc[picked, "human_keep"] = out.loc[picked, "truth"]
    return out


def truth_at(frame: pd.DataFrame, threshold: float, by: str) -> tuple[float, float]:
    value = frame[by].fillna(frame["score"]) if by == "expected_score" else frame["score"]
    kept = value >= threshold
    return frame.loc[kept, "truth"].mean(), frame.loc[kept, "truth"].sum() / frame["truth"].sum()


def test_a_plan_stays_within_budget_picks_each_row_once_and_is_deterministic():
    frame = population(3000, 1)
    for budget in (1, 7, 300, 5000):
        planned, summary = review.plan(frame, budget, seed=3, threshold=3.8)
        assert len(planned) == min(budget, len(frame)) == summary.planned
        assert planned["instruction"].is_unique
        assert set(planned.columns) >= {"stratum", "inclusion_prob", "overlap", "score", "expected_score"}
        assert planned["inclusion_prob"].between(0, 1).all()
    first, _ = review.plan(frame, 300, seed=3, threshold=3.8)
    again, _ = review.plan(frame, 300, seed=3, threshold=3.8)
    other, _ = review.plan(frame, 300, seed=4, threshold=3.8)
    assert list(first["instruction"]) == list(again["instruction"]) != list(other["instruction"])


def test_a_plan_covers_every_band_and_leans_on_the_threshold():
    frame = population(3000, 2)
    planned, summary = review.plan(frame, 300, seed=0, threshold=3.8, near_share=0.3, overlap_share=0.1)
    counts = planned["stratum"].value_counts()
    assert set(counts.index) == set(summary.bands)  # every band is reviewed
    assert counts["3.5-4.0"] > counts["1.0-1.5"]  # the threshold's band gets the extra share
    assert int(planned["overlap"].sum()) == 30
    for band, info in summary.bands.items():  # the recorded inclusion probability is the real sampling rate
        assert info["inclusion_prob"] == pytest.approx(counts[band] / (frame.assign(
            band=review.strata(frame, "expected_score"))["band"] == band).sum())
    assert "stratified by expected score" in summary.describe()


@pytest.mark.slow
@pytest.mark.parametrize("by", ["expected_score", "score"])
def test_intervals_cover_the_truth_at_about_their_nominal_rate(by):
    threshold = 3.8 if by == "expected_score" else 4
    covered = {"precision": 0, "recall": 0}
    simulations = 200
    for seed in range(simulations):
        frame = population(4000, 1000 + seed, by)
        planned, _ = review.plan(frame, 300, seed=seed, threshold=threshold, by=by)
        report = review.estimate(reviewed(frame, planned), threshold, by)
        precision, recall = truth_at(frame, threshold, by)
        covered["precision"] += report.precision.low <= precision <= report.precision.high
        covered["recall"] += report.recall.low <= recall <= report.recall.high
        assert report.reviewed == 300 and report.kept == int((review._values(frame, by) >= threshold).sum())
    assert covered["precision"] / simulations >= 0.90, covered
    assert covered["recall"] / simulations >= 0.90, covered


@pytest.mark.slow
def test_the_chosen_threshold_meets_the_target_on_the_truth():
    met, chosen = 0, 0
    for seed in range(40):
        frame = population(4000, 5000 + seed)
        planned, _ = review.plan(frame, 300, seed=seed, threshold=3.8)
        report = review.choose_threshold(reviewed(frame, planned), 0.8)
        if report is None:
            continue
        chosen += 1
        met += truth_at(frame, report.threshold, "expected_score")[0] >= 0.8
        assert report.precision.low >= 0.8 and 0 < report.confidence <= 1
    assert chosen >= 30 and met / chosen >= 0.9, (met, chosen)


def test_no_reviews_give_no_estimate_and_curves_have_intervals():
    frame = population(500, 9)
    report = review.estimate(frame.assign(human_keep=None), 3.8)
    assert report.reviewed == 0 and report.precision.estimate is None
    planned, _ = review.plan(frame, 120, seed=1)
    done = reviewed(frame, planned)
    curve = review.calibration_curve(done)
    assert list(curve["low_edge"]) == sorted(curve["low_edge"]) and (curve["low"] <= curve["keep_rate"]).all()
    assert curve["keep_rate"].iloc[-1] > curve["keep_rate"].iloc[0]  # the judge's measure means something
    lines = review.precision_recall_curve(done)
    assert set(lines["metric"]) == {"precision", "recall"}
    assert ((lines["low"] <= lines["estimate"]) & (lines["estimate"] <= lines["high"])).all()


def test_reviewer_agreement_on_the_overlap():
    votes = [{"ann": True, "bob": True}] * 40 + [{"ann": False, "bob": False}] * 40 + \
        [{"ann": True, "bob": False}] * 10 + [{"ann": True}] * 30
    result = review.reviewer_agreement(pd.DataFrame({"human_votes": votes}))
    assert result.items == 90 and result.agreement == pytest.approx(80 / 90)
    assert result.kappa.low < result.kappa.estimate < result.kappa.high
    # po = 80/90; first keeps 50/90, second 40/90: pe = (50*40 + 40*50)/90^2; (po - pe)/(1 - pe) = 3200/4100
    assert result.kappa.estimate == pytest.approx(32 / 41)
    assert result.per_reviewer == {"ann": 120, "bob": 90}


def test_cohen_kappa_against_hand_computed_figures():
    # Both keep 20, both discard 15, only the first keeps 5, only the second 10: po = 0.7, pe = 0.5*0.6 + 0.5*0.4
    pairs = [(True, True)] * 20 + [(True, False)] * 5 + [(False, True)] * 10 + [(False, False)] * 15
    assert review.cohen_kappa(pairs) == pytest.approx(0.4)
    assert review.cohen_kappa([(True, False), (False, True)]) == pytest.approx(-1.0)
    assert review.cohen_kappa([(True, True)] * 3) == 1.0  # one label, always agreed on: perfect, not undefined
    assert review.cohen_kappa([]) is None


def test_spearman_ranks_ties_at_their_average_and_is_none_where_undefined():
    assert review.spearman([1, 2, 3], [10, 20, 30]) == 1.0 and review.spearman([1, 2, 3], [3, 2, 1]) == -1.0
    # ranks x: 1 2.5 2.5 4, y: 1 2 3 4 -> Pearson of the ranks
    assert review.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5), abs=1e-4)
    assert review.spearman([4, 4, 4], [1, 2, 3]) is None and review.spearman([1], [1]) is None


def test_judge_agreement_against_hand_computed_figures():
    rows = [  # the judge keeps score >= 4
        {"instruction": "1", "score": 5, "human_keep": True, "human_score": 5},   # TP
        {"instruction": "2", "score": 4, "human_keep": True, "human_score": 4},   # TP
        {"instruction": "3", "score": 4, "human_keep": False, "human_score": 2},  # FP
        {"instruction": "4", "score": 2, "human_keep": True, "human_score": 3},   # FN
        {"instruction": "5", "score": 1, "human_keep": False, "human_score": 1},  # TN
        {"instruction": "6", "score": 3, "human_keep": False},                    # TN, no human score
        {"instruction": "7", "score": 5, "human_keep": None},                     # not reviewed
        {"instruction": "8", "score": None, "human_keep": True},                  # not scored
        {"instruction": "9", "score": 5, "human_keep": float("nan")},             # not reviewed (a file's NaN)
    ]
    report = review.judge_agreement(rows, 4)
    assert (report["threshold"], report["by"], report["reviewed"]) == (4, "score", 6)
    assert report["confusion"] == {"llm_keep_human_keep": 2, "llm_keep_human_discard": 1,
                                   "llm_discard_human_keep": 1, "llm_discard_human_discard": 2}
    assert report["precision"] == report["recall"] == report["f1"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    # po = 4/6, pe = (3*3 + 3*3)/36 = 0.5 -> (0.6667 - 0.5) / 0.5
    assert report["cohen_kappa"] == pytest.approx(1 / 3, abs=1e-4)
    # (5,5) (4,4) (4,2) (2,3) (1,1): ranks 5 3.5 3.5 2 1 and 5 4 2 3 1
    assert report["scored_by_both"] == 5 and report["spearman"] == pytest.approx(0.8208, abs=1e-4)
    assert report["disagreements"] == [2, 3]
    assert review.judge_agreement(rows, 4, key=lambda row: row["instruction"])["disagreements"] == ["3", "4"]


def test_judge_agreement_is_none_where_a_figure_is_undefined():
    report = review.judge_agreement([{"score": 2, "human_keep": False}], 4)
    assert report["precision"] is None and report["recall"] is None and report["f1"] is None
    assert report["spearman"] is None and report["cohen_kappa"] == 1.0 and report["accuracy"] == 1.0
    empty = review.judge_agreement([], 4)
    assert empty["reviewed"] == 0 and empty["accuracy"] is None and empty["cohen_kappa"] is None
