"""The record layout, in one table: every column a record holds, how the dataset declares it, what a row writes
there, and what a pulled record gives back to a row.

`dataset_settings`, `to_record` and `row_from_record` all read COLUMNS, so a new column is one entry there.
Record ids are a hash of the pair's text, so pushing again updates records in place: never a duplicate, and the
reviewers' responses stay. The reason the judge gave is a field beside the pair. Each record's `row` metadata is
its place in the pushed rows, so that Argilla can show them in the app's order (ROW_ORDER).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from backtrans.argilla.guidelines import guidelines
from backtrans.decisions import DEFAULT_MEASURE, judge_keeps
from backtrans.records import missing
from backtrans.store import content_key
from backtrans.templates import Template

KEEP, DISCARD = "keep", "discard"
# A hash of what was pushed, kept as unindexed extra metadata: a rerun skips records the server already holds
# unchanged, and still updates those whose verdict changed.
PUSH_HASH = "backtrans_push"
# The annotation page's own URL parameter ("entity.name.order") that sorts its records by the `row` metadata, as
# argilla-server 2.8's bundled UI reads it. Without a sort, the server orders each reviewer's records at random
# (a random_score seeded with the user's id), whatever order they were sent in.
ROW_ORDER = "sort=metadata.row.asc"
# Where an SDK class's objects live, in rg.Settings and in rg.Record alike, by the end of its name.
_PARTS = (("Field", "fields"), ("Question", "questions"), ("MetadataProperty", "metadata"))


@dataclass(frozen=True)
class Verdict:
    """What a row is pushed with: the judge's template, and the keep rule its suggestion follows."""

    template: Template
    threshold: float
    by: str = DEFAULT_MEASURE
    run_id: str | None = None
    position: int | None = None  # the row's place in the pushed rows, 1 first: the app's order


@dataclass(frozen=True)
class Column:
    name: str  # in Argilla
    kind: str  # the SDK class that declares it: TextField, LabelQuestion, TermsMetadataProperty, ...
    # The value a row gives it; None leaves it out of the record. A question's value is the judge's suggestion,
    # (value, confidence 0-1 or None).
    write: Callable[[dict, Verdict], Any]
    title: str | None = None
    options: Callable[[Template], dict] | None = None  # the rest of the declaration
    row: str | None = None  # the row column a pulled record gives it back as; None: not read back
    read: Callable[[Any], Any] | None = None  # the row's value from the record's
    default: Any = None  # the row's value where the record has none
    # A review plan's column: declared on a dataset once pushed rows carry it, and read back only where a record
    # has it.
    plan: bool = False

    @property
    def part(self) -> str:
        return next(part for suffix, part in _PARTS if self.kind.endswith(suffix))

    def declare(self, template: Template):
        import argilla as rg

        title = {"title": self.title} if self.title else {}
        return getattr(rg, self.kind)(name=self.name, **title, **(self.options(template) if self.options else {}))


def _number(value) -> float | None:
    if missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _agent(row: dict) -> str:
    return str(row.get("model_name") or "llm-judge")


def _keep_probability(expected: float, threshold: float, template: Template) -> float:
    """The judge's probability of keep, from its expected score (the mean of its digit probabilities).

    0.5 at the threshold, rising linearly to 1 at the top of the scale and falling to 0 at the bottom: an
    expected score at a scale's end means all the probability sits on that score, so those ends are exact.
    Only the mean is stored, not the whole distribution, so in between this is an estimate.
    """
    lo, hi = float(template.score_min), float(template.score_max)
    expected = min(hi, max(lo, expected))
    if expected >= threshold:
        return 0.5 + 0.5 * (expected - threshold) / (hi - threshold) if hi > threshold else 1.0
    return 0.5 - 0.5 * (threshold - expected) / (threshold - lo) if threshold > lo else 0.0


