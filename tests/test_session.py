"""The headless session: every step a face offers, in-process, scoped to its owner."""

import asyncio
import json
import os
import time

import pandas as pd
import pytest

from backtrans import backends
from backtrans.augment import FilterSettings
from backtrans.limits import JobGate, LimitError, Limits
from backtrans.owners import owner_for
from backtrans.review_table import STATUSES, Filters
from backtrans.session import LoadError, NoSuchRun, Session, SessionError
from backtrans.store import RunStore
from backtrans.templates import TemplateError
from backtrans.workspace import Workspace
from tests.conftest import write_jsonl

ALL = Filters(0, 10, STATUSES, "", "input order")


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    return Workspace(tmp_path / "data", Limits())


def _session(workspace: Workspace, user: str | None = None) -> Session:
    return workspace.session(owner_for(user, None))


def _drain(generator) -> list:
    async def go():
        return [item async for item in generator]

    return asyncio.run(go())


def _choice(fake_llm, key: str = "", concurrency: int = 8) -> backends.Choice:
    return backends.choose("custom", model="fake", base_url=fake_llm.url, api_key=key, concurrency=concurrency)


def _judge(session: Session, fake_llm, template: str = "humpback", **kwargs) -> list:
    return _drain(session.judge(session.resolve_template(template), _choice(fake_llm, **kwargs), every_s=0))


def test_bad_upload_names_the_file_the_user_knows_with_line_and_column(workspace, tmp_path):
    bad = tmp_path / "upload-cache-name.jsonl"
    bad.write_text('{"instruction": "q", "generation": "a"}\n{"instruction": 1,\n')
    session = _session(workspace)
    with pytest.raises(SessionError) as error:
        session.inspect_upload(str(bad), "my data.jsonl")
    assert "my data.jsonl:2:1: invalid JSON" in str(error.value)
    assert session.pending_upload is None
    with pytest.raises(LoadError, match="Upload a JSONL"):
        session.load_upload("instruction", "generation")
    late = tmp_path / "late.jsonl"  # past the preview: the full validation names it
    late.write_text("".join(f'{{"instruction": "q{i}", "generation": "a"}}\n' for i in range(8))
                    + '{"instruction": "q", "generation": }\n')
    session.inspect_upload(str(late), "late data.jsonl")
    with pytest.raises(LoadError) as error:
        session.load_upload("instruction", "generation")
    assert session.workbench is None
    assert "late data.jsonl:9:" in str(error.value) and "invalid JSON" in str(error.value), error.value
    assert "upload-cache-name" not in str(error.value) and ".jsonl:9" in str(error.value)


def test_upload_guesses_the_mapping_and_keeps_the_original_name(workspace, tmp_path):
    src = write_jsonl(tmp_path / "odd.jsonl", [{"ask": "q1", "reply": "a1", "alt": "b1"}])
    session = _session(workspace)
    found = session.inspect_upload(str(src), "odd pairs.jsonl")
    assert found.columns == ["ask", "reply", "alt"] and found.instruction_column is None
    kept = session.pending_upload[0]
    assert kept != str(src) and os.path.exists(kept) and str(session.folder) in kept  # the owner's own copy
    loaded = session.load_upload("ask", "alt")
    assert (loaded.label, loaded.rows, loaded.without_response) == ("odd pairs.jsonl", 1, 0)
    assert session.workbench.frame.iloc[0]["generation"] == "b1"
    with pytest.raises(LoadError, match="missing column 'instruction'"):
        session.load_upload(None, None)


def test_an_upload_of_an_unknown_type_or_too_large_is_refused(tmp_path):
    session = Workspace(tmp_path / "d", Limits(upload_mb=1)).session(owner_for(None, None))
    exe = tmp_path / "tool.sh"
    exe.write_text("echo hi")
    with pytest.raises(SessionError, match="unknown file type"):
        session.inspect_upload(str(exe), "tool.sh")
    big = tmp_path / "big.jsonl"
    big.write_bytes(b'{"instruction": "q", "generation": "a"}\n' * 40_000)
    with pytest.raises(SessionError, match="up to 1 MB"):
        session.inspect_upload(str(big), "big.jsonl")


