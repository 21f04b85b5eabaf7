"""Human review through a real local Argilla server (argilla-server 2.8.0 on osmem, redis, worker)."""

import json

import argilla as rg
import pytest

from backtrans import argilla_sync as A
from backtrans.cli import main
from backtrans.templates import load_template
from tests.conftest import Annotator, write_jsonl


def _scored(n: int, prefix: str = "q") -> list[dict]:
    return [
        {"instruction": f"{prefix} {i}?", "generation": f"answer {i}.", "score": i % 5 + 1, "reason": f"reason {i}",
         "model_name": "judge-m", "expected_score": round(i % 5 + 1 - 0.25, 2) if i % 2 else None, "status": "ok"}
        for i in range(n)
    ]


def _sdk(stack) -> rg.Argilla:
    return rg.Argilla(api_url=stack.url, api_key=stack.api_key)


def _server_ids(stack, dataset: str) -> dict[str, object]:
    records = _sdk(stack).datasets(name=dataset, workspace="backtrans").records(with_responses=False)
    return {str(r.id): r._server_id for r in records}


# --- without a server --------------------------------------------------------------------------------


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
    assert A.resolve(votes, "majority") is majority
    assert A.resolve(votes, "unanimous") is unanimous
    assert A.resolve(votes, "any-discard") is any_discard


