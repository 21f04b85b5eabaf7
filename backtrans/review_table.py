"""The review table's model: one owner's rows, their filters, sorting and pages, the quick keep/discard
overrides, the histogram's bins and the threshold counts. Numbers and rows only: the face draws them.

A `Workbench` holds one user's rows for the interactive faces. It is plain pandas, so a 100k-row run
filters and pages in milliseconds; the faces only ever render one page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from backtrans.decisions import decide_frame, paper_levels
from backtrans.judge import RESULT_COLUMNS
from backtrans.records import missing

STATUSES = ("ok", "parse_error", "llm_error", "pending")
SORTS = {
    "input order": ("row", True),
    "score, high first": ("score", False),
    "score, low first": ("score", True),
    "expected score, high first": ("expected_score", False),
    "expected score, low first": ("expected_score", True),
}


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

    _frame: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)
    source_name: str = ""
    overrides: dict[int, bool] = field(default_factory=dict)
    keep_by: str = "score"  # or "expected_score": small local judges give nearly every pair the same integer
    # Bumped at every change, and per row the version it last changed at: a page redraws only what moved.
    version: int = 0
    row_versions: dict[int, int] = field(default_factory=dict)
    examples_used: int = 0  # reviewed examples in the prompt that scored the unreviewed rows (0: the first judge)
    # Cells written since the frame was last read, by row. While a job runs the page holds views of the frame, so
    # under pandas' copy-on-write every single-cell write copied its column's block (~0.5 ms a judged row); here
    # rows are written a column at a time, when the frame is next read.
    _pending: dict[int, dict[str, object]] = field(default_factory=dict, repr=False)

    @property
    def frame(self) -> pd.DataFrame:
        if self._pending:
            self._write_pending()
        return self._frame

    @frame.setter
    def frame(self, frame: pd.DataFrame) -> None:
        self._frame = frame

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, source_name: str = "") -> Workbench:
        # One frame built from its columns: adding the result columns one at a time cost more than reading the file.
        size = len(frame)
        columns: dict[str, object] = {} if "row" in frame else {"row": np.arange(size)}
        columns.update((name, values.array) for name, values in frame.items())  # .array: no index to align
        for column in RESULT_COLUMNS:
            columns.setdefault(column, np.full(size, None, dtype=object))
        for column in ("score", "expected_score"):
            columns[column] = pd.array(pd.to_numeric(pd.Series(columns[column], dtype=object), errors="coerce")
                                       .to_numpy(dtype=float, na_value=np.nan), dtype="Float64")
        return cls(_frame=pd.DataFrame(columns, index=pd.RangeIndex(size)), source_name=source_name)

    def __len__(self) -> int:
        return len(self._frame)

    def _touch(self, index: int) -> None:
        self.version += 1
        self.row_versions[index] = self.version

    def changed_since(self, version: int, rows) -> bool:
        """Whether any of `rows` (frame indexes) changed after `version`."""
        return any(self.row_versions.get(int(index), 0) > version for index in rows)

    def set_cell(self, index: int, column: str, value: object) -> None:
        self._pending.setdefault(index, {})[column] = value
        self._touch(index)

    def set_result(self, index: int, result: dict) -> None:
        self._pending.setdefault(index, {}).update({column: result.get(column) for column in RESULT_COLUMNS})
        self._touch(index)

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, {}
        frame = self._frame
        columns: dict[str, dict[int, object]] = {}
        for index, cells in pending.items():
            for column, value in cells.items():
                columns.setdefault(column, {})[index] = value
        positions: dict[tuple, np.ndarray] = {}  # a job's results fill the same rows in every result column
        for column, cells in columns.items():
            if column not in frame:
                frame[column] = None
            keys = tuple(cells)
            rows = positions.get(keys)
            if rows is None:
                rows = positions[keys] = self._positions(keys)
            current = frame[column]
            if current.dtype == "Float64":
                data = current.to_numpy(dtype=float, na_value=np.nan)
                for row, value in zip(rows.tolist(), cells.values(), strict=True):
                    data[row] = np.nan if missing(value) else float(value)
                column_values = pd.array(data, dtype="Float64")  # NaN -> <NA>, as for a missing score
            else:
                data = current.to_numpy(dtype=object, copy=True)
                for row, value in zip(rows.tolist(), cells.values(), strict=True):
                    data[row] = value
                column_values = pd.Series(data, index=frame.index, dtype=object)
            frame.isetitem(frame.columns.get_loc(column), column_values)

    def _positions(self, indexes: tuple) -> np.ndarray:
        """Where the rows with these index labels are; KeyError for a label the table does not have."""
        index, size = self._frame.index, len(self._frame)
        rows = np.asarray(indexes)
        if rows.dtype.kind in "iu" and isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
            absent = (rows < 0) | (rows >= size)  # from_frame's index: a label is its place
        else:
            rows = index.get_indexer(list(indexes))
            absent = rows < 0
        if absent.any():
            raise KeyError(f"rows not in the table: {[i for i, gone in zip(indexes, absent, strict=True) if gone]}")
        return rows

    def override(self, index: int, keep: bool | None) -> None:
        self._touch(index)
        if keep is None:
            self.overrides.pop(index, None)
        else:
            self.overrides[index] = keep

    def with_decisions(self, threshold: float) -> pd.DataFrame:
        """The rows with `judge_keep`, `final_keep` and `decided_by`, by the one rule in backtrans.decisions:
        the threshold on screen decides afresh for every row no person decided."""
        return decide_frame(self.frame, threshold, self.keep_by, self.overrides)

    def filtered(self, filters: Filters, threshold: float, decided: pd.DataFrame | None = None) -> pd.DataFrame:
        """The rows that pass the filters, sorted; `decided`: this threshold's `with_decisions`, if already made."""
        frame = self.with_decisions(threshold) if decided is None else decided
        mask = np.ones(len(frame), dtype=bool)
        if set(STATUSES) - set(filters.statuses):
            mask &= frame["status"].fillna("pending").isin(filters.statuses).to_numpy(dtype=bool)
        score = frame["score"].to_numpy(dtype=float, na_value=np.nan)
        unscored = np.isnan(score)
        with np.errstate(invalid="ignore"):
            in_range = (score >= filters.min_score) & (score <= filters.max_score)
        mask &= in_range | (unscored & filters.include_unscored)
        if filters.text.strip():
            needle = filters.text.strip()
            text = frame["instruction"].astype(str) + "\n" + frame["generation"].astype(str)
            mask &= text.str.contains(needle, case=False, regex=False).to_numpy(dtype=bool)
        view = frame if mask.all() else frame[mask]
        column, ascending = SORTS.get(filters.sort, SORTS["input order"])
        if column == "row" and ascending and view["row"].is_monotonic_increasing:
            return view  # already in input order
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