def test_sample_is_scored_with_score_and_reason_and_a_done_line(workspace, fake_llm):
    session = _session(workspace)
    assert session.load_sample().rows == 30 and len(session.workbench) == 30
    updates = _judge(session, fake_llm)
    final = updates[-1]
    assert final.done and final.error is None and final.progress.done == final.progress.ok == 30
    assert all(u.progress.total == 30 for u in updates) and not any(u.done for u in updates[:-1])
    view = session.review(ALL, 4)
    assert view.rows["score"].notna().all() and view.rows["reason"].str.len().gt(0).all()
    assert fake_llm.requests == 30 and sum(b.kept + b.discarded for b in view.bins) == 30
    kept = int((session.workbench.frame["score"] >= 4).sum())
    assert (view.measure, view.threshold, view.kept, view.total, view.scored) == ("score", 4, kept, 30, 30)
    assert view.levels["A4"] == kept and not view.has_expected
    assert all(b.discarded == 0 for b in view.bins if b.low >= 4) and all(b.kept == 0 for b in view.bins if b.low < 4)


def test_the_api_key_is_sent_but_never_shown(workspace, fake_llm):
    secret = "sk-app-SECRET-0123456789abcdef"
    fake_llm.config.rate_500 = 1.0
    session = _session(workspace)
    session.load_sample()
    choice = _choice(fake_llm, key=secret)
    choice.settings.max_retries = 0  # every call fails at once: the error text is what is checked
    updates = _drain(session.judge(session.resolve_template("humpback"), choice, every_s=0))
    assert updates[-1].progress.llm_error == 30
    shown = json.dumps([str(vars(u)) for u in updates]) + session.workbench.frame.to_json()
    assert secret not in shown and fake_llm.api_keys[secret] >= 1


def test_review_filters_sort_and_an_override_follows_the_row(workspace, fake_llm):
    session = _session(workspace)
    session.load_sample()
    _judge(session, fake_llm)
    table = session.review(Filters(5, 5, ("ok",), "", "input order"), 4).rows
    assert set(table["score"]) == {5}
    table = session.review(Filters(0, 10, STATUSES, "capital", "input order"), 4).rows
    assert list(table["instruction"]) == ["What is the capital of Australia?"]
    low = int(session.review(Filters(0, 10, STATUSES, "", "score, low first"), 4).rows.iloc[0]["row"])
    assert session.override(True) is False  # nothing selected: nothing recorded
    selected = session.select(low)
    assert (bool(selected["final_keep"]), selected["decided_by"]) == (False, "judge")
    assert session.override(True)
    selected = session.select(low)
    assert (bool(selected["final_keep"]), selected["decided_by"], bool(selected["judge_keep"])) == (True, "you", False)
    view = session.review(ALL, 4)
    row = view.rows.set_index("row").loc[low]
    assert (bool(row["final_keep"]), row["decided_by"], view.overrides) == (True, "you", 1)
    exported = session.export("jsonl", 4)
    kept = {json.loads(line)["instruction"] for line in open(exported.path)}
    assert session.workbench.frame.iloc[low]["instruction"] in kept


def test_loading_other_data_clears_the_selection_and_the_overrides(workspace, fake_llm, tmp_path):
    session = _session(workspace)
    session.load_sample()
    session.select(29)
    session.override(False)
    src = write_jsonl(tmp_path / "five.jsonl", [{"instruction": f"q{i}", "generation": f"a{i}"} for i in range(5)])
    session.inspect_upload(str(src), "five.jsonl")
    session.load_upload("instruction", "generation")
    assert session.selected_row is None and session.workbench.overrides == {}
    assert session.override(True) is False
    assert session.review(ALL, 4).overrides == 0


def test_generate_fills_missing_responses_then_judge(workspace, fake_llm, tmp_path):
    src = write_jsonl(tmp_path / "instructions.jsonl", [{"instruction": "Name a colour."}, {"instruction": "Hi?"}])
    session = _session(workspace)
    session.inspect_upload(str(src), "instructions.jsonl")
    assert session.load_upload("instruction", None).without_response == 2
    with pytest.raises(SessionError, match="2 rows have no response: run Generate first"):
        _judge(session, fake_llm)
    assert fake_llm.requests == 0
    updates = _drain(session.generate(_choice(fake_llm), every_s=0))
    assert session.workbench.frame["generation"].notna().all() and updates[-1].progress.ok == 2
    _judge(session, fake_llm)
    assert session.workbench.frame["score"].notna().all()