def _keep_confidence(row: dict, verdict: Verdict, keep: bool) -> float | None:
    """The judge's probability of the label it suggests, so a suggestion's confidence is always for its own
    side of the threshold. Below 0.5 only where the suggestion follows the parsed score and the digit
    probabilities lean to the other side: the judge was torn. None without digit probabilities."""
    expected = _number(row.get("expected_score"))
    if expected is None:
        return None
    p_keep = _keep_probability(expected, verdict.threshold, verdict.template)
    return round(p_keep if keep else 1.0 - p_keep, 4)


def _score_confidence(row: dict, score: int) -> float | None:
    """How near the expected score is to the suggested one: 1 - |expected - score|, at least 0. It is the
    probability of that score exactly when the judge's probability sits on it and one neighbour (a confident
    judge's usual shape); a wider spread makes it an upper bound. None without digit probabilities."""
    expected = _number(row.get("expected_score"))
    if expected is None:
        return None
    return round(max(0.0, 1.0 - abs(expected - score)), 4)


def _llm_score(row: dict, verdict: Verdict) -> int | None:
    score = _number(row.get("score"))
    return None if score is None else int(score)


def _expected_score(row: dict, verdict: Verdict) -> float | None:
    expected = _number(row.get("expected_score"))
    if expected is None:
        return None
    return min(float(verdict.template.score_max), max(float(verdict.template.score_min), expected))


def _suggested_keep(row: dict, verdict: Verdict) -> tuple[str, float | None] | None:
    if _number(row.get("score")) is None:
        return None
    keep = bool(judge_keeps(row, verdict.threshold, verdict.by))
    return KEEP if keep else DISCARD, _keep_confidence(row, verdict, keep)


def _suggested_score(row: dict, verdict: Verdict) -> tuple[int, float | None] | None:
    score = _llm_score(row, verdict)
    return None if score is None else (score, _score_confidence(row, score))


def _inclusion_prob(row: dict, verdict: Verdict) -> float | None:
    if row.get("inclusion_prob") is None:
        return None
    prob = _number(row["inclusion_prob"])
    if prob is None or not 0 < prob <= 1:
        raise ValueError(f"inclusion_prob must be a number in (0, 1], not {row['inclusion_prob']!r}")
    return prob


def _present(name: str, convert: Callable[[Any], Any]) -> Callable[[dict, Verdict], Any]:
    """The row's `name` converted, or None (left out) where the row has no value there."""
    return lambda row, verdict: None if missing(row.get(name)) else convert(row[name])


def _scale(template: Template, kind: type = int) -> dict:
    return {"min": kind(template.score_min), "max": kind(template.score_max)}


def _not_required(template: Template) -> dict:
    return {"required": False}


COLUMNS: tuple[Column, ...] = (
    # In the order of a scored row's columns, so that a row rebuilt from Argilla reads like the file pushed.
    Column("instruction", "TextField", lambda row, v: row["instruction"], "Instruction", row="instruction"),
    Column("generation", "TextField", lambda row, v: row["generation"], "Response", row="generation"),
    Column("llm_score", "IntegerMetadataProperty", _llm_score, options=_scale, row="score"),
    Column("expected_score", "FloatMetadataProperty", _expected_score,
           options=lambda template: _scale(template, float), row="expected_score"),
    Column("judge_reason", "TextField", lambda row, v: str(row["reason"]) if row.get("reason") else None,
           "The LLM judge's reason", _not_required, row="reason", default=""),
    Column("model_name", "TermsMetadataProperty", lambda row, v: _agent(row), row="model_name"),
    Column("template", "TermsMetadataProperty", lambda row, v: v.template.name),
    Column("run_id", "TermsMetadataProperty", lambda row, v: v.run_id or row.get("run_id") or None),
    Column("status", "TermsMetadataProperty", lambda row, v: str(row.get("status") or "ok"), row="status"),
    Column("instruction_length", "IntegerMetadataProperty", lambda row, v: len(row["instruction"])),
    Column("generation_length", "IntegerMetadataProperty", lambda row, v: len(row["generation"])),
    # Argilla's annotation page shuffles records per reviewer unless it is sorted: ROW_ORDER sorts by this.
    Column("row", "IntegerMetadataProperty", lambda row, v: v.position, "Row in backtrans"),
    # What reviewers answer, the judge's verdict suggested (agent: the judge's model).
    Column("keep", "LabelQuestion", _suggested_keep, "Keep this pair for training?",
           lambda template: {"labels": [KEEP, DISCARD], "required": True}),
    Column("score", "RatingQuestion", _suggested_score, "Quality score",
           lambda template: {"values": list(range(template.score_min, template.score_max + 1)), "required": False}),
    Column("note", "TextQuestion", lambda row, v: None, "Note (optional)", _not_required),
    # The review plan's columns come back for the estimates.
    Column("stratum", "TermsMetadataProperty", _present("stratum", str), "Sample stratum", row="stratum", plan=True),
    Column("inclusion_prob", "FloatMetadataProperty", _inclusion_prob, "Inclusion probability",
           lambda template: {"min": 0.0, "max": 1.0}, row="inclusion_prob", plan=True),
    # 1 marks a record the plan gives a second reviewer. Argilla's distribution is per dataset only, so this is
    # how reviewers can filter for them.
    Column("overlap", "IntegerMetadataProperty", _present("overlap", lambda value: int(bool(value))),
           "Second reviewer wanted", lambda template: {"min": 0, "max": 1}, row="overlap", read=bool, plan=True),
)


