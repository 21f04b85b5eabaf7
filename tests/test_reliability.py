"""Proof under stress: LLM faults, crashes, bad input, secrets, concurrent users, an Argilla outage."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backtrans import argilla as A
from backtrans import local
from backtrans.limits import Limits
from backtrans.owners import owner_for
from backtrans.records import RecordsError, load_records
from backtrans.session import SessionError
from backtrans.workspace import Workspace
from tests.conftest import JUDGE, ROOT, AppServer, results_in, upload, write_jsonl

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _pairs(n: int, tag: str = "q") -> list[dict]:
    return [{"id": i, "instruction": f"{tag} {i}: explain item {i}", "generation": f"answer {i}"} for i in range(n)]


def _cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "backtrans", *args], cwd=ROOT, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- 1. LLM faults ----------------------------------------------------------------------------------------


def test_2000_pairs_through_429s_500s_hangs_and_garbage(fake_process, tmp_path):
    server = fake_process("--rate-429", "0.10", "--retry-after", "0.05", "--rate-500", "0.05", "--rate-hang", "0.05",
                          "--hang", "4", "--rate-garbage", "0.05", "--seed", "11")
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(2000))
    started = time.monotonic()
    done = _cli("score", str(src), "-o", str(tmp_path / "out.jsonl"), "--base-url", server.url, "--model", "m",
                "--store", str(tmp_path / "s.sqlite"), "--concurrency", "64", "--timeout", "1", "--no-progress")
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    rows = _read(tmp_path / "out.jsonl")
    assert [row["id"] for row in rows] == list(range(2000))  # none lost, none duplicated, in order
    statuses = {status: sum(r["status"] == status for r in rows) for status in ("ok", "parse_error", "llm_error")}
    assert sum(statuses.values()) == 2000
    # ~5% garbage replies are asked once more (--reask 1 by default): ~0.25% stay garbage, flagged with their text
    reasks = int(re.search(r"re-asked (\d+) times", done.stderr).group(1))
    assert 40 < reasks < 180 and statuses["parse_error"] < 20
    assert all(r["raw_output"] and r["error"] for r in rows if r["status"] == "parse_error")
    assert all(r["error"] for r in rows if r["status"] == "llm_error")
    stats = server.stats()
    retries = int(done.stderr.rsplit("retries ", 1)[1].split()[0])
    hedges = int(re.search(r"hedges (\d+)", done.stderr).group(1))
    # a hedge cancelled before it was sent never reaches the server: at most `hedges` extra requests
    assert 2000 + reasks + retries <= stats["requests"] <= 2000 + reasks + retries + hedges and retries > 300
    assert wall < 180
    print(f"\n2000 pairs with faults: {statuses}, {retries} retries, server saw {stats['statuses']}, "
          f"wall {wall:.1f}s")


# --- 2. crash recovery ------------------------------------------------------------------------------------


def test_kill_9_the_cli_in_a_2000_row_run(fake_process, tmp_path):
    server = fake_process("--latency", "0.02")
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(2000))
    store, out = tmp_path / "s.sqlite", tmp_path / "out.jsonl"

    def score(output: Path, run_store: Path) -> list[str]:
        # --no-hedge: what is checked is that no finished row is asked again, not the hedges of a loaded machine
        return [sys.executable, "-m", "backtrans", "score", str(src), "-o", str(output), "--base-url", server.url,
                "--model", "m", "--store", str(run_store), "--concurrency", "8", "--no-progress", "--no-hedge"]

    command = score(out, store)
    process = subprocess.Popen(command, cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)
    while results_in(store) < 500 and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = results_in(store)
    assert 500 <= finished < 2000
    before = server.stats()["requests"]
    subprocess.run(command, cwd=ROOT, env=ENV, check=True, stderr=subprocess.DEVNULL)
    assert server.stats()["requests"] - before == 2000 - finished  # 0 repeated requests
    subprocess.run(score(tmp_path / "clean.jsonl", tmp_path / "clean.sqlite"), cwd=ROOT, env=ENV, check=True,
                   stderr=subprocess.DEVNULL)
    assert out.read_text() == (tmp_path / "clean.jsonl").read_text()


def test_kill_9_the_app_server_mid_run_then_resume(fake_process, tmp_path):
    from gradio_client import Client

    server = fake_process("--latency", "0.02")
    src = write_jsonl(tmp_path / "pairs.jsonl", _pairs(2000, "app"))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"}

    first = AppServer(data_dir, env)
    client = Client(first.url, verbose=False)
    upload(client, src)
    client.submit(**{**JUDGE, "concurrency": 8}, api_name="/judge")
    store = data_dir / "runs.sqlite"
    deadline = time.monotonic() + 120
    while results_in(store) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    first.process.send_signal(signal.SIGKILL)
    first.stop()
    finished = results_in(store)
    assert 400 <= finished < 2000
    before = server.stats()["requests"]

    second = AppServer(data_dir, env)
    try:
        client = Client(second.url, verbose=False)
        upload(client, src)
        table, *_, status = client.predict(**{**JUDGE, "concurrency": 8}, api_name="/judge")
        assert "**Done:** 2000 rows" in status and f"{finished} from the store" in status
        assert server.stats()["requests"] - before == 2000 - finished  # 0 repeated requests
    finally:
        second.stop()
    clean = _cli("score", str(src), "-o", str(tmp_path / "clean.jsonl"), "--base-url", server.url, "--model", "m",
                 "--store", str(tmp_path / "clean.sqlite"), "--no-progress")
    assert clean.returncode == 0
    expected = [(r["score"], r["reason"]) for r in _read(tmp_path / "clean.jsonl")][:50]
    score, reason = table["headers"].index("score"), table["headers"].index("reason")
    assert [(row[score], row[reason]) for row in table["data"]] == expected  # equals an uninterrupted run


# --- 3. bad input -----------------------------------------------------------------------------------------


def _broken_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must say)"""
    files = {}

    def add(name: str, content: bytes, expect: str) -> None:
        path = folder / name
        path.write_bytes(content)
        files[name] = (path, expect)

    add("empty.jsonl", b"", "the file is empty")
    add("header_only.csv", b"instruction,generation\n", "no rows")
    add("wrong_columns.jsonl", b'{"question_text": "q", "reply": "a"}\n', "missing column 'instruction'")
    add("broken_line.jsonl", b'{"instruction": "q", "generation": "a"}\n{"instruction": "q2" "generation": "b"}\n',
        "broken_line.jsonl:2:22: invalid JSON")
    add("utf16.jsonl", '{"instruction": "q", "generation": "a"}\n'.encode("utf-16"), "UTF-16")
    add("latin1.csv", "instruction,generation\ncaf\u00e9,ok\n".encode("latin-1"), "latin1.csv:2:4: not valid UTF-8")
    add("huge_field.jsonl", json.dumps({"instruction": "q", "generation": "x" * 50_000_000}).encode() + b"\n",
        "over the limit")
    add("binary.parquet", os.urandom(4096), "not a readable Parquet file")
    add("binary.jsonl", b"\x7fELF\x02\x01\x01\x00\x00\x00" + os.urandom(200), "binary.jsonl:1:")
    add("bad_quotes.csv", b'instruction,generation\n"q1","fine"\n"q2","never closed\n', "bad_quotes.csv:3")
    add("duplicates.jsonl", b'{"instruction": "q", "generation": "a"}\n{"instruction": "q", "generation": "a"}\n',
        "duplicates.jsonl:2: duplicate of duplicates.jsonl:1")
    add("empty_text.csv", b'instruction,generation\n"q1",""\n', "empty_text.csv:2: column 'generation' is empty")
    return files