def test_custom_template_preview_and_sandbox(workspace, fake_llm):
    session = _session(workspace)
    session.load_sample()
    first = session.workbench.frame.iloc[0]["instruction"]
    assert session.preview_prompt("custom", "Q: {{ instruction }}") == f"Q: {first}"
    with pytest.raises(TemplateError, match="refused by the sandbox"):
        session.preview_prompt("custom", "{{ ''.__class__.__mro__ }}")


def test_resume_an_earlier_run_of_ones_own(workspace, fake_llm, tmp_path):
    session = _session(workspace, "alice")
    rows = [{"instruction": f"q{i}", "generation": f"a{i}"} for i in range(6)]
    src = write_jsonl(tmp_path / "cache-name.jsonl", rows)
    session.inspect_upload(str(src), "alice.jsonl")
    session.load_upload("instruction", "generation")
    _judge(session, fake_llm, template="additive")
    runs = session.runs()
    assert [r.label for r in runs] == ["alice.jsonl"] and runs[0].finished
    again = _session(workspace, "alice")  # a new page, the same account
    resumed = again.resume(runs[0].run_id)
    assert resumed.template == "additive" and resumed.base_url == fake_llm.url and resumed.backend == "custom"
    before = fake_llm.requests
    final = _judge(again, fake_llm, template="additive")[-1]
    assert fake_llm.requests == before and final.progress.cached == 6


def test_another_owners_run_reads_exactly_as_a_made_up_one(workspace, fake_llm):
    alice, bob = _session(workspace, "alice"), _session(workspace)
    alice.load_sample()
    _judge(alice, fake_llm)
    run_id = alice.runs()[0].run_id
    assert bob.runs() == []
    with pytest.raises(NoSuchRun) as theirs:
        bob.resume(run_id)
    with pytest.raises(NoSuchRun) as made_up:
        bob.resume("20260101-000000-000000000000")
    assert str(theirs.value) == str(made_up.value) == "No such run."
    assert bob.workbench is None


def test_a_cache_hit_from_another_owner_reveals_nothing_of_theirs(workspace, fake_llm, tmp_path):
    alice, bob = _session(workspace, "alice"), _session(workspace, "bob")
    src = write_jsonl(tmp_path / "x.jsonl", [{"instruction": "shared q", "generation": "shared a"}])
    alice.inspect_upload(str(src), "alice-secret-name.jsonl")
    alice.load_upload("instruction", "generation")
    _judge(alice, fake_llm)
    bob.inspect_upload(str(src), "bob.jsonl")
    bob.load_upload("instruction", "generation")
    before = fake_llm.requests
    final = _judge(bob, fake_llm)[-1]
    assert fake_llm.requests == before and final.progress.cached == 1  # the call was saved
    shown = json.dumps([vars(r) for r in bob.runs()]) + bob.workbench.frame.to_json()
    assert "alice" not in shown and alice.runs()[0].run_id not in shown


def test_delete_my_data_removes_runs_uploads_and_exports_of_that_owner_only(workspace, fake_llm, tmp_path):
    alice, bob = _session(workspace, "alice"), _session(workspace, "bob")
    for session, name in ((alice, "a"), (bob, "b")):
        src = write_jsonl(tmp_path / f"{name}.jsonl", [{"instruction": f"{name} q", "generation": f"{name} a"}])
        session.inspect_upload(str(src), f"{name}.jsonl")
        session.load_upload("instruction", "generation")
        _judge(session, fake_llm)
        assert session.export("csv", 0).rows == 1
    assert alice.delete_my_data() == 1
    assert not alice.folder.exists() and alice.runs() == [] and alice.workbench is None
    assert len(bob.runs()) == 1 and bob.folder.exists()
    store = RunStore(workspace.store_path)
    remaining = [row[0] for row in store.db.execute("SELECT run_id FROM results")]
    store.close()
    assert remaining == [bob.runs()[0].run_id]  # alice's result is gone, bob's stays


