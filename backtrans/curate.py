"""Curation: the review table's filters, sorting and pages, quick keep/discard overrides, the score
histogram, threshold counts, and an inert HTML view of one record.

A `Workbench` holds one user's rows for the interactive faces. It is plain pandas, so a 100k-row run
filters and pages in milliseconds; the faces only ever render one page.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import pandas as pd

from backtrans.decisions import decide_frame
from backtrans.export import score_histogram
from backtrans.judge import RESULT_COLUMNS
from backtrans.records import missing

# Short columns first: the verdict stays in view beside the pair however long the texts are.
# The verdict (final, and the judge's own) first: it stays in view without scrolling.
REVIEW_COLUMNS = ["row", "verdict", "judge", "score", "expected_score", "reason", "instruction", "generation", "status"]
STATUSES = ("ok", "parse_error", "llm_error", "pending")
# Words a table header can wrap between; the data keeps its column names.
HEADERS = {"expected_score": "expected score", "human_keep": "human keep", "human_score": "human score",
           "human_note": "note"}
SORTS = {
    "input order": ("row", True),
    "score, high first": ("score", False),
    "score, low first": ("score", True),
    "expected score, high first": ("expected_score", False),
    "expected score, low first": ("expected_score", True),
}
PREVIEW_CHARS = 200


@dataclass
class Filters:
    min_score: float = 0
    max_score: float = 10
    statuses: tuple[str, ...] = STATUSES
    text: str = ""
    sort: str = "input order"
    include_unscored: bool = True

    def __post_init__(self) -> None:
        # Values straight from a form: an emptied box arrives as None.
        self.min_score = 0 if self.min_score is None else self.min_score
        self.max_score = 10 if self.max_score is None else self.max_score
        self.statuses = tuple(self.statuses or ())
        self.text = self.text or ""
        self.sort = self.sort if self.sort in SORTS else "input order"


@dataclass
class Workbench:
    """One session's rows: the input pairs, the judge's results, and the quick overrides."""

    frame: pd.DataFrame = field(default_factory=pd.DataFrame)
    source_name: str = ""
    overrides: dict[int, bool] = field(default_factory=dict)
    keep_by: str = "score"  # or "expected_score": small local judges give nearly every pair the same integer

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source_name: str = "") -> Workbench:
        frame = frame.reset_index(drop=True)
        for column in RESULT_COLUMNS:
            if column not in frame:
                frame[column] = None
        frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype("Float64")
        frame["expected_score"] = pd.to_numeric(frame["expected_score"], errors="coerce").astype("Float64")
        if "row" not in frame:
            frame.insert(0, "row", range(len(frame)))
        return cls(frame=frame, source_name=source_name)

    def __len__(self) -> int:
        return len(self.frame)

    def set_result(self, index: int, result: dict) -> None:
        for column in RESULT_COLUMNS:
            value = result.get(column)
            if column in ("score", "expected_score"):
                value = pd.NA if value is None else float(value)
            self.frame.at[index, column] = value

    def override(self, index: int, keep: bool | None) -> None:
        if keep is None:
            self.overrides.pop(index, None)
        else:
            self.overrides[index] = keep

    def with_decisions(self, threshold: float) -> pd.DataFrame:
        """The rows with `judge_keep`, `final_keep` and `decided_by`, by the one rule in backtrans.decisions:
        the threshold on screen decides afresh for every row no person decided."""
        return decide_frame(self.frame, threshold, self.keep_by, self.overrides)

    def filtered(self, filters: Filters, threshold: float) -> pd.DataFrame:
        frame = self.with_decisions(threshold)
        status = frame["status"].fillna("pending")
        mask = status.isin(filters.statuses)
        score = frame["score"]
        in_range = (score >= filters.min_score) & (score <= filters.max_score)
        mask &= in_range.fillna(False) | (score.isna() & filters.include_unscored)
        if filters.text.strip():
            needle = filters.text.strip()
            text = frame["instruction"].astype(str) + "\n" + frame["generation"].astype(str)
            mask &= text.str.contains(needle, case=False, regex=False)
        view = frame[mask.astype(bool)]
        column, ascending = SORTS.get(filters.sort, SORTS["input order"])
        return view.sort_values(column, ascending=ascending, na_position="last", kind="stable")

    def rows_for_export(self, threshold: float) -> list[dict]:
        frame = self.with_decisions(threshold)
        kept = frame[frame["final_keep"]].drop(columns=["row", "judge_keep", "decided_by"])
        return [{k: plain_value(v) for k, v in row.items()} for row in kept.to_dict(orient="records")]

    def all_rows(self) -> list[dict]:
        rows = self.frame.drop(columns=["row"]).to_dict("records")
        return [{k: plain_value(v) for k, v in row.items()} for row in rows]


def plain_value(value: object) -> object:
    """A cell as plain Python: missing values are None, numpy scalars their Python selves."""
    if missing(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value


def page(view: pd.DataFrame, number: int, size: int) -> tuple[pd.DataFrame, int]:
    """One page of a view, with long texts shortened for the table; returns it and the page count."""
    pages = max(1, -(-len(view) // size))
    number = min(max(1, number), pages)
    chunk = view.iloc[(number - 1) * size : number * size]
    # Earlier rounds' scores (score_r1, ...) sit beside this round's, so rounds compare at a glance.
    earlier = sorted(c for c in view.columns if c.startswith("score_r") and c[7:].isdigit())
    columns = REVIEW_COLUMNS[:1] + earlier + REVIEW_COLUMNS[1:]
    shown = chunk.reindex(columns=columns).copy()
    if "final_keep" in chunk:
        decisions = zip(chunk["final_keep"], chunk["decided_by"], strict=True)
        shown["verdict"] = [_verdict(keep, by) for keep, by in decisions]
        shown["judge"] = [_verdict(keep, "judge") for keep in chunk["judge_keep"]]
    for column in ("instruction", "generation", "reason"):
        shown[column] = shown[column].map(_shorten)
    if "expected_score" not in view or not view["expected_score"].notna().any():
        shown = shown.drop(columns=["expected_score"])  # a judge without digit probabilities: no empty column
    return shown.rename(columns=HEADERS), pages


def _verdict(keep: object, decided_by: str) -> str:
    if missing(keep):
        return ""
    word = "keep" if bool(keep) else "discard"
    return word if decided_by == "judge" else f"{word} ({decided_by})"


def _shorten(value: object) -> str:
    text = "" if missing(value) else str(value)
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS] + "…"


def histogram(frame: pd.DataFrame, lo: int = 0, hi: int = 5) -> pd.DataFrame:
    """Pairs per score, every level of the scale shown (empty ones too), unscored last."""
    counts = score_histogram(pd.to_numeric(frame.get("score", pd.Series(dtype=float)), errors="coerce"))
    unscored = counts.pop("none", 0)
    levels = range(min([lo, *map(int, counts)]), max([hi, *map(int, counts)]) + 1)
    table = pd.DataFrame({"score": [str(s) for s in levels], "pairs": [counts.get(str(s), 0) for s in levels]})
    if unscored:
        table = pd.concat([table, pd.DataFrame({"score": ["none"], "pairs": [unscored]})], ignore_index=True)
    return table


def measure_histogram(frame: pd.DataFrame, by: str, threshold: float, lo: int = 1, hi: int = 5,
                      step: float = 0.25) -> pd.DataFrame:
    """Pairs per bin of the measure in use, each bin marked kept or discarded by the threshold: the threshold is
    where the colour changes. Whole scores get a bar each; expected scores get bins of `step`."""
    values = frame.get("expected_score") if by == "expected_score" else frame.get("score")
    values = pd.to_numeric(values if values is not None else pd.Series(dtype=float), errors="coerce").dropna()
    width = step if by == "expected_score" else 1.0
    edges = [lo + i * width for i in range(int(round((hi - lo) / width)) + 1)]
    binned = ((values - lo) / width).clip(lower=0).astype(int).clip(upper=len(edges) - 1) if len(values) else values
    counts = binned.value_counts() if len(values) else pd.Series(dtype=int)
    return pd.DataFrame({
        "bin": [f"{edge:g}" for edge in edges],
        "pairs": [int(counts.get(i, 0)) for i in range(len(edges))],
        "side": ["kept" if edge >= threshold else "discarded" for edge in edges],
    })


def threshold_counts(scores, threshold: int) -> dict[str, int]:
    """How many pairs each curation level keeps: the paper's A4 and A5, and the chosen threshold."""
    valid = pd.to_numeric(pd.Series(list(scores), dtype=object), errors="coerce").dropna()
    return {
        "scored": int(len(valid)),
        "kept": int((valid >= threshold).sum()),
        "A4": int((valid >= 4).sum()),
        "A5": int((valid >= 5).sum()),
    }


