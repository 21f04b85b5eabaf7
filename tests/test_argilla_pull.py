"""Pulling reviewers' decisions back from a real local Argilla server, resolving several reviewers, merging."""

import json

import pytest

from backtrans.argilla import Decision, format_summary, merge, pull, pull_merged, push, record_id, resolve, summary
from backtrans.argilla.pull import annotators
from backtrans.cli import main
from tests.conftest import Annotator, argilla_sdk, scored_rows, server_ids, write_jsonl


@pytest.mark.parametrize(
    ("votes", "majority", "unanimous", "any_discard"),
    [
        ({}, None, None, None),
        ({"a": "keep"}, True, True, True),
        ({"a": "keep", "b": "keep", "c": "discard"}, True, False, False),
        ({"a": "keep", "b": "discard"}, None, False, False),
        ({"a": "discard", "b": "discard"}, False, False, False),
    ],
)
def test_policies(votes, majority, unanimous, any_discard):
    assert resolve(votes, "majority") is majority
    assert resolve(votes, "unanimous") is unanimous
    assert resolve(votes, "any-discard") is any_discard


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="unknown policy 'most'"):
        resolve({"a": "keep"}, "most")


DECISIONS = {
    "a": Decision(True, 4, "", "ann, bob", {"ann": "keep", "bob": "keep"}, []),
    "b": Decision(None, None, "", "ann, bob", {"ann": "keep", "bob": "discard"}, ["cy"]),
    "c": Decision(None, None, "", "", {}, []),
}


def test_summary_counts_records_reviewers_and_decisions():
    info = summary(DECISIONS)
    assert info == {"records": 3, "reviewers": ["ann", "bob", "cy"], "decisions": 1, "votes": 4, "drafts": 1}
    assert format_summary(info) == ("Pulled 3 records: 1 with a decision, 4 votes from 3 reviewers (ann, bob, cy), "
                                    "1 draft")


def test_annotators_counts_each_reviewers_votes_and_drafts():
    assert annotators(DECISIONS) == {"ann": {"keep": 2}, "bob": {"discard": 1, "keep": 1}, "cy": {"draft": 1}}


def test_merge_lets_a_reviewer_decide_and_the_judge_the_rest():
    rows = [{"instruction": "q", "generation": "a", "score": 4, "expected_score": 3.5, "model_name": "m"},
            {"instruction": "q2", "generation": "a", "score": 2}]
    decided = {record_id(rows[1]): Decision(True, 5, "ann: fine", "ann", {"ann": "keep"}, [])}
    first, second = merge(rows, decided, 3.8, "expected_score")
    assert (first["human_keep"], first["final_keep"], first["human_votes"]) == (None, False, None)  # 3.5 < 3.8
    assert (second["human_keep"], second["human_score"], second["final_keep"]) == (True, 5, True)
    assert second["human_note"] == "ann: fine" and second["human_votes"] == {"ann": "keep"}


# --- against the real server -------------------------------------------------------------------------


def test_annotate_pull_merge_agreement_and_repush(argilla_stack, argilla_config):
    rows = scored_rows(10, "review")  # scores 1..5, 1..5
    push(rows, "review", argilla_config, threshold=4)
    ids = server_ids(argilla_stack, "review")
    first, second = Annotator(argilla_stack, "reviewer-a"), Annotator(argilla_stack, "reviewer-b")
    record = [ids[record_id(row)] for row in rows]
    first.respond(record[0], "keep", 4, "fine")          # LLM 1 -> discard; human keep
    first.respond(record[3], "keep", 5)                  # LLM 4 -> keep; human keep
    first.respond(record[4], "discard", 2)               # LLM 5 -> keep; human discard
    first.respond(record[1], None, status="discarded")   # the whole record discarded in the UI
    second.respond(record[3], "discard", 3)              # a tie on record 3 under majority
    second.respond(record[2], "keep", 3, status="draft")  # a draft: seen, not a decision

    decisions, merged_rows, report = pull_merged(rows, "review", argilla_config, "majority", 4)
    merged = {row["instruction"]: row for row in merged_rows}
    assert merged["review 0?"]["human_keep"] is True and merged["review 0?"]["final_keep"] is True
    assert merged["review 0?"]["human_note"] == "reviewer-a: fine"
    assert merged["review 1?"]["human_keep"] is False and merged["review 1?"]["reviewer"] == "reviewer-a"
    assert merged["review 3?"]["human_keep"] is None and merged["review 3?"]["final_keep"] is True  # tie: LLM
    assert merged["review 4?"]["final_keep"] is False
    assert merged["review 2?"]["human_keep"] is None and merged["review 2?"]["final_keep"] is False
    assert merged["review 9?"]["final_keep"] is True  # unreviewed, LLM score 5

    any_discard = merge(rows, pull("review", argilla_config, "any-discard"), 4)
    assert {r["instruction"]: r["human_keep"] for r in any_discard}["review 3?"] is False

    # reviewed: 0 (LLM discard, human keep), 1 (discard, discard), 4 (keep, discard)
    assert report["reviewed"] == 3
    assert report["confusion"] == {"llm_keep_human_keep": 0, "llm_keep_human_discard": 1,
                                   "llm_discard_human_keep": 1, "llm_discard_human_discard": 1}
    assert report["precision"] == 0.0 and report["recall"] == 0.0 and report["f1"] == 0.0
    assert sorted(report["disagreements"]) == sorted(record_id(rows[i]) for i in (0, 4))
    assert report["annotators"]["reviewer-a"] == {"discard": 2, "keep": 2}
    assert report["annotators"]["reviewer-b"] == {"discard": 1, "draft": 1}
    json.dumps(report)  # plain data, ready for a file

    # Pushing again (new scores, same pairs) updates in place: no duplicates, responses kept.
    rescored = [{**row, "score": 5, "reason": "rescored"} for row in rows]
    push(rescored, "review", argilla_config, threshold=4)
    dataset = argilla_sdk(argilla_stack).datasets(name="review", workspace="backtrans")
    records = list(dataset.records(with_responses=True, with_suggestions=True))
    assert len(records) == 10
    assert {r.suggestions["keep"].value for r in records} == {"keep"}
    assert pull("review", argilla_config, "majority")[record_id(rows[0])].human_keep is True