def test_retention_removes_what_is_older_than_its_days(tmp_path, fake_llm):
    workspace = Workspace(tmp_path / "d", Limits(retention_days=7))
    session = _session(workspace, "carol")
    session.load_sample()
    _judge(session, fake_llm)
    session.export("jsonl", 4)
    assert workspace.expire() == 0 and session.runs()
    assert workspace.expire(now=time.time() + 8 * 86400) == 1
    assert session.runs() == [] and not any(p.is_file() for p in session.folder.rglob("*"))


def test_quotas_rows_per_job_daily_rows_and_jobs_per_owner(tmp_path, fake_llm, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.url)
    monkeypatch.setenv("BACKTRANS_MODEL", "fake")
    workspace = Workspace(tmp_path / "d", Limits(rows_per_job=20, rows_per_day=40))
    session = _session(workspace)
    session.load_sample()  # 30 rows
    with pytest.raises(LimitError, match="at most 20 per job"):
        _drain(session.judge(session.resolve_template("humpback"), session.choose_backend("server")))
    workspace.limits = Limits(rows_per_day=40)
    server = session.choose_backend("server")
    assert server.server_pays
    _drain(session.judge(session.resolve_template("humpback"), server))
    assert fake_llm.requests == 30
    session.load_sample()
    with pytest.raises(LimitError, match="30 of 40 rows used"):
        _drain(session.judge(session.resolve_template("additive"), server))
    # the visitor's own endpoint is not the app's to count
    _judge(session, fake_llm, template="additive")
    assert fake_llm.requests == 60
    gate = JobGate()
    with gate.job("o", 1):
        with pytest.raises(LimitError, match="already have 1 job"):
            with gate.job("o", 1):
                pass
        with gate.job("someone else", 1):
            assert gate.running("o") == 1
    assert gate.running("o") == 0


def test_hub_ids_are_checked_and_never_read_as_paths(workspace, tmp_path, monkeypatch):
    session = _session(workspace)
    for bad in ("/etc/passwd", "../../etc/passwd", "a/../../b", str(workspace.data_dir), "a/b/c", "..", "x/..",
                "~/x", "C:\\x\\y"):
        with pytest.raises(LoadError, match="not a Hugging Face dataset id"):
            session.load_hub(bad)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    write_jsonl(tmp_path / "owner" / "name" / "train.jsonl", [{"instruction": "local", "generation": "file"}])
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LoadError) as error:  # a folder of that name next to the app is not the Hub
        session.load_hub("owner/name")
    assert session.workbench is None and "local" not in str(error.value) and "not found" in str(error.value)


def test_local_files_mode_is_confined_to_its_folder(tmp_path):
    root = tmp_path / "shared"
    root.mkdir()
    write_jsonl(root / "ok.jsonl", [{"instruction": "q", "generation": "a"}])
    outside = write_jsonl(tmp_path / "secret.jsonl", [{"instruction": "secret", "generation": "s"}])
    (root / "link.jsonl").symlink_to(outside)
    off = _session(Workspace(tmp_path / "d1", Limits()))
    with pytest.raises(LoadError, match="off in this app"):
        off.load_local("ok.jsonl")
    session = _session(Workspace(tmp_path / "d2", Limits(), local_files_dir=root))
    assert session.load_local("ok.jsonl").rows == 1
    for bad in ("../secret.jsonl", str(outside), "link.jsonl", "/etc/passwd"):
        with pytest.raises(LoadError):
            session.load_local(bad)
        assert "secret" not in session.workbench.frame.to_json(), bad


def test_documents_to_candidates(workspace, fake_llm, tmp_path):
    doc = tmp_path / "upload-123.md"
    doc.write_text("# Tea\n" + "Green tea is brewed with water at about 80 degrees for two minutes. " * 5 + "\n"
                   "# MENU\n" + "Home about contact shop. " * 12 + "\n")
    session = _session(workspace)
    updates = _drain(session.augment([(str(doc), "guide.md")], None, FilterSettings(100, 6000), _choice(fake_llm),
                                     every_s=0))
    assert len(session.workbench) == 1 and updates[-1].done and updates[-1].progress.ok == 1
    assert updates[-1].filters.removed.get("header_caps") == 1 and updates[-1].filters.kept == 1
    row = session.workbench.frame.iloc[0]
    assert row["instruction"] and row["source"] == "guide.md" and row["origin"] == "augmented"
    _judge(session, fake_llm)
    chat = json.loads(open(session.export("chat", 0).path).readline())
    assert chat["messages"][0]["content"] == "Answer with knowledge from web search."


