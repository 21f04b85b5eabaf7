"""Humans in the loop, through Argilla: push judged pairs with the judge's verdict as suggestions, pull the
reviewers' decisions back and merge them (the agreement statistics live in `backtrans.review`).

- `columns`: the one table of what a record holds; it drives the dataset settings, the record written and the
  row read back.
- `guidelines`: what reviewers read at the top of a dataset.
- `connection`: where the server is, the client, paging through records, what a failure says.
- `push`: pushing rows, and splitting a review plan across a dataset and its overlap dataset.
- `pull`: pulling responses, resolving several reviewers' votes, merging them into the rows.

The SDK (`argilla`, an optional dependency) is imported only when a server is used.
"""

from backtrans.argilla.columns import DISCARD, KEEP, PUSH_HASH, dataset_settings, record_id, to_record
from backtrans.argilla.connection import DEFAULT_WORKSPACE, ArgillaConfig, ArgillaError, connect
from backtrans.argilla.guidelines import GUIDELINES_MAX, guidelines, plan_design
from backtrans.argilla.pull import (
    POLICIES,
    Decision,
    counted,
    format_summary,
    merge,
    pull,
    pull_merged,
    pull_plan,
    resolve,
    summary,
)
from backtrans.argilla.push import OVERLAP_SUFFIX, PushReport, push, push_plan, push_rows

__all__ = [
    "DEFAULT_WORKSPACE", "DISCARD", "GUIDELINES_MAX", "KEEP", "OVERLAP_SUFFIX", "POLICIES", "PUSH_HASH",
    "ArgillaConfig", "ArgillaError", "Decision", "PushReport", "connect", "counted", "dataset_settings",
    "format_summary", "guidelines", "merge", "plan_design", "pull", "pull_merged", "pull_plan", "push", "push_plan",
    "push_rows", "record_id", "resolve", "summary", "to_record",
]
