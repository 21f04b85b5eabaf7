"""Pushing to a real local Argilla server (argilla-server 2.8.0 on osmem, redis, worker): safe to repeat or to
kill, and a review plan split across a dataset and its overlap dataset."""

from urllib.parse import parse_qs, urlparse

import argilla as rg
import pytest

from backtrans.argilla import ArgillaError, dataset_settings, pull, pull_plan, push, push_plan, push_rows, record_id
from backtrans.templates import load_template
from tests.conftest import Annotator, argilla_sdk, scored_rows
from tests.test_argilla_guidelines import WITH_ID


def test_push_200_records_and_read_them_back(argilla_stack, argilla_config):
    rows = scored_rows(200, "push")
    progress = []
    report = push(rows, "push-200", argilla_config, threshold=4, run_id="run-7", on_progress=progress.append)
    assert report.pushed == 200 and progress[-1] == 200 and len(progress) == 1
    assert report.url.startswith(argilla_stack.url) and report.url.endswith("/annotation-mode?sort=metadata.row.asc")
    dataset = argilla_sdk(argilla_stack).datasets(name="push-200", workspace="backtrans")
    records = list(dataset.records(with_suggestions=True))
    assert len(records) == 200
    by_id = {str(r.id): r for r in records}
    for row in rows[:10]:
        record = by_id[record_id(row)]
        keep = record.suggestions["keep"]
        assert keep.value == ("keep" if row["score"] >= 4 else "discard") and keep.agent == "judge-m"
        assert record.suggestions["score"].value == row["score"]
        if row["expected_score"] is not None:
            assert 0 <= keep.score <= 1
        assert record.metadata["llm_score"] == row["score"] and record.metadata["model_name"] == "judge-m"
        assert record.metadata["template"] == "humpback" and record.metadata["run_id"] == "run-7"
        assert record.fields["judge_reason"] == row["reason"]
    assert "rubric" in dataset.settings.guidelines and "Score: <rating>" in dataset.settings.guidelines


def test_a_custom_template_that_uses_a_dataset_column_reaches_argilla(argilla_stack, argilla_config, tmp_path):
    # Bug 1 of issue 17: the guidelines rendered the template without the dataset's columns, and the push failed.
    template = tmp_path / "mine.jinja2"
    template.write_text(WITH_ID, encoding="utf-8")
    rows = [{**row, "id": number} for number, row in enumerate(scored_rows(3, "own-column"))]
    report = push(rows, "own-column", argilla_config, template=str(template))
    assert report.pushed == 3
    dataset = argilla_sdk(argilla_stack).datasets(name="own-column", workspace="backtrans")
    assert "Row <id>." in dataset.settings.guidelines
    assert {r.metadata["template"] for r in dataset.records()} == {"mine"}


def test_push_to_a_dataset_with_other_questions_fails_clearly(argilla_stack, argilla_config):
    client = argilla_sdk(argilla_stack)
    settings = rg.Settings(fields=[rg.TextField(name="text")],
                           questions=[rg.LabelQuestion(name="sentiment", labels=["pos", "neg"])])
    rg.Dataset(name="other-shape", workspace="backtrans", settings=settings, client=client).create()
    with pytest.raises(ArgillaError, match="other fields or questions") as info:
        push(scored_rows(2), "other-shape", argilla_config)
    assert "push to a new dataset name" in str(info.value) and "retry" not in str(info.value)


def test_missing_metadata_is_added_to_an_existing_dataset(argilla_stack, argilla_config):
    client = argilla_sdk(argilla_stack)
    settings = dataset_settings(load_template("humpback"))
    settings.metadata = [m for m in settings.metadata if m.name != "run_id"]
    rg.Dataset(name="older-shape", workspace="backtrans", settings=settings, client=client).create()
    push(scored_rows(3), "older-shape", argilla_config, run_id="r9")
    dataset = client.datasets(name="older-shape", workspace="backtrans")
    assert "run_id" in {m.name for m in dataset.settings.metadata}
    assert {r.metadata.get("run_id") for r in dataset.records()} == {"r9"}


def test_a_bad_row_is_named_before_its_batch_is_sent(argilla_stack, argilla_config):
    rows = scored_rows(3, "bad-row")
    rows[1]["inclusion_prob"] = 2
    with pytest.raises(ArgillaError, match=r"row 2: inclusion_prob must be a number in \(0, 1\]"):
        push(rows, "bad-row", argilla_config)
    assert len(list(argilla_sdk(argilla_stack).datasets(name="bad-row", workspace="backtrans").records())) == 0