def test_export_formats_count_and_name(workspace, fake_llm):
    session = _session(workspace)
    session.load_sample()
    _judge(session, fake_llm)
    kept = int((session.workbench.frame["score"] >= 4).sum())
    for fmt in ("jsonl", "chat", "csv", "parquet"):
        exported = session.export(fmt, 4)
        reader = {"parquet": pd.read_parquet, "csv": pd.read_csv}.get(fmt)
        count = len(reader(exported.path)) if reader else len(open(exported.path).read().splitlines())
        assert count == exported.rows == kept and exported.total == 30, fmt
        assert os.path.basename(exported.path).startswith("sample_pairs-curated-") or \
            os.path.basename(exported.path).startswith("the-bundled-sample-curated-")
    chat = json.loads(open(session.export("chat", 4).path).readline())
    assert chat["messages"][0] == {"role": "system", "content": "Answer in the style of an AI Assistant."}


def test_backends_never_send_the_servers_key_to_a_url_a_visitor_typed(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-server-key-0123456789")
    monkeypatch.setenv("BACKTRANS_MODEL", "m")
    custom = backends.choose("custom", model="m", base_url="http://attacker.example/v1")
    assert custom.settings.api_key != "sk-server-key-0123456789" and not custom.server_pays
    with pytest.raises(backends.BackendError, match="Sign in"):
        backends.choose("huggingface")
    hf = backends.choose("huggingface", hf_token="hf_visitor_token_123")
    assert hf.settings.api_key == "hf_visitor_token_123" and hf.settings.base_url == backends.HF_ROUTER_URL
    monkeypatch.setenv("SPACE_ID", "someone/backtrans")
    with pytest.raises(backends.BackendError, match="does not lend"):
        backends.choose("server")
    monkeypatch.setenv("BACKTRANS_SHARE_SERVER_KEY", "1")
    assert backends.choose("server").server_pays


def test_on_a_space_no_spelling_of_the_spaces_own_network_starts_a_job_and_off_it_localhost_judges(
        workspace, fake_llm, monkeypatch):
    from backtrans import egress
    from tests.test_egress import LOOPBACK_SPELLINGS, OTHER_INTERNAL

    session = _session(workspace)
    session.load_sample()
    monkeypatch.setenv("SPACE_ID", "someone/backtrans")
    for spelling in LOOPBACK_SPELLINGS + OTHER_INTERNAL:
        url = spelling.format(port=fake_llm.port)
        with pytest.raises(backends.BackendError) as refused:
            session.choose_backend("custom", "fake", url)
        expected = "The base URL must start with http:// or https://." if url.startswith("ftp") else egress.REFUSAL
        assert str(refused.value) == expected, url  # what the page shows after "Cannot start."
    assert fake_llm.connections == 0 and fake_llm.requests == 0
    # the Space's owner may name an internal endpoint; the app's own model (the owner's secret) is not guarded
    monkeypatch.setenv(egress.ALLOWED_ENV, f"localhost:{fake_llm.port}")
    allowed = session.choose_backend("custom", "fake", f"http://localhost:{fake_llm.port}/v1")
    assert allowed.settings.public_only and _drain(session.judge(session.resolve_template("humpback"), allowed,
                                                                 every_s=0))[-1].progress.ok == 30
    monkeypatch.delenv(egress.ALLOWED_ENV)
    monkeypatch.setenv("OPENAI_BASE_URL", fake_llm.url)
    monkeypatch.setenv("BACKTRANS_MODEL", "fake")
    monkeypatch.setenv("BACKTRANS_SHARE_SERVER_KEY", "1")
    server = session.choose_backend("server")
    assert not server.settings.public_only
    _drain(session.judge(session.resolve_template("additive"), server, every_s=0))
    assert fake_llm.requests == 60
    monkeypatch.delenv("SPACE_ID")  # a local user's own vLLM on localhost, as before
    local = session.choose_backend("custom", "fake", f"http://localhost:{fake_llm.port}/v1")
    assert not local.settings.public_only
    session.load_sample()
    updates = _drain(session.judge(session.resolve_template("humpback-short"), local, every_s=0))
    assert updates[-1].done and updates[-1].progress.ok == 30 and fake_llm.requests == 90
    assert session.workbench.frame["score"].notna().all()


@pytest.mark.parametrize("transport", ["lean", "openai-httpx"])
def test_on_a_space_a_name_rebound_to_loopback_after_start_fails_each_row_with_the_refusal(
        workspace, fake_llm, monkeypatch, transport):
    from backtrans import egress
    from tests.test_egress import PUBLIC_V4, Answers

    monkeypatch.setenv("SPACE_ID", "someone/backtrans")
    monkeypatch.setenv("BACKTRANS_HTTP", transport)
    answers = Answers(monkeypatch, {"rebind.example.com": [PUBLIC_V4]})
    session = _session(workspace)
    session.load_sample()
    choice = session.choose_backend("custom", "fake", f"http://rebind.example.com:{fake_llm.port}/v1")
    answers.names["rebind.example.com"] = ["127.0.0.1"]  # between Start and the first connect
    updates = _drain(session.judge(session.resolve_template("humpback"), choice, every_s=0))
    assert updates[-1].progress.llm_error == 30
    assert set(session.workbench.frame["error"]) == {egress.REFUSAL}
    shown = json.dumps([str(vars(u)) for u in updates]) + session.review(ALL, 4).rows.to_json()
    assert "127.0.0.1" not in shown and "Errno" not in shown
    assert fake_llm.connections == 0 and fake_llm.requests == 0


def test_on_a_space_each_owner_pushes_into_an_argilla_dataset_of_their_own(workspace, monkeypatch):
    alice, anonymous = _session(workspace, "alice"), _session(workspace)
    assert alice.argilla_dataset_name("review") == "review"  # a workstation: the name as given
    monkeypatch.setenv("SPACE_ID", "team/backtrans")
    assert alice.argilla_dataset_name("review") == "review-alice"
    assert anonymous.argilla_dataset_name("review") == f"review-{anonymous.owner.slug}"
    assert anonymous.owner.slug.startswith("anon-") and anonymous.argilla_dataset_name("").startswith("backtrans-")


def test_a_review_plan_through_real_argilla_with_two_reviewers(workspace, fake_llm, tmp_path, argilla_stack,
                                                                 monkeypatch):
    import argilla as rg

    from backtrans import argilla
    from tests.conftest import Annotator

    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    rows = [{"instruction": f"plan question {i} [[score={1 + i % 5}]]", "generation": f"answer {i}"}
            for i in range(200)]
    session = _session(workspace, "planner")
    session.inspect_upload(str(write_jsonl(tmp_path / "pairs.jsonl", rows)), "pairs.jsonl")
    session.load_upload("instruction", "generation")
    _judge(session, fake_llm)
    plan = session.review_plan(40, threshold=4, seed=1, overlap_share=0.25)
    assert sum(int(b["planned"]) for b in plan.bands.values()) == 40 and plan.overlap == 10
    assert set(plan.bands) == {f"score {s}" for s in range(1, 6)}
    pushed = session.argilla_push("plan-review", "backtrans", 4)
    assert sum(r.pushed for r in pushed) == 40
    assert [r.dataset for r in pushed] == ["plan-review", "plan-review-overlap"]

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    once, twice = (client.datasets(name=name, workspace="backtrans") for name in ("plan-review", "plan-review-overlap"))
    # how many reviewers a record needs is a dataset setting: only the overlap's dataset asks for two
    assert once.settings.distribution.min_submitted == 1 and twice.settings.distribution.min_submitted == 2
    records = list(once.records()) + list(twice.records())
    assert len(records) == 40 and len(list(twice.records())) == 10
    planned, _ = session.planned_review
    server_ids = {str(r.id): r._server_id for r in records}
    first, second = Annotator(argilla_stack, "plan-ann"), Annotator(argilla_stack, "plan-bob")
    for row in planned.to_dict("records"):
        good = row["score"] >= 3  # the reviewers' truth: a little more generous than the judge's A4
        first.respond(server_ids[argilla.record_id(row)], "keep" if good else "discard")
        if row["overlap"]:
            second.respond(server_ids[argilla.record_id(row)], "keep" if good or row["score"] == 2 else "discard")
    pulled = session.argilla_pull("plan-review", "backtrans", "any-discard", 4)
    assert (pulled.summary["records"], pulled.summary["decisions"]) == (40, 40)
    assert sorted(pulled.summary["reviewers"]) == ["plan-ann", "plan-bob"]
    estimates = session.review_estimate(0.8)
    assert estimates.reviewed == 40 and estimates.agreement.items == 10
    assert (estimates.calibration["low"] <= estimates.calibration["keep_rate"] + 1e-9).all()
    assert {"precision", "recall"} == set(estimates.curve["metric"])
    assert estimates.suggested is not None and estimates.suggested.threshold >= 3


def test_a_custom_template_s_scale_and_guidelines_reach_argilla(workspace, fake_llm, tmp_path, argilla_stack,
                                                                 monkeypatch):
    # The app once pushed a custom template's scores under the default template's 1-5 question and guidelines.
    import argilla as rg

    monkeypatch.setenv("ARGILLA_API_URL", argilla_stack.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla_stack.api_key)
    session = _session(workspace, "custom-pusher")
    session.inspect_upload(str(write_jsonl(tmp_path / "ten.jsonl", [
        {"instruction": f"ten-point question {i} [[score={2 * i + 1}]]", "generation": f"answer {i}"}
        for i in range(5)])), "ten.jsonl")
    session.load_upload("instruction", "generation")
    custom = ("{#-\nname: ten-point\nkind: judge\nscore_range: 1-10\n-#}\n"
              "Rate this answer from 1 to 10 and justify it (our ten-point house rubric).\n"
              "{{ instruction }}\n{{ generation }}")
    template = session.resolve_template("custom", custom)
    _drain(session.judge(template, _choice(fake_llm)))
    assert list(session.workbench.frame["score"]) == [1, 3, 5, 7, 9]
    assert sum(r.pushed for r in session.argilla_push("ten-point", "backtrans", 6)) == 5
    dataset = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key).datasets(
        name="ten-point", workspace="backtrans")
    assert list(dataset.settings.questions["score"].values) == list(range(1, 11))
    assert "ten-point house rubric" in dataset.settings.guidelines
    keep = {int(r.metadata["llm_score"]): r.suggestions["keep"].value for r in dataset.records(with_suggestions=True)}
    assert keep == {1: "discard", 3: "discard", 5: "discard", 7: "keep", 9: "keep"}


