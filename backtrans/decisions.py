"""Curation decisions, in one place: which measure the judge is read by, its keep at a threshold, a reviewer's
decision, and the final keep. The review, the Argilla merge, export, `curate` and the app all ask here.

The rule: a decision made in this session (an override) wins; then a reviewer's (`human_keep`); then, unless
the caller is choosing afresh, a final decision recorded in the file (`final_keep`); then the judge: its
measure >= threshold, where the measure is the expected score (from digit probabilities) when asked for and
present, else the parsed score. A row the judge did not score is not kept by the judge. Whether a cell holds a
value at all is `records.missing`'s to say.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from backtrans.records import missing

MEASURES = ("score", "expected_score", "aligned_score")
# `aligned_score` (backtrans.align): the probability that a reviewer keeps the pair, fitted on the reviewers' own
# decisions; more likely kept than not is the keep.
ALIGNED_THRESHOLD = 0.5
# The paper's curation sets on its 1-5 scale: A4 keeps score >= 4, A5 keeps score 5.
PAPER_LEVELS = {"A4": 4, "A5": 5}
# Where no template says otherwise (a scored file, a push from the CLI): the paper's A4, by the parsed score.
DEFAULT_THRESHOLD: float = PAPER_LEVELS["A4"]
DEFAULT_MEASURE = "score"
# Expected scores of small local judges sit between the integers: 70% of the way up the scale ranks best
# (3.8 on 1-5, docs/judge-models.md).
EXPECTED_SCORE_SHARE = 0.7


def default_measure(template: Any) -> str:
    """A judge that gives digit probabilities is read by its expected score; any other by its score."""
    return "expected_score" if getattr(template, "logprobs", False) else DEFAULT_MEASURE


def default_threshold(template: Any, by: str | None = None) -> float:
    """The keep threshold a template starts with, read by `by` (default: its own measure): one below the top of
    its scale (the paper's A4 on 1-5), or 70% of the way up where the expected score decides."""
    low, high = template.score_min, template.score_max
    if (by or default_measure(template)) == "expected_score":
        return round(low + EXPECTED_SCORE_SHARE * (high - low), 1)
    return float(high - 1)


def measure_in(frame: Any, by: str | None = None) -> str:
    """The measure that decides keep for this table: `by` where it can (an expected score only where the judge
    gave one), else the expected score where present, else the score."""
    import pandas as pd

    has_expected = ("expected_score" in frame
                    and pd.to_numeric(frame["expected_score"], errors="coerce").notna().any())
    if by is None:
        return "expected_score" if has_expected else "score"
    if check_measure(by) == "aligned_score" and "aligned_score" in frame:
        return "aligned_score"
    return "expected_score" if by == "expected_score" and has_expected else "score"


def paper_levels(scores: Any) -> dict[str, int]:
    """How many scores the paper's A4 and A5 sets keep."""
    import numpy as np
    import pandas as pd

    series = scores if isinstance(scores, pd.Series) else pd.Series(list(scores), dtype=object)
    valid = _numbers(series)
    valid = valid[~np.isnan(valid)]
    return {name: int((valid >= level).sum()) for name, level in PAPER_LEVELS.items()}


def check_measure(by: str) -> str:
    if by not in MEASURES:
        raise ValueError(f"unknown measure {by!r}; one of {', '.join(MEASURES)}")
    return by


def judge_measure(row: Mapping[str, Any], by: str = "score") -> float | None:
    if check_measure(by) == "aligned_score":  # a probability: the 1-5 score is no stand-in for it
        value = row.get("aligned_score")
        return None if missing(value) else float(value)
    value = row.get("expected_score") if by == "expected_score" else None
    if missing(value):
        value = row.get("score")
    return None if missing(value) else float(value)


def judge_keeps(row: Mapping[str, Any], threshold: float, by: str = "score") -> bool | None:
    """The judge's own decision; None when it gave no score."""
    measure = judge_measure(row, by)
    return None if measure is None else measure >= threshold


def human_keep(row: Mapping[str, Any]) -> bool | None:
    value = row.get("human_keep")
    return None if missing(value) else bool(value)


def final_keep(row: Mapping[str, Any], threshold: float, by: str = "score", *, override: bool | None = None,
               afresh: bool = False) -> bool:
    """`afresh`: ignore a recorded `final_keep` (it was decided at another threshold) and let the judge decide
    every row no person has, as `curate --threshold-from` does with a calibrated threshold."""
    if override is not None:
        return override
    human = human_keep(row)
    if human is not None:
        return human
    recorded = None if afresh else row.get("final_keep")
    if not missing(recorded):
        return bool(recorded)
    return bool(judge_keeps(row, threshold, by))


def decide_frame(frame, threshold: float, by: str = "score", overrides: Mapping[int, bool] | None = None):
    """The same rule over a whole table at once (the review table of 100k rows is redrawn on every change).
    Adds `judge_keep` (NA where unscored), `final_keep` and `decided_by` (judge | reviewer | you); `overrides`
    are keyed by the frame's `row` column, a row's identity, never its position."""
    import numpy as np
    import pandas as pd

    # On arrays, not Series: a running job's page redraws this every few seconds for every visitor, and
    # pandas' per-operation cost, not the rows, is what a 50-row table pays.
    measure = _numbers(frame["score"])
    if check_measure(by) == "expected_score" and "expected_score" in frame:
        expected = _numbers(frame["expected_score"])
        measure = np.where(np.isnan(expected), measure, expected)
    elif by == "aligned_score":
        measure = _numbers(frame["aligned_score"]) if "aligned_score" in frame else np.full(len(frame), np.nan)
    scored = ~np.isnan(measure)
    judge = np.where(scored, measure, -np.inf) >= threshold
    final = judge.copy()
    decided_by = np.full(len(frame), "judge", dtype=object)
    if "human_keep" in frame:
        humans = frame["human_keep"].to_numpy(dtype=object)
        reviewed = ~pd.isna(humans)
        final[reviewed] = humans[reviewed].astype(bool)
        decided_by[reviewed] = "reviewer"
    if overrides:
        rows = frame["row"].to_numpy()
        yours = np.isin(rows, list(overrides))
        final[yours] = [bool(overrides[row]) for row in rows[yours].tolist()]
        decided_by[yours] = "you"
    judge_keep = judge.astype(object)
    judge_keep[~scored] = pd.NA
    # A new frame over the same columns (copy-on-write leaves the owner's frame untouched): inserting three
    # columns one by one into pandas' Arrow-backed column index cost more than the rest of this function.
    columns = {name: frame[name] for name in frame.columns}
    columns.update(final_keep=final, judge_keep=judge_keep, decided_by=decided_by)
    return pd.DataFrame(columns, index=frame.index, copy=False)


def _numbers(values):
    """A column as floats, NaN for anything that is not a number."""
    import numpy as np
    import pandas as pd

    return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