def test_broken_files_give_clear_errors_in_the_cli_the_app_and_the_dataset_path(tmp_path):
    broken = _broken_files(tmp_path)
    assert len(broken) >= 10
    for name, (path, expect) in broken.items():
        done = _cli("score", str(path), "-o", str(tmp_path / "o.jsonl"), "--base-url", "http://127.0.0.1:9/v1",
                    "--no-progress")
        assert done.returncode == 2, (name, done.stderr)
        assert expect in done.stderr and "Traceback" not in done.stderr, (name, done.stderr)
        if name == "wrong_columns.jsonl":  # the CLI's own way to map a column
            assert "map one with --map SOURCE=instruction" in done.stderr, done.stderr
        session = Workspace(tmp_path / "app", Limits()).session(owner_for(None, None))
        try:
            session.inspect_upload(str(path), name)
            loaded = session.load_upload("instruction", "generation")
        except SessionError as exc:
            message = str(exc)
        else:
            assert name == "empty_text.csv", name  # the app takes instruction-only rows: step 2 writes them
            assert loaded.without_response == 1
            continue
        assert session.workbench is None and expect in message and "Traceback" not in message, (name, message)
        assert "--map" not in message, (name, message)  # no CLI wording in the app
    folder = tmp_path / "dataset-folder"
    folder.mkdir()
    (folder / "train.jsonl").write_bytes(broken["broken_line.jsonl"][0].read_bytes())
    with pytest.raises(RecordsError, match="could not load the dataset"):
        load_records(str(folder), split="train")


