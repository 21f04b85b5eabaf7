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
from tests.conftest import ROOT, write_jsonl


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    monkeypatch.setattr(app, "STORE_PATH", str(tmp_path / "runs.sqlite"))


def _drain(generator):
    async def go():
        return [item async for item in generator]

    return asyncio.run(go())


def test_bad_upload_shows_the_location_in_the_page(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "generation": "a"}\n{"instruction": 1,\n')
    frame, table, message = app.load_data(str(bad))
    assert frame.empty and table.empty
    assert "bad.jsonl:2:" in message and "invalid JSON" in message


def test_sample_is_scored_with_score_and_reason_beside_each_pair(fake_llm):
    frame, table, message = app.load_sample()
    assert len(frame) == len(table) > 20 and "Loaded" in message
    updates = _drain(app.judge(frame, "humpback", "fake", fake_llm.url, "", 8))
    final, final_table, status = updates[-1]
    assert final["status"].eq("ok").all()
    assert final["reason"].str.len().gt(0).all()
    assert list(final_table.columns[:4]) == ["instruction", "generation", "score", "expected_score"]
    assert f"{len(frame)}/{len(frame)} rows" in status
    assert fake_llm.requests == len(frame)


def test_rows_stream_in_before_the_run_ends(fake_llm, monkeypatch):
    monkeypatch.setattr(app, "STREAM_EVERY_S", 0.0)
    fake_llm.config.latency_s = 0.01
    frame, _, _ = app.load_sample()
    updates = _drain(app.judge(frame, "humpback", "fake", fake_llm.url, "", 2))
    scored_counts = [int(update[0]["status"].notna().sum()) for update in updates]
    assert len(updates) > 3 and scored_counts[0] < scored_counts[-1] == len(frame)
    assert scored_counts == sorted(scored_counts)


def test_api_key_is_sent_but_never_shown(fake_llm):
    secret = "sk-app-SECRET-0123456789abcdef"
    fake_llm.config.rate_500 = 1.0
    frame = pd.DataFrame([{"instruction": "q", "generation": "a"}])
    updates = _drain(app.judge(frame, "humpback", "fake", fake_llm.url, secret, 1))
    text = json.dumps([str(u) for u in updates]) + updates[-1][0].to_json()
    assert secret not in text
    assert fake_llm.api_keys[secret] >= 1


def test_threshold_counts_and_export(fake_llm):
    frame, _, _ = app.load_sample()
    final = _drain(app.judge(frame, "humpback", "fake", fake_llm.url, "", 8))[-1][0]
    summary = app.curation_summary(final, 4)
    kept = int((final["score"] >= 4).sum())
    assert f"**{kept}**" in summary and f"A5: {int((final['score'] == 5).sum())}" in summary
    path = app.export(final, "chat", 4)
    lines = open(path).read().splitlines()
    assert len(lines) == kept and json.loads(lines[0])["messages"][0]["role"] == "system"


def test_named_endpoints_through_gradio_client(fake_process, tmp_path):
    from gradio_client import Client, handle_file

    server = fake_process()
    port = local.free_port()
    env = {**os.environ, "GRADIO_SERVER_PORT": str(port), "BACKTRANS_DATA_DIR": str(tmp_path),
           "OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "fake", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        local.wait_http(f"http://127.0.0.1:{port}/", 60, pid=process.pid)
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        src = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "q [[score=5]]", "response": "a"},
                                                     {"prompt": "q2 [[score=2]]", "response": "b"}])
        table, message = client.predict(handle_file(str(src)), api_name="/load_data")
        assert "Loaded **2** pairs" in message
        table, status = client.predict("humpback", "", "", "", 4, api_name="/judge")
        assert [row[2] for row in table["data"]] == [5, 2]
        assert "2/2 rows" in status
    finally:
        process.kill()
        process.wait()
