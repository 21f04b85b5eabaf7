"""The Gradio face: its callbacks in-process, and its named endpoints through gradio_client."""

import asyncio
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

import app
from backtrans import local
from backtrans.curate import STATUSES
from tests.conftest import ROOT, write_jsonl

FILTERS = (0, 10, list(STATUSES), "", "input order")


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "STORE_PATH", str(tmp_path / "runs.sqlite"))
    monkeypatch.setattr(app, "DATA_DIR", tmp_path)


def _drain(generator):
    async def go():
        return [item async for item in generator]

    return asyncio.run(go())


def _judged(fake_llm, bench, template="humpback", api_key="", concurrency=8):
    return _drain(app.judge(bench, template, "", "fake", fake_llm.url, api_key, concurrency, 4, *FILTERS))


def test_bad_upload_shows_the_location_in_the_page(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "generation": "a"}\n{"instruction": 1,\n')
    bench, preview, message = app.load_data(str(bad), None, None)
    assert bench is None and preview.empty
    assert "bad.jsonl:2:" in message and "invalid JSON" in message


def test_upload_guesses_the_mapping_and_the_user_can_change_it(tmp_path):
    src = write_jsonl(tmp_path / "odd.jsonl", [{"ask": "q1", "reply": "a1", "alt": "b1"}])
    instruction, generation, head, kept = app.inspect_upload(str(src))
    assert instruction["choices"] == ["ask", "reply", "alt"] and instruction["value"] is None
    assert kept != str(src) and os.path.exists(kept)  # a copy the store can find again
    bench, _, message = app.load_data(kept, "ask", "alt")
    assert bench.frame.iloc[0]["instruction"] == "q1" and bench.frame.iloc[0]["generation"] == "b1"
    bench, _, message = app.load_data(kept, None, None)
    assert bench is None and "missing column 'instruction'" in message


def test_sample_is_scored_with_score_and_reason_beside_each_pair(fake_llm):
    source, bench, preview, message = app.load_sample()
    assert len(bench) == 30 and "Loaded **30**" in message
    updates = _judged(fake_llm, bench)
    table, page_info, plot, summary, status = updates[-1]
    assert list(table.columns[:6]) == ["row", "score", "expected_score", "reason", "instruction", "generation"]
    assert table["score"].notna().all() and table["reason"].str.len().gt(0).all()
    assert "30/30 rows" in status and fake_llm.requests == 30
    assert int(plot["pairs"].sum()) == 30
    kept = int((bench.frame["score"] >= 4).sum())
    assert f"kept (score ≥4): **{kept}**" in summary


def test_rows_stream_in_before_the_run_ends(fake_llm, monkeypatch):
    monkeypatch.setattr(app, "STREAM_EVERY_S", 0.0)
    fake_llm.config.latency_s = 0.01
    _, bench, _, _ = app.load_sample()
    scored = [int(update[0]["score"].notna().sum()) for update in _judged(fake_llm, bench, concurrency=2)]
    assert len(scored) > 3 and scored[0] < scored[-1] == 30 and scored == sorted(scored)


def test_api_key_is_sent_but_never_shown(fake_llm):
    secret = "sk-app-SECRET-0123456789abcdef"
    fake_llm.config.rate_500 = 1.0
    _, bench, _, _ = app.load_sample()
    updates = _drain(app.judge(bench, "humpback", "", "fake", fake_llm.url, secret, 4, 4, *FILTERS))
    shown = json.dumps([[str(part) for part in update] for update in updates]) + bench.frame.to_json()
    assert secret not in shown
    assert fake_llm.api_keys[secret] >= 1


def test_review_filters_sort_pages_and_overrides(fake_llm):
    _, bench, _, _ = app.load_sample()
    _judged(fake_llm, bench)
    table, info, _, _ = app.refresh_review(bench, 4, 5, 5, ["ok"], "", "input order", 1)
    assert set(table["score"]) == {5} and f"{len(table)} rows match" in info
    table, _, _, _ = app.refresh_review(bench, 4, 0, 10, list(STATUSES), "capital", "input order", 1)
    assert list(table["instruction"]) == ["What is the capital of Australia?"]
    table, _, _, _ = app.refresh_review(bench, 4, 0, 10, list(STATUSES), "", "score, low first", 1)
    assert list(table["score"]) == sorted(table["score"])
    low = int(table.iloc[0]["row"])
    handler = app.overrider(True)
    table, _, _, summary = handler(bench, low, 4, 0, 10, list(STATUSES), "", "input order", 1)
    assert bool(table.set_index("row").loc[low, "final_keep"]) is True and "1 overrides" in summary
    exported = [json.loads(line) for line in open(app.export_file(bench, "jsonl", 4))]
    assert bench.frame.iloc[low]["instruction"] in {row["instruction"] for row in exported}


def test_detail_panel_renders_dataset_text_inert():
    frame = pd.DataFrame([{"instruction": "<script>alert(1)</script>", "generation": '<img src=x onerror="alert(2)">'}])
    bench = app.Workbench.from_frame(frame)
    html = app.record_html(bench.frame.iloc[0].to_dict())
    assert "<script>" not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=" in html


def test_generate_fills_missing_responses(fake_llm, tmp_path):
    src = write_jsonl(tmp_path / "instructions.jsonl", [{"instruction": "Name a colour."}, {"instruction": "Hi?"}])
    bench, _, message = app.load_data(str(src), None, None)
    assert "2 have no response yet" in message
    blocked = _judged(fake_llm, bench)[-1][-1]
    assert "run **Generate** first" in blocked and fake_llm.requests == 0
    preview, status = _drain(app.generate(bench, "fake", fake_llm.url, "", 4))[-1]
    assert bench.frame["generation"].notna().all() and "2/2 rows" in status
    assert _judged(fake_llm, bench)[-1][0]["score"].notna().all()


def test_custom_template_preview_and_sandbox(fake_llm):
    _, bench, _, _ = app.load_sample()
    preview = app.preview_prompt(bench, "custom", "Q: {{ instruction }}")
    assert preview == f"Q: {bench.frame.iloc[0]['instruction']}"
    refused = app.preview_prompt(bench, "custom", "{{ ''.__class__.__mro__ }}")
    assert "refused by the sandbox" in refused
    status = _drain(app.judge(bench, "custom", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "fake",
                              fake_llm.url, "", 4, 4, *FILTERS))[-1][-1]
    assert "sandbox" in status and fake_llm.requests == 30 * 0


def test_resume_an_earlier_run(fake_llm):
    _, bench, _, _ = app.load_sample()
    _judged(fake_llm, bench, template="additive")
    runs = app.list_runs()
    run_id = runs["choices"][0][1]
    bench2, _, message, template, model, base_url = app.resume_run(run_id)
    assert "restored" in message and template["value"] == "additive" and base_url["value"] == fake_llm.url
    before = fake_llm.requests
    final = _judged(fake_llm, bench2, template="additive")[-1]
    assert fake_llm.requests == before and "30 from the store" in final[-1]


def test_export_formats(fake_llm):
    _, bench, _, _ = app.load_sample()
    _judged(fake_llm, bench)
    kept = int((bench.frame["score"] >= 4).sum())
    for fmt in ("jsonl", "chat", "csv", "parquet"):
        path = app.export_file(bench, fmt, 4)
        reader = {"parquet": pd.read_parquet, "csv": pd.read_csv}.get(fmt)
        count = len(reader(path)) if reader else len(open(path).read().splitlines())
        assert count == kept, fmt
    chat = json.loads(open(app.export_file(bench, "chat", 4)).readline())
    assert chat["messages"][0] == {"role": "system", "content": "Answer in the style of an AI Assistant."}


def test_named_endpoints_through_gradio_client(fake_process, tmp_path):
    from gradio_client import Client

    server = fake_process()
    port = local.free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "BACKTRANS_DATA_DIR": str(tmp_path),
           "OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "fake", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        local.wait_http(f"http://127.0.0.1:{port}/", 60, pid=process.pid)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        preview, message = client.predict(api_name="/load_sample")
        assert "Loaded **30** pairs" in message
        result = client.predict("humpback", "", "", "", "", 8, 4, 0, 10, list(STATUSES), "", "input order",
                                api_name="/judge")
        table, status = result[0], result[-1]
        assert len(table["data"]) == 30 and "30/30 rows" in status
        assert server.stats()["requests"] == 30
    finally:
        process.kill()
        process.wait()


def test_documents_to_candidates_in_the_app(fake_llm, tmp_path):
    doc = tmp_path / "guide.md"
    doc.write_text("# Tea\n" + "Green tea is brewed with water at about 80 degrees for two minutes. " * 5 + "\n"
                   "# MENU\n" + "Home about contact shop. " * 12 + "\n")
    updates = _drain(app.augment([str(doc)], None, 100, 6000, 0.8, "fake", fake_llm.url, "", 4))
    bench, preview, status = updates[-1]
    assert len(bench) == 1 and "header caps 1" in status and "1/1 rows" in status
    row = bench.frame.iloc[0]
    assert row["instruction"] and row["source"] == "guide.md" and row["origin"] == "augmented"
    _judged(fake_llm, bench)
    chat = json.loads(open(app.export_file(bench, "chat", 0)).readline())
    assert chat["messages"][0]["content"] == "Answer with knowledge from web search."


def test_review_shows_an_earlier_rounds_score_beside_this_one(fake_llm, tmp_path):
    src = write_jsonl(tmp_path / "r1.jsonl", [{"instruction": "q [[score=2]]", "generation": "a", "score_r1": 5}])
    bench, _, _ = app.load_data(str(src), None, None)
    table = _judged(fake_llm, bench)[-1][0]
    assert list(table.columns[:3]) == ["row", "score_r1", "score"]
    assert table.iloc[0]["score_r1"] == 5 and table.iloc[0]["score"] == 2
