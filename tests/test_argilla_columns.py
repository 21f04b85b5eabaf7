"""The record layout: one column table drives the dataset settings, the record written and the row read back."""

import pytest

from backtrans.argilla.columns import COLUMNS, PUSH_HASH, record_id, row_from_record, to_record
from backtrans.argilla.push import push
from backtrans.templates import load_template
from tests.conftest import argilla_sdk, scored_rows

PULLED = ("instruction", "generation", "score", "expected_score", "reason", "model_name", "status")
PLAN = ("stratum", "inclusion_prob", "overlap")


def _item(record) -> dict:
    """A record as the server's JSON gives it back."""
    return {"fields": record.fields.to_dict(), "metadata": record.metadata.to_dict(), "external_id": record.id}


def test_record_ids_are_content_hashes_and_suggestions_carry_confidence():
    template = load_template("humpback")
    row = scored_rows(2)[1]  # score 2, expected 1.75
    record = to_record(row, template, threshold=4, run_id="r1")
    assert record.id == record_id(dict(row)) == record_id({"instruction": row["instruction"],
                                                           "generation": row["generation"]})
    keep = record.suggestions["keep"]
    assert (keep.value, keep.agent) == ("discard", "judge-m")
    # Below the threshold 4 on the 1-5 scale: P(keep) = 0.5 - 0.5 * (4 - 1.75) / (4 - 1), and the discard's
    # confidence is the rest.
    assert keep.score == pytest.approx(1 - (0.5 - 0.5 * (4 - 1.75) / 3))
    assert record.suggestions["score"].value == 2
    assert record.suggestions["score"].score == pytest.approx(0.75)  # the expected score is 0.25 from 2
    assert record.metadata["llm_score"] == 2 and record.metadata["run_id"] == "r1"
    assert record.metadata["template"] == "humpback" and record.metadata["instruction_length"] == len("q 1?")
    assert record.fields["judge_reason"] == "reason 1"


def _keep(expected: float, threshold: float, score: int | None = None, by: str = "expected_score"):
    row = {"instruction": "q", "generation": "a", "expected_score": expected,
           "score": round(expected) if score is None else score}
    suggestion = to_record(row, load_template("humpback-short"), threshold, by=by).suggestions["keep"]
    return suggestion.value, suggestion.score


def test_a_keep_suggestions_confidence_is_for_the_label_it_suggests():
    # Seen in the app: a discard suggested at expected 3.4 (threshold 3.8) showed 0.4, its position on the scale.
    label, confidence = _keep(3.4, 3.8)
    assert label == "discard" and confidence > 0.5
    for threshold in (2, 3.8, 4, 4.5):
        for tenth in range(10, 51):
            label, confidence = _keep(tenth / 10, threshold)
            assert (label == "keep") == (tenth / 10 >= threshold)
            assert 0.5 <= confidence <= 1.0, (tenth, threshold, label, confidence)
    # The scale's ends are certain (all the probability sits on that score), the threshold itself a coin toss.
    assert _keep(5.0, 3.8) == ("keep", 1.0) and _keep(1.0, 3.8) == ("discard", 1.0)
    assert _keep(4.0, 4.0) == ("keep", 0.5)
    # Further from the threshold, surer.
    assert _keep(4.2, 3.8)[1] < _keep(4.6, 3.8)[1] and _keep(3.5, 3.8)[1] < _keep(2.5, 3.8)[1]


def test_a_keep_that_follows_the_parsed_score_says_when_the_probabilities_disagree():
    # The reply said 4 (kept at 4), but its digit probabilities lean to 3: the judge was torn, and says so.
    label, confidence = _keep(3.6, 4, score=4, by="score")
    assert label == "keep" and confidence < 0.5


def test_a_score_suggestions_confidence_is_how_near_the_expected_score_is():
    template = load_template("humpback-short")

    def score(value: int, expected: float | None):
        row = {"instruction": "q", "generation": "a", "score": value, "expected_score": expected}
        return to_record(row, template, 4).suggestions["score"].score

    assert score(4, 4.0) == 1.0 and score(4, 3.7) == pytest.approx(0.7) and score(4, 4.3) == pytest.approx(0.7)
    assert score(1, 3.5) == 0.0 and score(3, None) is None  # no probabilities: no confidence claimed


def test_a_records_row_metadata_is_its_place_in_the_push():
    template = load_template("humpback")
    row = scored_rows(1)[0]
    placed = to_record(dict(row), template, 4, position=3)
    assert placed.metadata["row"] == 3 and "row" not in to_record(dict(row), template, 4).metadata
    # A record that moved is sent again: its place is part of what a rerun compares.
    assert to_record(dict(row), template, 4, position=4).metadata[PUSH_HASH] != placed.metadata[PUSH_HASH]


