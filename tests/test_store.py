import sqlite3

from backtrans.store import RunStore, content_key


def test_results_are_cached_only_when_finished(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    run = store.start_run("judge", {"a": 1})
    store.record(run, "k-ok", {"status": "ok", "score": 4, "raw_output": "Score: 4"}, {"prompt_tokens": 10,
                 "completion_tokens": 3})
    store.record(run, "k-parse", {"status": "parse_error", "raw_output": "?"}, {"prompt_tokens": 5})
    store.record(run, "k-fail", {"status": "llm_error", "error": "HTTP 500"}, {"attempts": 7})
    assert store.get("k-ok")["score"] == 4
    assert store.get("k-parse")["status"] == "parse_error"
    assert store.get("k-fail") is None  # a failed call is retried next time
    assert store.usage(run) == {"calls": 3, "prompt_tokens": 15, "completion_tokens": 3}


def test_store_is_wal_and_readable_by_another_connection(tmp_path):
    path = tmp_path / "s.sqlite"
    store = RunStore(path)
    run = store.start_run("judge", {})
    store.record(run, "k", {"status": "ok"}, None)
    other = sqlite3.connect(path)
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert other.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 1


def test_find_run_resumes_the_unfinished_run_with_the_same_config(tmp_path):
    store = RunStore(tmp_path / "s.sqlite")
    first = store.start_run("judge", {"source": "a"})
    assert store.find_run("judge", {"source": "a"}) == first
    assert store.find_run("judge", {"source": "b"}) is None
    store.finish_run(first)
    assert store.find_run("judge", {"source": "a"}) is None
    assert store.run(first).finished is not None
    child = store.start_run("judge", {"source": "a", "round": 2}, parent=first)
    assert store.run(child).parent_run_id == first
    assert [r.run_id for r in store.runs()][0] == child


def test_content_key_is_stable_and_sensitive():
    assert content_key("a", {"x": 1, "y": 2}) == content_key("a", {"y": 2, "x": 1})
    assert content_key("a", "b") != content_key("a", "c")


def test_an_old_store_is_migrated_and_runs_are_scoped_by_owner(tmp_path):
    import sqlite3

    from backtrans.store import MIGRATIONS, SCHEMA

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # a store written before owners existed
        db.executescript(SCHEMA)
        db.execute("INSERT INTO runs(run_id, created, kind, config) VALUES ('old', 1, 'judge', '{}')")
    store = RunStore(path)
    assert store.schema_version == len(MIGRATIONS)
    assert store.run("old").owner == "" and [r.run_id for r in store.runs(owner="")] == ["old"]
    mine = store.start_run("judge", {"s": 1}, owner="hf:alice")
    assert store.run(mine, owner="hf:bob") is None and store.run(mine, owner="hf:alice").run_id == mine
    assert store.find_run("judge", {"s": 1}, "hf:bob") is None and store.find_run("judge", {"s": 1}, "hf:alice") == mine
    assert [r.run_id for r in store.runs(owner="hf:bob")] == []
    store.close()
    assert RunStore(path).schema_version == len(MIGRATIONS)  # opening again migrates nothing twice