def test_agreement_against_hand_computed_figures():
    rows = [  # LLM keep = score >= 4
        {"instruction": "1", "generation": "x", "score": 5, "human_keep": True, "human_score": 5},   # TP
        {"instruction": "2", "generation": "x", "score": 4, "human_keep": True, "human_score": 4},   # TP
        {"instruction": "3", "generation": "x", "score": 4, "human_keep": False, "human_score": 2},  # FP
        {"instruction": "4", "generation": "x", "score": 2, "human_keep": True, "human_score": 3},   # FN
        {"instruction": "5", "generation": "x", "score": 1, "human_keep": False, "human_score": 1},  # TN
        {"instruction": "6", "generation": "x", "score": 3, "human_keep": False},                    # TN
        {"instruction": "7", "generation": "x", "score": 5, "human_keep": None},                     # not reviewed
    ]
    report = A.agreement(rows, 4)
    assert report["reviewed"] == 6
    assert report["confusion"] == {"llm_keep_human_keep": 2, "llm_keep_human_discard": 1,
                                   "llm_discard_human_keep": 1, "llm_discard_human_discard": 2}
    assert report["precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["recall"] == pytest.approx(2 / 3, abs=1e-4)
    assert report["f1"] == pytest.approx(2 / 3, abs=1e-4)
    # kappa: po = 4/6, pe = (3*3 + 3*3)/36 = 0.5 -> (0.6667 - 0.5) / 0.5 = 0.3333
    assert report["cohen_kappa"] == pytest.approx(1 / 3, abs=1e-4)
    # scores (5,5) (4,4) (4,2) (2,3) (1,1): ranks x = 4.5 4.5 2.5 2.5... computed independently below
    assert report["spearman"] == pytest.approx(_pearson_of_ranks([5, 4, 4, 2, 1], [5, 4, 2, 3, 1]), abs=1e-4)
    assert len(report["disagreements"]) == 2
    assert "precision 0.6667" in A.format_report(report)


def _pearson_of_ranks(xs, ys):
    def rank(values):
        return [sum(v > w for w in values) * 0 + sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2
                for v in values]

    rx, ry = rank(xs), rank(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5
    return num / den


def test_record_ids_are_content_hashes_and_suggestions_carry_confidence():
    template = load_template("humpback")
    row = _scored(2)[1]  # score 2, expected 1.75
    record = A.to_record(row, template, threshold=4, run_id="r1")
    assert record.id == A.record_id(dict(row)) == A.record_id({"instruction": row["instruction"],
                                                               "generation": row["generation"]})
    keep = record.suggestions["keep"]
    assert (keep.value, keep.agent) == ("discard", "judge-m")
    assert keep.score == pytest.approx(1 - (1.75 - 1) / 4)
    assert record.metadata["llm_score"] == 2 and record.metadata["run_id"] == "r1"
    assert record.fields["judge_reason"] == "reason 1"


def test_dead_url_is_a_clean_error_without_the_key():
    config = A.ArgillaConfig("http://127.0.0.1:9", "argilla.apikey.SECRET0123456789")
    with pytest.raises(A.ArgillaError) as info:
        A.push(_scored(3), "x", config)
    message = str(info.value)
    assert "http://127.0.0.1:9" in message and "SECRET0123456789" not in message
    assert "Local results are intact" in message


# --- against the real server -------------------------------------------------------------------------


def test_push_200_records_and_read_them_back(argilla_stack, argilla_config):
    rows = _scored(200, "push")
    progress = []
    report = A.push(rows, "push-200", argilla_config, threshold=4, run_id="run-7", on_progress=progress.append)
    assert report.pushed == 200 and progress[-1] == 200 and len(progress) == 1
    dataset = _sdk(argilla_stack).datasets(name="push-200", workspace="backtrans")
    records = list(dataset.records(with_suggestions=True))
    assert len(records) == 200
    by_id = {str(r.id): r for r in records}
    for row in rows[:10]:
        record = by_id[A.record_id(row)]
        keep = record.suggestions["keep"]
        assert keep.value == ("keep" if row["score"] >= 4 else "discard") and keep.agent == "judge-m"
        assert record.suggestions["score"].value == row["score"]
        if row["expected_score"] is not None:
            assert 0 <= keep.score <= 1
        assert record.metadata["llm_score"] == row["score"] and record.metadata["model_name"] == "judge-m"
        assert record.metadata["template"] == "humpback" and record.metadata["run_id"] == "run-7"
        assert record.fields["judge_reason"] == row["reason"]
    assert "rubric" in dataset.settings.guidelines and "Score: <rating>" in dataset.settings.guidelines


def test_annotate_pull_merge_agreement_and_repush(argilla_stack, argilla_config, tmp_path):
    rows = _scored(10, "review")  # scores 1..5, 1..5
    A.push(rows, "review", argilla_config, threshold=4)
    ids = _server_ids(argilla_stack, "review")
    first, second = Annotator(argilla_stack, "reviewer-a"), Annotator(argilla_stack, "reviewer-b")
    record = [ids[A.record_id(row)] for row in rows]
    first.respond(record[0], "keep", 4, "fine")          # LLM 1 -> discard; human keep
    first.respond(record[3], "keep", 5)                  # LLM 4 -> keep; human keep
    first.respond(record[4], "discard", 2)               # LLM 5 -> keep; human discard
    first.respond(record[1], None, status="discarded")   # the whole record discarded in the UI
    second.respond(record[3], "discard", 3)              # a tie on record 3 under majority
    second.respond(record[2], "keep", 3, status="draft")  # a draft: seen, not a decision

    decisions = A.pull("review", argilla_config, "majority")
    merged = {row["instruction"]: row for row in A.merge(rows, decisions, 4)}
    assert merged["review 0?"]["human_keep"] is True and merged["review 0?"]["final_keep"] is True
    assert merged["review 0?"]["human_note"] == "reviewer-a: fine"
    assert merged["review 1?"]["human_keep"] is False and merged["review 1?"]["reviewer"] == "reviewer-a"
    assert merged["review 3?"]["human_keep"] is None and merged["review 3?"]["final_keep"] is True  # tie: LLM
    assert merged["review 4?"]["final_keep"] is False
    assert merged["review 2?"]["human_keep"] is None and merged["review 2?"]["final_keep"] is False
    assert merged["review 9?"]["final_keep"] is True  # unreviewed, LLM score 5

    any_discard = A.merge(rows, A.pull("review", argilla_config, "any-discard"), 4)
    assert {r["instruction"]: r["human_keep"] for r in any_discard}["review 3?"] is False

    report = A.agreement(list(merged.values()), 4, decisions)
    # reviewed: 0 (LLM discard, human keep), 1 (discard, discard), 4 (keep, discard)
    assert report["reviewed"] == 3
    assert report["confusion"] == {"llm_keep_human_keep": 0, "llm_keep_human_discard": 1,
                                   "llm_discard_human_keep": 1, "llm_discard_human_discard": 1}
    assert report["precision"] == 0.0 and report["recall"] == 0.0 and report["f1"] == 0.0
    assert report["annotators"]["reviewer-a"] == {"discard": 2, "keep": 2}
    assert report["annotators"]["reviewer-b"] == {"discard": 1, "draft": 1}

    # Pushing again (new scores, same pairs) updates in place: no duplicates, responses kept.
    rescored = [{**row, "score": 5, "reason": "rescored"} for row in rows]
    A.push(rescored, "review", argilla_config, threshold=4)
    dataset = _sdk(argilla_stack).datasets(name="review", workspace="backtrans")
    records = list(dataset.records(with_responses=True, with_suggestions=True))
    assert len(records) == 10
    assert {r.suggestions["keep"].value for r in records} == {"keep"}
    assert A.pull("review", argilla_config, "majority")[A.record_id(rows[0])].human_keep is True


def test_push_to_a_dataset_with_other_questions_fails_clearly(argilla_stack, argilla_config):
    client = _sdk(argilla_stack)
    settings = rg.Settings(fields=[rg.TextField(name="text")],
                           questions=[rg.LabelQuestion(name="sentiment", labels=["pos", "neg"])])
    rg.Dataset(name="other-shape", workspace="backtrans", settings=settings, client=client).create()
    with pytest.raises(A.ArgillaError, match="other fields or questions"):
        A.push(_scored(2), "other-shape", argilla_config)


def test_missing_metadata_is_added_to_an_existing_dataset(argilla_stack, argilla_config):
    client = _sdk(argilla_stack)
    settings = A.dataset_settings(load_template("humpback"))
    settings.metadata = [m for m in settings.metadata if m.name != "run_id"]
    rg.Dataset(name="older-shape", workspace="backtrans", settings=settings, client=client).create()
    A.push(_scored(3), "older-shape", argilla_config, run_id="r9")
    dataset = client.datasets(name="older-shape", workspace="backtrans")
    assert "run_id" in {m.name for m in dataset.settings.metadata}
    assert {r.metadata.get("run_id") for r in dataset.records()} == {"r9"}


def test_cli_push_and_pull(argilla_stack, argilla_config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    rows = _scored(6, "cli")
    scored = write_jsonl(tmp_path / "scored.jsonl", rows)
    assert main(["argilla", "push", str(scored), "--dataset", "cli-set"]) == 0
    assert "pushed 6 records" in capsys.readouterr().err
    ids = _server_ids(argilla_stack, "cli-set")
    Annotator(argilla_stack, "reviewer-c", "backtrans").respond(ids[A.record_id(rows[4])], "discard", 1)
    out, report = tmp_path / "merged.jsonl", tmp_path / "agreement.json"
    assert main(["argilla", "pull", "--dataset", "cli-set", "-o", str(out), "--scored", str(scored),
                 "--report", str(report)]) == 0
    printed = capsys.readouterr()
    assert "Cohen's kappa" in printed.out and argilla_stack.api_key not in printed.out + printed.err
    assert "Pulled 6 records: 1 with a decision, 1 vote from 1 reviewer (reviewer-c)" in printed.err
    assert main(["argilla", "push", str(scored), "--dataset", "cli-set", "--overlap", "2",
                 "--design", "every pair, once"]) == 0
    assert "pushed 0 records (6 already there)" in capsys.readouterr().err
    dataset = _sdk(argilla_stack).datasets(name="cli-set", workspace="backtrans")
    assert dataset.settings.distribution.min_submitted == 2 and dataset.settings.guidelines.endswith("once")
    merged = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["final_keep"] for r in merged] == [False, False, False, True, False, False]
    assert merged[4]["human_keep"] is False and merged[4]["reviewer"] == "reviewer-c"
    assert json.loads(report.read_text())["reviewed"] == 1
    # Without --scored the rows are rebuilt from Argilla itself.
    assert main(["argilla", "pull", "--dataset", "cli-set", "-o", str(tmp_path / "rebuilt.jsonl")]) == 0
    rebuilt = [json.loads(line) for line in (tmp_path / "rebuilt.jsonl").read_text().splitlines()]
    assert sorted(r["instruction"] for r in rebuilt) == sorted(r["instruction"] for r in rows)
    assert main(["export", str(out), "-o", str(tmp_path / "final.jsonl")]) == 0


def test_cli_reports_a_dead_argilla_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARGILLA_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ARGILLA_API_KEY", "argilla.apikey.TOPSECRET123456")
    scored = write_jsonl(tmp_path / "s.jsonl", _scored(2))
    assert main(["argilla", "push", str(scored), "--dataset", "d"]) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9" in err and "TOPSECRET" not in err


def test_suggested_keep_follows_the_expected_score_when_asked():
    template = load_template("humpback-short")
    row = {"instruction": "q", "generation": "a", "score": 4, "expected_score": 3.5, "model_name": "m"}
    assert A.to_record(row, template, 4).suggestions["keep"].value == "keep"
    assert A.to_record(row, template, 3.8, by="expected_score").suggestions["keep"].value == "discard"
    merged = A.merge([row], {}, 3.8, "expected_score")
    assert merged[0]["final_keep"] is False


# --- scale, resume, review plans, several reviewers --------------------------------------------------


def test_push_hash_follows_the_verdict_not_the_run():
    template = load_template("humpback")
    row = _scored(3)[2]
    same = A.to_record(dict(row), template, 4).metadata[A.PUSH_HASH]
    assert A.to_record(dict(row), template, 4).metadata[A.PUSH_HASH] == same
    assert A.to_record({**row, "score": 1}, template, 4).metadata[A.PUSH_HASH] != same
    assert A.to_record({**row, "stratum": "s2", "inclusion_prob": 0.25}, template, 4).metadata[A.PUSH_HASH] != same


def test_plan_columns_become_metadata_and_bad_probabilities_are_refused():
    template = load_template("humpback")
    record = A.to_record({**_scored(1)[0], "stratum": "band-3", "inclusion_prob": 0.125}, template, 4)
    assert record.metadata["stratum"] == "band-3" and record.metadata["inclusion_prob"] == 0.125
    assert "stratum" not in A.to_record({**_scored(1)[0], "stratum": float("nan")}, template, 4).metadata
    for bad in (0, 1.5, "often"):
        with pytest.raises(ValueError, match="inclusion_prob"):
            A.to_record({**_scored(1)[0], "inclusion_prob": bad}, template, 4)


def test_summary_counts_records_reviewers_and_decisions():
    decisions = {
        "a": A.Decision(True, 4, "", "ann, bob", {"ann": "keep", "bob": "keep"}, []),
        "b": A.Decision(None, None, "", "ann, bob", {"ann": "keep", "bob": "discard"}, ["cy"]),
        "c": A.Decision(None, None, "", "", {}, []),
    }
    info = A.summary(decisions)
    assert info == {"records": 3, "reviewers": ["ann", "bob", "cy"], "decisions": 1, "votes": 4, "drafts": 1}
    assert "Pulled 3 records: 1 with a decision" in A.format_summary(info)


def test_design_is_appended_to_the_guidelines_within_the_servers_limit():
    template = load_template("humpback")
    assert A.guidelines(template, "stratified by score band").endswith("stratified by score band")
    assert len(A.guidelines(template, "x" * 50_000)) <= A.GUIDELINES_MAX


def test_a_killed_5000_record_push_resumes_without_duplicates(argilla_stack, argilla_config):
    rows = _scored(5000, "scale")

    class Killed(Exception):
        pass

    def kill_after_2000(done: int) -> None:
        if done >= 2000:
            raise Killed

    with pytest.raises(Killed):
        A.push(rows, "scale-5000", argilla_config, batch_size=500, on_progress=kill_after_2000)
    progress: list[int] = []
    report = A.push(rows, "scale-5000", argilla_config, batch_size=500, on_progress=progress.append)
    assert report.skipped == 2000 and report.pushed == 3000 and progress[-1] == 5000
    # Checked in the server itself, through the SDK's own reader, not ours.
    dataset = _sdk(argilla_stack).datasets(name="scale-5000", workspace="backtrans")
    ids = [str(r.id) for r in dataset.records(with_responses=False, with_suggestions=False)]
    assert len(ids) == len(set(ids)) == 5000
    assert set(ids) == {A.record_id(row) for row in rows}
    assert dataset.progress()["total"] == 5000
    # Nothing left to send, and a pull pages through all of it.
    assert A.push(rows, "scale-5000", argilla_config).pushed == 0
    decisions = A.pull("scale-5000", argilla_config)
    assert len(decisions) == 5000 and decisions[A.record_id(rows[4321])].row["instruction"] == "scale 4321?"


def test_plan_push_with_overlap_two_reviewers_votes_and_progress(argilla_stack, argilla_config):
    rows = [{**row, "stratum": f"band-{row['score']}", "inclusion_prob": round(0.1 * row["score"], 2),
             "overlap": i < 2} for i, row in enumerate(_scored(6, "plan"))]
    design = "Stratified by score band; 10% of records go to two reviewers."
    A.push(rows, "plan-set", argilla_config, design=design, overlap=2)
    client = _sdk(argilla_stack)
    dataset = client.datasets(name="plan-set", workspace="backtrans")
    assert {"stratum", "inclusion_prob", "overlap"} <= {m.name for m in dataset.settings.metadata}
    assert dataset.settings.guidelines.endswith(design)
    assert dataset.settings.distribution.min_submitted == 2
    by_id = {str(r.id): r for r in dataset.records()}
    assert by_id[A.record_id(rows[2])].metadata["stratum"] == "band-3"
    assert by_id[A.record_id(rows[2])].metadata["inclusion_prob"] == pytest.approx(0.3)

    ids = _server_ids(argilla_stack, "plan-set")
    first, second = Annotator(argilla_stack, "overlap-a"), Annotator(argilla_stack, "overlap-b")
    for row in rows[:3]:
        first.respond(ids[A.record_id(row)], "keep", 4)
    second.respond(ids[A.record_id(rows[0])], "keep", 5)
    second.respond(ids[A.record_id(rows[1])], "discard", 2)
    decisions = A.pull("plan-set", argilla_config)
    assert decisions[A.record_id(rows[0])].votes == {"overlap-a": "keep", "overlap-b": "keep"}
    assert decisions[A.record_id(rows[1])].votes == {"overlap-a": "keep", "overlap-b": "discard"}
    assert decisions[A.record_id(rows[0])].scores == {"overlap-a": 4, "overlap-b": 5}
    assert decisions[A.record_id(rows[2])].row["stratum"] == "band-3"
    assert [decisions[A.record_id(row)].row["overlap"] for row in rows] == [True, True, False, False, False, False]
    progress = A.progress_by_reviewer("plan-set", argilla_config)
    assert progress.get("overlap-a") == 3 and progress.get("overlap-b") == 2
    # Two reviewers are asked for: records 0 and 1 are complete, record 2 (one reviewer) is still pending.
    assert client.datasets(name="plan-set", workspace="backtrans").progress()["completed"] == 2
    info = A.summary(decisions)
    assert info["records"] == 6 and info["reviewers"] == ["overlap-a", "overlap-b"] and info["votes"] == 5

    # A later push without --overlap keeps the dataset's setting.
    A.push(rows, "plan-set", argilla_config)
    assert client.datasets(name="plan-set", workspace="backtrans").settings.distribution.min_submitted == 2


def test_first_push_prints_no_sdk_lookup_warnings(argilla_stack, argilla_config, recwarn):
    config = A.ArgillaConfig(argilla_stack.url, argilla_stack.api_key, "fresh-workspace")
    client = _sdk(argilla_stack)
    with pytest.warns(UserWarning, match="not found"):  # what the SDK says on its own
        client.datasets(name="never-made", workspace="backtrans")
    recwarn.clear()
    A.push(_scored(2, "quiet"), "quiet-set", config)
    assert not [w for w in recwarn if "not found" in str(w.message)]
    with pytest.raises(A.ArgillaError, match="no dataset"):
        A.pull("never-made", config)
    assert not [w for w in recwarn if "not found" in str(w.message)]


def test_a_plan_with_overlap_counts_progress_across_both_datasets(argilla_stack, argilla_config):
    rows = [{**row, "overlap": i % 3 == 0} for i, row in enumerate(_scored(7, "split"))]
    progress: list[int] = []
    reports = A.push_plan(rows, "split-set", argilla_config, design="a plan", on_progress=progress.append)
    assert [(r.dataset, r.pushed) for r in reports] == [("split-set", 4), ("split-set-overlap", 3)]
    assert progress == sorted(progress) and progress[-1] == 7
    client = _sdk(argilla_stack)
    assert client.datasets(name="split-set-overlap", workspace="backtrans").settings.distribution.min_submitted == 2
    assert client.datasets(name="split-set", workspace="backtrans").settings.distribution.min_submitted == 1
    decisions = A.pull_plan("split-set", argilla_config)
    assert set(decisions) == {A.record_id(row) for row in rows}
