"""Real Chromium, driven by Playwright, through the whole flow of the app and through Argilla's own UI."""

import json
import os
import re
import time
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from backtrans import argilla as A
from tests.conftest import ROOT, Annotator, AppServer, write_jsonl

SCREENSHOTS = Path(os.environ["BACKTRANS_SCREENSHOTS"]) if os.environ.get("BACKTRANS_SCREENSHOTS") else None


@pytest.fixture
def app_server(tmp_path, fake_process, argilla_stack):
    fake = fake_process("--latency", "0.02")
    server = AppServer(tmp_path, {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "fake-judge",
                                  "ARGILLA_API_URL": argilla_stack.url, "ARGILLA_API_KEY": argilla_stack.api_key,
                                  "OPENAI_API_KEY": "sk-browser-SECRET-abcdef0123456789"})
    server.fake = fake
    yield server
    server.stop()


def _tab(page: Page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _judge_the_sample(page: Page) -> None:
    """Load the bundled sample and judge it with the app's default template and backend."""
    page.click("#data-sample")
    expect(page.locator("#data-status")).to_contain_text("Loaded 30 pairs")
    _tab(page, "3 · Judge")
    page.click("#judge-start")
    expect(page.locator("#judge-status")).to_contain_text("Done: 30 rows", timeout=60_000)


def _set_number(page: Page, elem_id: str, value: str) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(value)
    box.press("Enter")


def test_whole_flow_in_chromium(page: Page, app_server, argilla_stack, tmp_path):
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(app_server.url)

    _judge_the_sample(page)
    assert app_server.fake.stats()["requests"] == 30

    _tab(page, "4 · Review")
    table = page.locator("#results-table")
    expect(table).to_contain_text("The answer addresses the request.")  # the judge's reason beside the pair
    expect(table).to_contain_text("How do I reverse a list in Python?")
    headers = [text.strip() for text in page.locator("#results-table th").all_inner_texts()]
    assert "verdict" in headers and not any("expected" in text for text in headers)  # no empty column to scroll
    if SCREENSHOTS:
        page.screenshot(path=str(SCREENSHOTS / "screenshot-review.png"), full_page=True)

    _set_number(page, "filter-min", "5")
    expect(page.locator("#page-info")).not_to_contain_text(" 30 rows match")
    matching = int(re.search(r"(\d+) rows match", page.locator("#page-info").inner_text()).group(1))
    _set_number(page, "filter-min", "0")
    expect(page.locator("#page-info")).to_contain_text("30 rows match")

    _set_number(page, "threshold", "5")
    expect(page.locator("#threshold-counts")).to_contain_text(f"kept at ≥5: {matching} of 30")

    _tab(page, "5 · Argilla")
    page.fill("#argilla-dataset textarea, #argilla-dataset input", "browser-flow")
    page.click("#argilla-push")
    expect(page.locator("#argilla-status")).to_contain_text("Pushed 30 records", timeout=90_000)
    rows = [json.loads(line) for line in (ROOT / "backtrans/data/sample_pairs.jsonl").read_text().splitlines()]
    import argilla as rg

    client = rg.Argilla(api_url=argilla_stack.url, api_key=argilla_stack.api_key)
    dataset = client.datasets(name="browser-flow", workspace="backtrans")
    server_ids = {str(r.id): r._server_id for r in dataset.records()}
    reviewer = Annotator(argilla_stack, "browser-reviewer")
    reviewer.respond(server_ids[A.record_id(rows[0])], "discard", 1, "not for training")
    reviewer.respond(server_ids[A.record_id(rows[20])], "keep", 5)
    page.click("#argilla-pull")
    expect(page.locator("#argilla-status")).to_contain_text("Pulled", timeout=60_000)
    expect(page.locator("#argilla-status")).to_contain_text(
        "Pulled 30 records: 2 with a reviewer's decision, from 1 reviewer (browser-reviewer).")
    # readable tables: headers in words, and no empty expected-score column for a judge without one
    expect(page.locator("#argilla-disagreements")).to_contain_text("human keep")
    agreement = page.locator("#argilla-agreement")
    expect(agreement).to_contain_text("Over 2 reviewed pairs", timeout=60_000)
    expect(agreement).to_contain_text("of the pairs the judge kept, the share reviewers kept")  # said for people
    expect(agreement.locator("table")).to_contain_text("browser-reviewer")  # reviewers in a small table
    assert "None" not in agreement.inner_text() and "{" not in agreement.inner_text()
    if SCREENSHOTS:
        page.screenshot(path=str(SCREENSHOTS / "screenshot-argilla-step.png"), full_page=True)

    _tab(page, "6 · Export")
    expect(page.locator("#export-count")).to_contain_text("pairs in")
    with page.expect_download() as download_info:
        page.click("#export-download")
    exported = [json.loads(line) for line in Path(download_info.value.path()).read_text().splitlines()]
    instructions = {row["instruction"] for row in exported}
    assert rows[0]["instruction"] not in instructions  # the reviewer's discard wins
    assert rows[20]["instruction"] in instructions  # the reviewer's keep wins
    assert all(row["score"] == 5 or row["instruction"] == rows[20]["instruction"] for row in exported)
    assert all({"score", "reason", "status"} <= set(row) for row in exported)

    outside = [url for url in requests if not url.startswith(("http://127.0.0.1", "data:", "blob:"))]
    assert outside == [], outside
    assert "sk-browser-SECRET" not in page.content()


def test_dataset_text_is_inert_in_the_page(page: Page, app_server, tmp_path):
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    hostile = write_jsonl(tmp_path / "hostile.jsonl", [
        {"instruction": "<script>window.__xss = 1; alert('xss')</script> what?",
         "generation": '<img src=x onerror="window.__xss = 2; alert(2)"> answer **bold**'},
        {"instruction": "plain question", "generation": "plain answer"},
    ])
    page.goto(app_server.url)
    page.set_input_files("#data-upload input[type=file]", str(hostile))
    expect(page.locator("#data-status")).to_contain_text("Loaded 2 pairs", timeout=30_000)
    _tab(page, "3 · Judge")
    page.click("#judge-start")
    expect(page.locator("#judge-status")).to_contain_text("Done: 2 rows", timeout=60_000)
    _tab(page, "4 · Review")
    table = page.locator("#results-table")
    expect(table).to_contain_text("<script>window.__xss = 1;")
    table.get_by_text("<script>window.__xss = 1;").filter(visible=True).first.click()
    expect(page.locator("#record-detail")).to_contain_text('<img src=x onerror="window.__xss = 2; alert(2)">')
    page.wait_for_timeout(500)
    assert page.evaluate("window.__xss") is None
    assert dialogs == []
    assert page.locator("#record-detail img").count() == 0


def test_a_reviewer_works_in_argillas_own_ui(page: Page, argilla_stack, argilla_config):
    rows = [{"instruction": f"UI question {i}?", "generation": f"UI answer {i}.", "score": 5 - i, "reason": "ok",
             "model_name": "judge-ui", "expected_score": 4.5 - i, "status": "ok"} for i in range(3)]
    A.push(rows, "ui-review", argilla_config, threshold=4)
    Annotator(argilla_stack, "ui-reviewer")  # creates the account in the workspace
    page.goto(argilla_stack.url + "/sign-in")
    page.fill("input[name=Username]", "ui-reviewer")
    page.fill("input[name=Password]", "annotate-123")
    page.click("button:has-text('Sign in')")
    page.get_by_text("ui-review", exact=True).click()
    expect(page.get_by_text("Suggestion").first).to_be_visible(timeout=30_000)
    expect(page.get_by_text("judge-ui").first).to_be_visible()
    shown = page.get_by_text(re.compile(r"^UI question \d\?$")).first.inner_text()
    if SCREENSHOTS:
        page.screenshot(path=str(SCREENSHOTS / "screenshot-argilla.png"))
    option, choice = page.locator("label[for=keep_discard]"), page.locator("#keep_discard")
    option.click()  # the label option, not the record's Discard action
    try:
        expect(choice).to_be_checked(timeout=5_000)
    except AssertionError:  # a click that landed before the form was wired up: once more
        option.click()
    expect(choice).to_be_checked(timeout=10_000)
    submit = page.locator("button[type=submit]")
    expect(submit).to_be_enabled(timeout=10_000)
    submit.click()

    row = next(r for r in rows if r["instruction"] == shown)
    deadline = time.monotonic() + 30
    while True:  # the UI saves in the background; pull until the response arrives
        decision = A.pull("ui-review", argilla_config)[A.record_id(row)]
        if decision.votes or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert decision.human_keep is False and decision.reviewer == "ui-reviewer"


@pytest.fixture
def plain_app(tmp_path, fake_process):
    """The app with only a fake LLM behind it: for what one page, or two users, see."""
    fake = fake_process("--latency", "0.01")
    server = AppServer(tmp_path, {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "fake-judge"})
    yield server
    server.stop()


def _run_labels(page: Page) -> list[str]:
    _tab(page, "3 · Judge")
    page.click("#judge-refresh-runs")
    page.wait_for_timeout(500)
    page.locator("#judge-runs input").click()
    labels = page.locator("ul[role=listbox] li").all_inner_texts()
    page.keyboard.press("Escape")
    return labels


def test_two_browsers_are_two_owners_and_a_reload_keeps_ones_runs(browser, browser_context_args, plain_app,
                                                                   tmp_path):
    mine = write_jsonl(tmp_path / "alice-private-file.jsonl",
                       [{"instruction": f"ALICE ROW {i}?", "generation": f"answer {i}"} for i in range(3)])
    alice = browser.new_context(**browser_context_args).new_page()
    alice.goto(plain_app.url)
    alice.set_input_files("#data-upload input[type=file]", str(mine))
    expect(alice.locator("#data-status")).to_contain_text("Loaded 3 pairs from alice-private-file.jsonl",
                                                          timeout=30_000)
    _tab(alice, "3 · Judge")
    alice.click("#judge-start")
    expect(alice.locator("#judge-status")).to_contain_text("Done: 3 rows", timeout=60_000)
    assert any("alice-private-file.jsonl" in label for label in _run_labels(alice))

    bob = browser.new_context(**browser_context_args).new_page()
    bob.goto(plain_app.url)
    expect(bob.locator("#who")).to_contain_text("Not signed in")
    assert not any("alice" in label for label in _run_labels(bob))
    for tab in ("1 · Data", "3 · Judge", "4 · Review", "6 · Export"):
        _tab(bob, tab)
        assert "ALICE ROW" not in bob.content() and "alice-private-file" not in bob.content()

    alice.reload()
    expect(alice.locator("#who")).to_contain_text("Not signed in")
    assert any("alice-private-file.jsonl" in label for label in _run_labels(alice))  # same browser, same owner


def test_a_second_dataset_starts_clean_and_an_override_follows_its_row(page: Page, plain_app, tmp_path):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(plain_app.url)
    _judge_the_sample(page)

    _tab(page, "4 · Review")
    expect(page.locator("#override-keep")).to_be_disabled()  # nothing selected yet
    header = page.locator("#results-table").get_by_text("verdict", exact=True).first
    box = header.bounding_box()
    assert box is not None and box["x"] + box["width"] <= 1280  # in view without scrolling
    cell = page.locator("#results-table [data-testid=cell-5-6]")
    chosen = cell.inner_text()
    cell.click()
    expect(page.locator("#record-detail")).to_contain_text("Row 5")
    expect(page.locator("#override-discard")).to_be_enabled()
    page.click("#override-discard")
    expect(page.locator("#threshold-counts")).to_contain_text("1 overrides")
    search = page.locator("#filter-text textarea, #filter-text input").first
    search.fill(chosen[:25])
    search.press("Enter")
    expect(page.locator("#page-info")).to_contain_text("1 rows match")  # now first in another view
    expect(page.locator("#results-table [data-testid=cell-0-1]")).to_have_text("discard (you)")
    search.fill("")
    search.press("Enter")
    expect(page.locator("#page-info")).to_contain_text("30 rows match")
    expect(page.locator("#results-table [data-testid=cell-0-1]")).not_to_contain_text("(you)")

    other = write_jsonl(tmp_path / "five.jsonl", [{"instruction": f"new q{i}", "generation": "a"} for i in range(5)])
    _tab(page, "1 · Data")
    page.set_input_files("#data-upload input[type=file]", str(other))
    expect(page.locator("#data-status")).to_contain_text("Loaded 5 pairs from five.jsonl", timeout=30_000)
    _tab(page, "3 · Judge")
    expect(page.locator("#judge-status")).not_to_contain_text("30 rows")  # the old run's status is gone
    _tab(page, "4 · Review")
    expect(page.locator("#record-detail")).to_have_text("")
    expect(page.locator("#override-keep")).to_be_disabled()
    expect(page.locator("#threshold-counts")).not_to_contain_text("overrides")


def test_reasons_on_the_scores_line_show_in_the_review(page: Page, plain_app):
    page.goto(plain_app.url)
    page.click("#data-sample")
    expect(page.locator("#data-status")).to_contain_text("Loaded 30 pairs")
    _tab(page, "3 · Judge")
    page.locator("#judge-template input").click()
    page.get_by_role("option", name="custom", exact=True).click()
    page.get_by_text("Template and prompt preview").click()
    editor = page.locator("#judge-custom-template .cm-content")
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.type("[[same-line]] Rate this pair, then write Score: N.\n{{ instruction }}\n{{ generation }}")
    page.click("#judge-start")
    expect(page.locator("#judge-status")).to_contain_text("Done: 30 rows", timeout=60_000)
    _tab(page, "4 · Review")
    headers = [text.strip() for text in page.locator("#results-table th").all_inner_texts()]
    reasons = page.locator(f'#results-table [data-testid^="cell-"][data-testid$="-{headers.index("reason")}"]')
    expect(reasons.first).to_have_text("The pair is on-topic.")
    assert reasons.count() >= 10 and all(text == "The pair is on-topic." for text in reasons.all_inner_texts())


@pytest.fixture
def slow_app(tmp_path, fake_process):
    """The app before a judge that takes 0.5 s a call: a 30-row job at concurrency 2 runs for about 8 s."""
    fake = fake_process("--latency", "0.5")
    server = AppServer(tmp_path, {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "fake-judge"})
    server.fake = fake
    yield server
    server.stop()


def _start_slow_judge(page: Page) -> None:
    page.click("#data-sample")
    expect(page.locator("#data-status")).to_contain_text("Loaded 30 pairs")
    _tab(page, "3 · Judge")
    _set_number(page, "judge-concurrency", "2")
    page.click("#judge-start")
    expect(page.locator("#judge-status")).to_contain_text("/30 rows", timeout=30_000)


def test_a_closed_tab_leaves_its_job_running_and_a_reopened_one_shows_it(browser, browser_context_args, slow_app):
    context = browser.new_context(**browser_context_args)
    first = context.new_page()
    first.goto(slow_app.url)
    _start_slow_judge(first)
    asked_when_closed = slow_app.fake.stats()["requests"]
    first.close()  # the reader ends; the job does not
    time.sleep(2)
    assert slow_app.fake.stats()["requests"] > asked_when_closed + 1, "the job stopped with its tab"
    again = context.new_page()  # the same browser: the same owner
    again.goto(slow_app.url)
    _tab(again, "3 · Judge")
    expect(again.locator("#judge-status")).to_contain_text("Done: 30 rows", timeout=60_000)
    _tab(again, "4 · Review")
    expect(again.locator("#results-table")).to_contain_text("What is the capital of Australia?")
    assert slow_app.fake.stats()["requests"] == 30  # no finished row was asked again
    context.close()


def test_stop_stops_a_background_job(page: Page, slow_app):
    page.goto(slow_app.url)
    _start_slow_judge(page)
    page.click("#judge-stop")
    expect(page.locator("#judge-status")).to_contain_text("Stopped.", timeout=30_000)
    asked = slow_app.fake.stats()["requests"]
    page.wait_for_timeout(2500)
    assert slow_app.fake.stats()["requests"] == asked < 30  # nothing more is asked once stopped
    page.click("#judge-start")  # Start again goes on from there: the finished rows come from the store
    expect(page.locator("#judge-status")).to_contain_text("Done: 30 rows", timeout=60_000)
    assert slow_app.fake.stats()["requests"] <= 30 + 2  # at most the calls that were in flight at Stop


def test_new_data_keeps_the_previous_review_one_click_away(page: Page, plain_app, tmp_path):
    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(plain_app.url)
    _judge_the_sample(page)
    _tab(page, "4 · Review")
    page.locator("#results-table [data-testid=cell-0-5]").click()
    page.click("#override-keep")
    expect(page.locator("#threshold-counts")).to_contain_text("1 overrides")
    _tab(page, "1 · Data")
    small = tmp_path / "two.csv"
    small.write_text("instruction,generation\nq1,a1\nq2,a2\n")
    page.set_input_files("#data-upload input[type=file]", str(small))
    expect(page.locator("#data-status")).to_contain_text("Loaded 2 pairs", timeout=30_000)
    previous = page.locator("#previous-review")
    expect(previous).to_contain_text("Your previous review: the bundled sample, 30 pairs, 30 judged, 1 override")
    page.click("#reopen-previous")
    expect(page.locator("#data-status")).to_contain_text("Reopened the bundled sample")
    _tab(page, "4 · Review")
    expect(page.locator("#results-table")).to_contain_text("keep (you)")
    expect(page.locator("#threshold-counts")).to_contain_text("of 30")
    _tab(page, "1 · Data")
    expect(previous).to_contain_text("two.csv, 2 pairs")  # the small file waits in turn: nothing is dropped


def test_a_job_says_what_it_does_from_its_first_second_and_pending_rows_show_pending(browser, browser_context_args,
                                                                                     fake_process, tmp_path):
    fake = fake_process("--latency", "3.0")
    server = AppServer(tmp_path, {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "fake-judge"})
    page = browser.new_context(**browser_context_args).new_page()
    try:
        page.goto(server.url)
        page.click("#data-sample")
        expect(page.locator("#data-status")).to_contain_text("Loaded 30 pairs")
        _tab(page, "3 · Judge")
        _set_number(page, "judge-concurrency", "2")
        page.click("#judge-start")
        status = page.locator("#judge-status")
        expect(status).to_contain_text("Starting the judge", timeout=2_000)
        expect(status).to_contain_text("Waiting for the first reply", timeout=3_000)
        expect(status).to_contain_text("/30 rows", timeout=10_000)
        assert "left" not in status.inner_text()  # no ETA from two rows: it would be a wild guess
        _tab(page, "4 · Review")
        page.wait_for_timeout(3_500)  # the table is redrawn every few seconds while the job runs
        table = page.locator("#results-table")
        expect(table).to_contain_text("pending")
        expect(table.locator("[data-testid=cell-12-1]")).to_have_text("pending")  # a row not yet judged
    finally:
        page.context.close()
        server.stop()


def test_one_label_names_the_measure_and_the_summary_and_the_record_follow_it(page: Page, plain_app):
    page.goto(plain_app.url)
    page.click("#data-sample")
    _tab(page, "3 · Judge")
    page.locator("#judge-template input").click()
    page.get_by_role("option", name="humpback-short").click()
    page.click("#judge-start")
    expect(page.locator("#judge-status")).to_contain_text("Done: 30 rows", timeout=60_000)
    _tab(page, "4 · Review")
    page.set_viewport_size({"width": 1280, "height": 900})
    keep_by = page.locator("#keep-by")
    expect(keep_by).to_contain_text("Keep by")
    summary = page.locator("#threshold-counts")
    expect(summary).to_contain_text("Keep by: expected score")
    page.locator("#results-table [data-testid=cell-0-6]").click()
    expect(page.locator("#record-detail")).to_contain_text("(expected score")
    keep_by.get_by_label("score", exact=True).check()
    expect(summary).to_contain_text("Keep by: score")
    expect(page.locator("#record-detail")).not_to_contain_text("(expected score")  # the record follows the measure
    expect(page.locator("#record-detail")).to_contain_text("(score")


def test_an_upload_with_unknown_columns_opens_with_the_mapping_and_its_real_rows(page: Page, plain_app, tmp_path):
    mine = tmp_path / "my_pairs.csv"
    mine.write_text("user_text,bot_text,topic\nHow do I boil an egg?,Simmer it for nine minutes.,cooking\n"
                    "Name a prime.,Seven.,maths\n")
    page.goto(plain_app.url)
    page.set_input_files("#data-upload input[type=file]", str(mine))
    status = page.locator("#data-status")
    expect(status).to_contain_text("Choose which column is the instruction and which the response", timeout=30_000)
    expect(page.locator("#data-preview")).to_contain_text("How do I boil an egg?")  # the real rows, not 1 2 3
    assert "Cannot load" not in status.inner_text() and "--map" not in page.content()
    page.locator("#map-instruction input").click()
    page.locator("#map-instruction").get_by_role("option", name="user_text").click()
    page.locator("#map-generation input").click()
    page.locator("#map-generation").get_by_role("option", name="bot_text").click()
    page.click("#data-apply-mapping")
    expect(status).to_contain_text("Loaded 2 pairs from my_pairs.csv", timeout=30_000)


def test_the_argilla_step_says_where_to_sign_in_and_the_format_hint_follows_the_choice(page: Page, fake_process,
                                                                                        argilla_stack, tmp_path):
    # The local stack as `make run` records it: the app off a Space, on loopback, may tell its own user the login.
    home, space = tmp_path / "home", tmp_path / "space"
    home.mkdir()
    space.mkdir()
    (home / "servers.json").write_text(json.dumps({"argilla": {
        "pids": argilla_stack.pids, "url": argilla_stack.url, "api_key": argilla_stack.api_key,
        "username": "argilla", "password": argilla_stack.password}}))
    fake = fake_process("--latency", "0.01")
    env = {"OPENAI_BASE_URL": fake.url, "BACKTRANS_MODEL": "m", "ARGILLA_API_URL": argilla_stack.url,
           "ARGILLA_API_KEY": argilla_stack.api_key, "BACKTRANS_HOME": str(home)}
    local_app = AppServer(tmp_path, env)
    space_app = AppServer(space, {**env, "SPACE_ID": "someone/backtrans"})
    try:
        page.goto(local_app.url)
        _tab(page, "5 · Argilla")
        login = page.locator("#argilla-login")
        expect(login).to_contain_text(argilla_stack.url)
        expect(login).to_contain_text("as argilla, password")
        expect(login).to_contain_text(argilla_stack.password)
        _tab(page, "6 · Export")
        export_format = page.locator("#export-format")
        expect(export_format).to_contain_text("one JSON object per line")
        export_format.locator("input").click()
        page.get_by_role("option", name="chat").click()
        expect(export_format).to_contain_text("the training format")
        expect(export_format).not_to_contain_text("one JSON object per line")
        page.goto(space_app.url)
        _tab(page, "5 · Argilla")
        expect(page.locator("#argilla-login")).to_contain_text(argilla_stack.url)
        assert argilla_stack.password not in page.content()  # never on a Space
    finally:
        local_app.stop()
        space_app.stop()