def test_resuming_an_upload_mapped_by_hand_maps_its_columns_again(workspace, fake_llm, tmp_path):
    # Once the app recorded no mapping: the resume answered "missing column 'instruction'" with a CLI hint.
    src = tmp_path / "cache-name.csv"
    src.write_text("row_no,user_text,bot_text\n" + "".join(f"{i},question {i},answer {i}\n" for i in range(4)))
    session = _session(workspace, "mapper")
    found = session.inspect_upload(str(src), "mine.csv")
    assert found.instruction_column is None  # nothing to guess: the user maps by hand
    session.load_upload("user_text", "bot_text")
    _judge(session, fake_llm)
    before = fake_llm.requests
    again = _session(workspace, "mapper")
    resumed = again.resume(again.runs()[0].run_id)
    assert (resumed.loaded.label, resumed.loaded.rows) == ("mine.csv", 4)
    assert list(again.workbench.frame["instruction"]) == [f"question {i}" for i in range(4)]
    final = _judge(again, fake_llm)[-1]
    assert fake_llm.requests == before and final.progress.cached == 4


def test_the_judge_learns_from_its_reviewers_as_a_measure_the_review_keeps_by(workspace, fake_llm, tmp_path):
    rows = [{"instruction": f"question {i} [[score={1 + i % 5}]]", "generation": f"answer {i}"} for i in range(60)]
    session = _session(workspace, "aligner")
    session.inspect_upload(str(write_jsonl(tmp_path / "pairs.jsonl", rows)), "pairs.jsonl")
    session.load_upload("instruction", "generation")
    _judge(session, fake_llm, template="humpback-short")
    frame = session.workbench.frame
    with pytest.raises(SessionError, match="review"):  # nothing reviewed yet: nothing to learn from
        session.align()
    # A reviewer stricter than the judge's threshold: keeps only the 5s.
    frame["human_keep"] = [bool(score >= 5) if i % 2 == 0 else None for i, score in enumerate(frame["score"])]
    report = session.align()
    aligned = frame["aligned_score"]
    assert aligned.notna().all() and ((aligned >= 0) & (aligned <= 1)).all() and report.reviewed == 30
    session.set_keep_by("aligned_score")
    view = session.review(ALL, 0.5)
    assert (view.measure, view.keep_by) == ("aligned_score", "aligned_score")
    unreviewed = frame["human_keep"].isna()
    kept_unreviewed = session.workbench.with_decisions(0.5)[unreviewed]["final_keep"]
    assert set(frame.loc[unreviewed & kept_unreviewed, "score"]) == {5}  # the 4s the judge would keep are not
    assert sum(b.kept + b.discarded for b in view.bins) == 60 and all(b.high <= 1.1 for b in view.bins)