def test_plan_push_with_overlap_two_reviewers_votes_and_progress(argilla_stack, argilla_config):
    rows = [{**row, "stratum": f"band-{row['score']}", "inclusion_prob": round(0.1 * row["score"], 2),
             "overlap": i < 2} for i, row in enumerate(scored_rows(6, "plan"))]
    design = "Stratified by score band; 10% of records go to two reviewers."
    push(rows, "plan-set", argilla_config, design=design, overlap=2)
    client = argilla_sdk(argilla_stack)
    dataset = client.datasets(name="plan-set", workspace="backtrans")
    assert {"stratum", "inclusion_prob", "overlap"} <= {m.name for m in dataset.settings.metadata}
    assert dataset.settings.guidelines.endswith(design)
    assert dataset.settings.distribution.min_submitted == 2
    by_id = {str(r.id): r for r in dataset.records()}
    assert by_id[record_id(rows[2])].metadata["stratum"] == "band-3"
    assert by_id[record_id(rows[2])].metadata["inclusion_prob"] == pytest.approx(0.3)

    ids = server_ids(argilla_stack, "plan-set")
    first, second = Annotator(argilla_stack, "overlap-a"), Annotator(argilla_stack, "overlap-b")
    for row in rows[:3]:
        first.respond(ids[record_id(row)], "keep", 4)
    second.respond(ids[record_id(rows[0])], "keep", 5)
    second.respond(ids[record_id(rows[1])], "discard", 2)
    decisions = pull("plan-set", argilla_config)
    assert decisions[record_id(rows[0])].votes == {"overlap-a": "keep", "overlap-b": "keep"}
    assert decisions[record_id(rows[1])].votes == {"overlap-a": "keep", "overlap-b": "discard"}
    assert decisions[record_id(rows[0])].scores == {"overlap-a": 4, "overlap-b": 5}
    assert decisions[record_id(rows[2])].row["stratum"] == "band-3"
    assert [decisions[record_id(row)].row["overlap"] for row in rows] == [True, True, False, False, False, False]
    assert annotators(decisions) == {"overlap-a": {"keep": 3}, "overlap-b": {"discard": 1, "keep": 1}}
    # Two reviewers are asked for: records 0 and 1 are complete, record 2 (one reviewer) is still pending.
    assert client.datasets(name="plan-set", workspace="backtrans").progress()["completed"] == 2
    info = summary(decisions)
    assert info["records"] == 6 and info["reviewers"] == ["overlap-a", "overlap-b"] and info["votes"] == 5

    # A later push without --overlap keeps the dataset's setting.
    push(rows, "plan-set", argilla_config)
    assert client.datasets(name="plan-set", workspace="backtrans").settings.distribution.min_submitted == 2


def test_cli_push_and_pull(argilla_stack, argilla_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    rows = scored_rows(6, "cli")
    scored = write_jsonl(tmp_path / "scored.jsonl", rows)
    assert main(["argilla", "push", str(scored), "--dataset", "cli-set"]) == 0
    assert "pushed 6 records" in capsys.readouterr().err
    ids = server_ids(argilla_stack, "cli-set")
    Annotator(argilla_stack, "reviewer-c", "backtrans").respond(ids[record_id(rows[4])], "discard", 1)
    out, report = tmp_path / "merged.jsonl", tmp_path / "agreement.json"
    assert main(["argilla", "pull", "--dataset", "cli-set", "-o", str(out), "--scored", str(scored),
                 "--report", str(report)]) == 0
    printed = capsys.readouterr()
    assert "Cohen's kappa" in printed.out and argilla_stack.api_key not in printed.out + printed.err
    assert "Pulled 6 records: 1 with a decision, 1 vote from 1 reviewer (reviewer-c)" in printed.err
    assert main(["argilla", "push", str(scored), "--dataset", "cli-set", "--overlap", "2",
                 "--design", "every pair, once"]) == 0
    assert "pushed 0 records (6 already there)" in capsys.readouterr().err
    dataset = argilla_sdk(argilla_stack).datasets(name="cli-set", workspace="backtrans")
    assert dataset.settings.distribution.min_submitted == 2 and dataset.settings.guidelines.endswith("once")
    merged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["final_keep"] for r in merged] == [False, False, False, True, False, False]
    assert merged[4]["human_keep"] is False and merged[4]["reviewer"] == "reviewer-c"
    written = json.loads(report.read_text())
    assert written["reviewed"] == 1 and written["annotators"] == {"reviewer-c": {"discard": 1}}
    # Without --scored the rows are rebuilt from Argilla itself.
    assert main(["argilla", "pull", "--dataset", "cli-set", "-o", str(tmp_path / "rebuilt.jsonl")]) == 0
    rebuilt = [json.loads(line) for line in (tmp_path / "rebuilt.jsonl").read_text().splitlines()]
    assert sorted(r["instruction"] for r in rebuilt) == sorted(r["instruction"] for r in rows)
    assert main(["export", str(out), "-o", str(tmp_path / "final.jsonl")]) == 0