def dataset_settings(template: Template, design: str | None = None, overlap: int = 1):
    import argilla as rg

    parts: dict[str, list] = {part: [] for _, part in _PARTS}
    for column in COLUMNS:
        if not column.plan:
            parts[column.part].append(column.declare(template))
    return rg.Settings(
        guidelines=guidelines(template, design),
        **parts,
        distribution=rg.TaskDistribution(min_submitted=overlap),
        allow_extra_metadata=True,  # holds PUSH_HASH without indexing it
    )


def plan_metadata(template: Template) -> list:
    """Properties for the review plan's columns, added to a dataset when pushed rows carry them."""
    return [column.declare(template) for column in COLUMNS if column.plan]


def record_id(row: dict) -> str:
    """Stable across pushes and reruns: the same pair is the same record."""
    return content_key("pair", row["instruction"], row["generation"])[:32]


def to_record(row: dict, template: Template, threshold: float, run_id: str | None = None, by: str = DEFAULT_MEASURE,
              position: int | None = None):
    """`position`: the row's place in the pushed rows (1 first), kept as the `row` metadata."""
    import argilla as rg

    verdict = Verdict(template, threshold, by, run_id, position)
    values: dict[str, dict] = {part: {} for _, part in _PARTS}
    for column in COLUMNS:
        if (value := column.write(row, verdict)) is not None:
            values[column.part][column.name] = value
    fields, metadata = values["fields"], values["metadata"]
    agent = _agent(row)
    suggested = [(name, value, confidence, agent) for name, (value, confidence) in values["questions"].items()]
    metadata[PUSH_HASH] = _push_hash(fields, metadata, suggested)
    suggestions = [rg.Suggestion(name, value, score=confidence, agent=agent)
                   for name, value, confidence, agent in suggested]
    return rg.Record(id=record_id(row), fields=fields, metadata=metadata, suggestions=suggestions)


def _push_hash(fields: dict, metadata: dict, suggestions: list[tuple]) -> str:
    payload = json.dumps([fields, {k: v for k, v in metadata.items() if k != PUSH_HASH}, suggestions],
                         sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=12).hexdigest()


def row_from_record(item: dict) -> dict:
    """The pair and the judge's verdict, as pushed, from a raw record (the server's JSON)."""
    held = {"fields": item.get("fields") or {}, "metadata": item.get("metadata") or {}}
    if isinstance(held["metadata"], list):
        held["metadata"] = {m["name"]: m["value"] for m in held["metadata"]}
    row = {}
    for column in COLUMNS:
        if column.row is None:
            continue
        source = held[column.part]
        if column.name in source:
            value = source[column.name]
            row[column.row] = column.read(value) if column.read else value
        elif not column.plan:
            row[column.row] = column.default
    return row