def record_html(row: dict) -> str:
    """One record in full. Every piece of dataset or model text is escaped: it renders as text only."""

    def block(title: str, value: object) -> str:
        text = "" if missing(value) else str(value)
        return (f'<div class="bt-block"><div class="bt-title">{html.escape(title)}</div>'
                f'<pre class="bt-text" style="white-space:pre-wrap">{html.escape(text)}</pre></div>')

    score = row.get("score")
    score_text = "none" if missing(score) else str(int(score))
    header = (f"<p><b>Row {html.escape(str(row.get('row', '')))}</b> · score {html.escape(score_text)} · "
              f"status {html.escape(str(row.get('status') or 'pending'))}"
              + (f" · expected {float(row['expected_score']):.2f}" if not missing(row.get("expected_score")) else "")
              + "</p>")
    if "final_keep" in row:
        by = {"you": "you (override)", "reviewer": "a reviewer in Argilla"}.get(str(row.get("decided_by")), "the judge")
        header += (f"<p><b>Verdict: {'keep' if row['final_keep'] else 'discard'}</b>, decided by {html.escape(by)}"
                   + (f" · the judge says {_verdict(row.get('judge_keep'), 'judge') or 'nothing yet'}"
                      if row.get("decided_by") != "judge" else "") + "</p>")
    parts = [header, block("Instruction", row.get("instruction")), block("Response", row.get("generation")),
             block("Judge's reason", row.get("reason")), block("Raw judge output", row.get("raw_output"))]
    if row.get("error"):
        parts.append(block("Error", row.get("error")))
    return '<div class="bt-record">' + "".join(parts) + "</div>"