def test_safe_imports_formulas_and_repeated_ids(tmp_path):
    csv_path = tmp_path / "formulas.csv"
    csv_path.write_text('id,instruction,generation\n1,"=cmd|\' /C calc\'!A0","+SUM(1,2)"\n1,"@import","-2+3"\n')
    frame = load_records(csv_path)  # repeated ids with different pairs are fine; formulas are just text
    assert list(frame["instruction"]) == ["=cmd|' /C calc'!A0", "@import"]
    from backtrans.export import write_rows

    write_rows(frame.to_dict("records"), tmp_path / "out.csv")
    text = (tmp_path / "out.csv").read_text()
    assert "'=cmd|" in text and "'+SUM(1,2)" in text and "'@import" in text and "'-2+3" in text


# --- 4. secrets -------------------------------------------------------------------------------------------


SECRET = "sk-proj-SECRETKEY-0123456789abcdefXYZ"


def test_the_api_key_appears_nowhere_but_the_request(fake_process, tmp_path):
    import urllib.request

    from gradio_client import Client

    server = fake_process("--rate-500", "0.3", "--rate-garbage", "0.2")
    src = write_jsonl(tmp_path / "in.jsonl", _pairs(60))
    env = {**ENV, "OPENAI_API_KEY": SECRET, "BACKTRANS_HOME": str(tmp_path / "home")}
    done = _cli("score", str(src), "-o", str(tmp_path / "out.jsonl"), "--base-url", server.url, "--model", "m",
                "--store", str(tmp_path / "s.sqlite"), "--max-retries", "0", env=env)
    assert done.returncode == 0
    assert "llm_error" in (tmp_path / "out.jsonl").read_text()  # errors happened and were recorded
    for fmt in ("csv", "parquet", "chat"):
        _cli("export", str(tmp_path / "out.jsonl"), "-o", str(tmp_path / f"export.{fmt}"), "--format", fmt, env=env)
    bad = _cli("score", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x.jsonl"), env=env)

    data_dir = tmp_path / "app"
    data_dir.mkdir()
    served = AppServer(data_dir, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    try:
        client = Client(served.url, verbose=False)
        upload(client, src)
        result = client.predict(**{**JUDGE, "backend": "custom", "base_url": server.url, "api_key": SECRET,
                                   "concurrency": 4}, api_name="/judge")
        paths = ("", "config", "gradio_api/info")
        pages = [urllib.request.urlopen(served.url + path).read().decode() for path in paths]
    finally:
        served.stop()
    assert server.stats()["api_keys"].get(SECRET, 0) >= 120  # the CLI's and the app's requests carried it

    haystacks = {"cli stdout": done.stdout, "cli stderr": done.stderr, "bad input stderr": bad.stderr,
                 "app result": json.dumps(result), **{f"page {i}": page for i, page in enumerate(pages)}}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            haystacks[str(path.relative_to(tmp_path))] = path.read_bytes().decode("latin-1")
    leaks = [name for name, text in haystacks.items() if SECRET in text or "SECRETKEY" in text]
    assert leaks == []
    assert len(haystacks) > 12  # the store, the exports, the app's log and store were all scanned


# --- 5. concurrent users ----------------------------------------------------------------------------------


def test_five_users_score_different_files_at_once(fake_process, tmp_path):
    from gradio_client import Client

    server = fake_process("--latency", "0.05")
    data_dir = tmp_path / "app"
    data_dir.mkdir()
    served = AppServer(data_dir, {"OPENAI_BASE_URL": server.url, "BACKTRANS_MODEL": "m"})
    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def user(number: int) -> None:
        try:
            src = write_jsonl(tmp_path / f"user{number}.jsonl", _pairs(20 + number * 5, f"user{number}"))
            client = Client(served.url, verbose=False)
            upload(client, src)
            results[number] = client.predict(**{**JUDGE, "backend": "custom", "base_url": server.url,
                                                "api_key": f"sk-user{number}-key-0123456789", "concurrency": 4},
                                             api_name="/judge")
        except BaseException as exc:  # noqa: BLE001 (reported below, in the test's own thread)
            errors.append(exc)

    try:
        threads = [threading.Thread(target=user, args=(n,)) for n in range(5)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
    finally:
        served.stop()
    assert errors == [] and len(results) == 5
    keys = server.stats()["api_keys"]
    for number, (table, *_, status) in results.items():
        rows = 20 + number * 5
        assert f"**Done:** {rows} rows" in status
        column = table["headers"].index("instruction")
        shown = [row[column] for row in table["data"]]
        assert shown and all(text.startswith(f"user{number} ") for text in shown)  # nobody else's rows
        assert keys[f"sk-user{number}-key-0123456789"] == rows  # each user's own key, for their own rows


# --- 7. Argilla outage ------------------------------------------------------------------------------------


@pytest.mark.argilla
@pytest.mark.slow
def test_argilla_dies_mid_push_then_a_retry_completes_without_duplicates(tmp_path):
    home = tmp_path / "argilla"
    stack = local.start_argilla(home=home)
    rows = [{"instruction": f"outage {i}?", "generation": f"answer {i}", "score": i % 5 + 1, "reason": "r",
             "model_name": "m", "status": "ok"} for i in range(600)]
    config = A.ArgillaConfig(stack.url, stack.api_key)
    try:
        def kill_after_first_batch(pushed: int) -> None:
            if pushed == 100:
                local.stop_pid(stack.pids["server"])

        with pytest.raises(A.ArgillaError) as info:
            A.push(rows, "outage", config, batch_size=100, on_progress=kill_after_first_batch)
        assert stack.url in str(info.value) and stack.api_key not in str(info.value)
        assert "Local results are intact" in str(info.value)
        stack.stop()
        stack = local.start_argilla(home=home)  # same database; the search index is rebuilt from it
        config = A.ArgillaConfig(stack.url, stack.api_key)
        report = A.push(rows, "outage", config, batch_size=100)
        assert (report.skipped, report.pushed) == (100, 500)  # the batch that landed is not sent again
        import argilla as rg

        dataset = rg.Argilla(api_url=stack.url, api_key=stack.api_key).datasets(name="outage", workspace="backtrans")
        ids = [str(record.id) for record in dataset.records()]
        assert len(ids) == len(set(ids)) == 600
    finally:
        stack.stop()