def page(view: pd.DataFrame, number: int, size: int) -> tuple[pd.DataFrame, int, int]:
    """One page of a view: its rows, the page number shown (clamped to the pages there are) and the page count."""
    pages = max(1, -(-len(view) // size))
    number = min(max(1, int(number or 1)), pages)
    return view.iloc[(number - 1) * size : number * size], number, pages


@dataclass(frozen=True)
class Bin:
    """One bar of the histogram: the pairs whose measure is in [low, high), split by their final decision, so
    that the kept bars always add up to the kept count, whatever the threshold."""

    low: float
    high: float
    kept: int
    discarded: int


def measure_bins(decided: pd.DataFrame, by: str, threshold: float, lo: int = 1, hi: int = 5,
                 step: float = 0.25) -> list[Bin]:
    """Pairs per bin of the measure in use. Whole scores get a bar each, expected scores bins of `step`; the
    threshold is always a bin edge (a bin it would cut is split there). Unscored pairs have no bin."""
    values = decided["score"]
    if by == "expected_score" and "expected_score" in decided:
        values = decided["expected_score"].fillna(decided["score"])
    elif by == "aligned_score" and "aligned_score" in decided:
        values = decided["aligned_score"]
    values = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    width = 1.0 if by == "score" else step
    edges = {round(lo + i * width, 9) for i in range(int(round((hi - lo) / width)) + 1)}
    if lo < threshold < hi:
        edges.add(float(threshold))
    edges = np.array(sorted(edges))
    scored = ~np.isnan(values)
    keep = decided["final_keep"].to_numpy(dtype=bool)[scored]
    # Each value's bin: the last edge at or below it (below the scale: the first bin; above: the last).
    position = np.clip(np.searchsorted(edges, values[scored], side="right") - 1, 0, len(edges) - 1)
    total = np.bincount(position, minlength=len(edges))
    kept = np.bincount(position[keep], minlength=len(edges))
    highs = [*edges[1:], edges[-1] + width]
    return [Bin(float(low), float(high), int(k), int(t - k)) for low, high, k, t in zip(edges, highs, kept, total,
                                                                                      strict=True)]


def threshold_counts(scores, threshold: int) -> dict[str, int]:
    """How many pairs each curation level keeps: the paper's A4 and A5, and the chosen threshold."""
    valid = pd.to_numeric(pd.Series(list(scores), dtype=object), errors="coerce").dropna()
    return {"scored": int(len(valid)), "kept": int((valid >= threshold).sum()), **paper_levels(valid)}