def test_an_unscored_row_gets_no_suggestion_and_no_score():
    record = to_record({"instruction": "q", "generation": "a", "score": None, "status": "parse_error"},
                       load_template("humpback"), 4)
    assert list(record.suggestions) == []
    assert "llm_score" not in record.metadata and record.metadata["status"] == "parse_error"
    assert record.metadata["model_name"] == "llm-judge" and "judge_reason" not in record.fields


def test_a_record_reads_back_as_the_row_it_was_written_from():
    template = load_template("humpback")
    row = {**scored_rows(2)[1], "stratum": "band-2", "inclusion_prob": 0.5, "overlap": True, "not_pushed": 1}
    item = _item(to_record(row, template, 4, run_id="r1"))
    assert row_from_record(item) == {name: row[name] for name in PULLED + PLAN}
    # The server lists metadata as name/value pairs in some replies.
    listed = {**item, "metadata": [{"name": k, "value": v} for k, v in item["metadata"].items()]}
    assert row_from_record(listed) == row_from_record(item)
    # A record from before the review plan, without a reason: the plan's columns stay out, the reason is empty.
    bare = row_from_record(_item(to_record({"instruction": "q", "generation": "a", "score": 3}, template, 4)))
    assert bare == {"instruction": "q", "generation": "a", "score": 3, "expected_score": None, "reason": "",
                    "model_name": "llm-judge", "status": "ok"}


def test_suggested_keep_follows_the_expected_score_when_asked():
    template = load_template("humpback-short")
    row = {"instruction": "q", "generation": "a", "score": 4, "expected_score": 3.5, "model_name": "m"}
    assert to_record(row, template, 4).suggestions["keep"].value == "keep"
    assert to_record(row, template, 3.8, by="expected_score").suggestions["keep"].value == "discard"


def test_expected_score_is_held_within_the_templates_scale():
    template = load_template("humpback")  # 1-5
    high = to_record({"instruction": "q", "generation": "a", "score": 5, "expected_score": 6.5}, template, 4)
    low = to_record({"instruction": "q", "generation": "b", "score": 1, "expected_score": 0.2}, template, 4)
    assert (high.metadata["expected_score"], low.metadata["expected_score"]) == (5.0, 1.0)


def test_push_hash_follows_the_verdict_not_the_run():
    template = load_template("humpback")
    row = scored_rows(3)[2]
    same = to_record(dict(row), template, 4).metadata[PUSH_HASH]
    assert to_record(dict(row), template, 4).metadata[PUSH_HASH] == same
    assert to_record({**row, "score": 1}, template, 4).metadata[PUSH_HASH] != same
    assert to_record(dict(row), template, 2).metadata[PUSH_HASH] != same  # the suggested keep changes
    assert to_record({**row, "stratum": "s2", "inclusion_prob": 0.25}, template, 4).metadata[PUSH_HASH] != same


def test_plan_columns_become_metadata_and_bad_probabilities_are_refused():
    template = load_template("humpback")
    record = to_record({**scored_rows(1)[0], "stratum": "band-3", "inclusion_prob": 0.125, "overlap": 1}, template, 4)
    assert record.metadata["stratum"] == "band-3" and record.metadata["inclusion_prob"] == 0.125
    assert record.metadata["overlap"] == 1
    assert "stratum" not in to_record({**scored_rows(1)[0], "stratum": float("nan")}, template, 4).metadata
    for bad in (0, 1.5, "often"):
        with pytest.raises(ValueError, match="inclusion_prob"):
            to_record({**scored_rows(1)[0], "inclusion_prob": bad}, template, 4)


def test_a_pushed_dataset_declares_every_column_of_the_table(argilla_stack, argilla_config):
    rows = [{**row, "stratum": "s", "inclusion_prob": 0.5} for row in scored_rows(2, "layout")]
    push(rows, "layout", argilla_config, template="additive")  # a 0-5 scale
    settings = argilla_sdk(argilla_stack).datasets(name="layout", workspace="backtrans").settings
    declared = {"fields": [f.name for f in settings.fields], "questions": [q.name for q in settings.questions],
                "metadata": [m.name for m in settings.metadata]}
    # The plan's overlap column is declared only once a pushed row carries it; these rows do not.
    wanted = {part: [c.name for c in COLUMNS if c.part == part and c.name != "overlap"] for part in declared}
    assert declared["fields"] == wanted["fields"] and declared["questions"] == wanted["questions"]  # the UI's order
    assert sorted(declared["metadata"]) == sorted(wanted["metadata"])
    assert settings.questions["score"].values == [0, 1, 2, 3, 4, 5]
    assert settings.questions["keep"].labels == ["keep", "discard"]
    assert (settings.metadata["llm_score"].min, settings.metadata["llm_score"].max) == (0, 5)
    assert settings.fields["judge_reason"].required is False