def test_a_killed_5000_record_push_resumes_without_duplicates(argilla_stack, argilla_config):
    rows = scored_rows(5000, "scale")

    class Killed(Exception):
        pass

    def kill_after_2000(done: int) -> None:
        if done >= 2000:
            raise Killed

    with pytest.raises(Killed):
        push(rows, "scale-5000", argilla_config, batch_size=500, on_progress=kill_after_2000)
    progress: list[int] = []
    report = push(rows, "scale-5000", argilla_config, batch_size=500, on_progress=progress.append)
    assert report.skipped == 2000 and report.pushed == 3000 and progress[-1] == 5000
    # Checked in the server itself, through the SDK's own reader, not ours.
    dataset = argilla_sdk(argilla_stack).datasets(name="scale-5000", workspace="backtrans")
    ids = [str(r.id) for r in dataset.records(with_responses=False, with_suggestions=False)]
    assert len(ids) == len(set(ids)) == 5000
    assert set(ids) == {record_id(row) for row in rows}
    assert dataset.progress()["total"] == 5000
    # Nothing left to send, and a pull pages through all of it.
    assert push(rows, "scale-5000", argilla_config).pushed == 0
    decisions = pull("scale-5000", argilla_config)
    assert len(decisions) == 5000 and decisions[record_id(rows[4321])].row["instruction"] == "scale 4321?"


def test_a_plan_with_overlap_counts_progress_across_both_datasets(argilla_stack, argilla_config):
    rows = [{**row, "overlap": i % 3 == 0} for i, row in enumerate(scored_rows(7, "split"))]
    progress: list[int] = []
    reports = push_plan(rows, "split-set", argilla_config, design="a plan", on_progress=progress.append)
    assert [(r.dataset, r.pushed) for r in reports] == [("split-set", 4), ("split-set-overlap", 3)]
    assert progress == sorted(progress) and progress[-1] == 7
    client = argilla_sdk(argilla_stack)
    overlap = client.datasets(name="split-set-overlap", workspace="backtrans").settings
    assert overlap.distribution.min_submitted == 2 and overlap.guidelines.endswith("two reviewers each.")
    assert client.datasets(name="split-set", workspace="backtrans").settings.distribution.min_submitted == 1
    decisions = pull_plan("split-set", argilla_config)
    assert set(decisions) == {record_id(row) for row in rows}


def test_push_rows_splits_a_plan_unless_an_overlap_is_asked_for(argilla_stack, argilla_config):
    rows = [{**row, "stratum": f"band-{row['score']}", "inclusion_prob": 0.5, "overlap": i == 0}
            for i, row in enumerate(scored_rows(3, "rows"))]
    assert [r.dataset for r in push_rows(rows, "rows-set", argilla_config)] == ["rows-set", "rows-set-overlap"]
    guidelines = argilla_sdk(argilla_stack).datasets(name="rows-set", workspace="backtrans").settings.guidelines
    assert "Review plan: 3 pairs sampled at random" in guidelines  # the plan's design, from its own rows
    assert [r.dataset for r in push_rows(rows, "rows-one", argilla_config, overlap=1)] == ["rows-one"]


def _as_the_web_ui_lists(annotator: Annotator, url: str) -> list[str]:
    """The instructions in the order Argilla's annotation page shows them, opened at `url`: the request its
    frontend (argilla-server 2.8's bundled UI) sends, with the sort it reads from the page's `sort` parameter
    ("entity.name.order", several joined by "~"). Without a sort the server shuffles records per user."""
    dataset_id = urlparse(url).path.split("/dataset/")[1].split("/")[0]
    body: dict = {"query": {}, "filters": {"and": [
        {"type": "terms", "scope": {"entity": "response", "property": "status"}, "values": ["pending"]},
        {"type": "terms", "scope": {"entity": "record", "property": "status"}, "values": ["pending"]}]}}
    sort = parse_qs(urlparse(url).query).get("sort", [""])[0]
    for item in filter(None, sort.split("~")):
        entity, name, *rest = item.split(".")
        scope: dict = {"entity": entity}
        if len(rest) == 2:
            scope.update(question=name, property=rest[0])
        else:
            scope[{"response": "question", "metadata": "metadata_property", "record": "property"}[entity]] = name
        body.setdefault("sort", []).append({"scope": scope, "order": rest[-1]})
    reply = annotator.session.post(f"{annotator.url}/api/v1/me/datasets/{dataset_id}/records/search",
                                   params={"include": "responses,suggestions", "offset": 0,
                                           "limit": 50}, json=body)
    assert reply.status_code == 200, reply.text
    return [item["record"]["fields"]["instruction"] for item in reply.json()["items"]]


def test_reviewers_see_the_records_in_the_apps_order(argilla_stack, argilla_config):
    # Seen in Argilla's UI: records in another order than the app's rows (the server shuffles them per user).
    rows = scored_rows(30, "order")
    push(rows[10:], "ui-order", argilla_config, threshold=4, batch_size=7)  # a first push of part of the rows
    report = push(rows, "ui-order", argilla_config, threshold=4, batch_size=7)  # then all, the first ten new
    wanted = [row["instruction"] for row in rows]
    for reviewer in ("order-a", "order-b"):
        assert _as_the_web_ui_lists(Annotator(argilla_stack, reviewer), report.url) == wanted, reviewer