def test_the_unreviewed_pairs_are_judged_again_with_the_reviewers_overrulings_as_examples(workspace, fake_llm,
                                                                                        tmp_path):
    rows = [{"instruction": f"question {i} [[score={1 + i % 5}]]", "generation": f"answer {i}"} for i in range(60)]
    session = _session(workspace, "rejudger")
    session.inspect_upload(str(write_jsonl(tmp_path / "pairs.jsonl", rows)), "pairs.jsonl")
    session.load_upload("instruction", "generation")
    _judge(session, fake_llm, template="humpback-short")
    choice = _choice(fake_llm)

    def rejudge():
        async def go():
            job = session.start_rejudge(choice, every_s=0)
            while job.running:
                await asyncio.sleep(0.02)
            return job
        return asyncio.run(go())

    with pytest.raises(SessionError, match="Pull reviewers' decisions first"):
        rejudge()
    frame = session.workbench.frame
    frame["human_keep"] = [bool(score >= 5) if i < 6 else None for i, score in enumerate(frame["score"])]
    with pytest.raises(SessionError, match=r"6 reviewed pairs .*at least 20"):  # too few to say anything
        rejudge()
    # A reviewer stricter than the judge: keeps only the 5s of the first 30 pairs.
    frame["human_keep"] = [bool(score >= 5) if i < 30 else None for i, score in enumerate(frame["score"])]
    first_scores = frame["score"].copy()
    session.align()  # a calibration of the first judge, kept by: the judge with examples must not inherit it
    session.set_keep_by("aligned_score")
    before = fake_llm.requests
    job = rejudge()
    assert job.state == "done" and job.progress.done == 30
    assert fake_llm.requests - before == 30  # the 30 unreviewed pairs, no more
    sent = list(fake_llm.recent_prompts)[-30:]
    prefix = sent[0][: sent[0].index("## The new pair")]
    assert all(prompt.startswith(prefix) for prompt in sent)  # one fixed block: the prompt cache reads it once
    assert "Reviewed example 1" in prefix and "DISCARDED" in prefix and "[[score=4]]" in prefix  # a 4 they dropped
    frame = session.workbench.frame
    assert frame["score"][:30].equals(first_scores[:30])  # the reviewed pairs keep the first judge's scores
    assert session.workbench.examples_used == len(prefix.split("## Reviewed example")) - 1 > 0
    with pytest.raises(SessionError, match="judged again with the reviewers' examples"):
        session.align()  # a calibration on the first judge would not describe the new scores
    assert "aligned_score" not in frame and session.keep_by == "expected_score"
    again = rejudge()
    assert fake_llm.requests - before == 30 and again.progress.cached == 30  # a rerun costs nothing
    _judge(session, fake_llm, template="humpback-short")  # the first judge again, from the store
    assert fake_llm.requests - before == 30 and session.workbench.examples_used == 0
    assert session.align().reviewed == 30
