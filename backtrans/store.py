"""The run store: one SQLite file (WAL) that logs every LLM call and caches every finished row.

A finished row is committed the moment its reply arrives, under a content key: a hash of the
template text, the model, the generation settings and the row's own text. Running the same job
again, after a crash or `kill -9`, or an identical pair in another run, finds the key and never
asks the model again. Failed calls (`llm_error`) are logged but not cached, so a rerun retries them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    config TEXT NOT NULL,
    parent_run_id TEXT,
    finished REAL
);
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT,
    status TEXT NOT NULL,
    raw_output TEXT,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    latency_s REAL,
    attempts INTEGER,
    error TEXT,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_run ON calls(run_id);
CREATE TABLE IF NOT EXISTS run_rows (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
"""

CACHEABLE = ("ok", "parse_error")


def content_key(*parts: object) -> str:
    blob = json.dumps(parts, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class RunInfo:
    run_id: str
    kind: str
    config: dict
    created: float
    finished: float | None
    parent_run_id: str | None


class RunStore:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a killed process (only an OS crash could drop the last commits).
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # runs -----------------------------------------------------------------------------------------
    def start_run(self, kind: str, config: dict, run_id: str | None = None, parent: str | None = None) -> str:
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.db.execute(
            "INSERT OR IGNORE INTO runs(run_id, created, kind, config, parent_run_id) VALUES (?,?,?,?,?)",
            (run_id, time.time(), kind, json.dumps(config, default=str), parent),
        )
        return run_id

    def find_run(self, kind: str, config: dict) -> str | None:
        """The newest unfinished run with exactly this configuration: the one to resume."""
        row = self.db.execute(
            "SELECT run_id FROM runs WHERE kind=? AND config=? AND finished IS NULL ORDER BY created DESC LIMIT 1",
            (kind, json.dumps(config, default=str)),
        ).fetchone()
        return row[0] if row else None

    def finish_run(self, run_id: str) -> None:
        self.db.execute("UPDATE runs SET finished=? WHERE run_id=?", (time.time(), run_id))

    def run(self, run_id: str) -> RunInfo | None:
        row = self.db.execute(
            "SELECT run_id, kind, config, created, finished, parent_run_id FROM runs WHERE run_id=?", (run_id,)
        ).fetchone()
        if not row:
            return None
        return RunInfo(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])

    def runs(self) -> list[RunInfo]:
        ids = [r[0] for r in self.db.execute("SELECT run_id FROM runs ORDER BY created DESC")]
        return [self.run(i) for i in ids]

    # results --------------------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT result FROM results WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def record(self, run_id: str, key: str, result: dict, call: dict | None) -> None:
        """Log the call and, when the row is finished, cache its result, in one transaction."""
        now = time.time()
        with self.db:
            self.db.execute("BEGIN")
            if call is not None:
                self.db.execute(
                    "INSERT INTO calls(run_id, key, model, status, raw_output, prompt_tokens, completion_tokens,"
                    " latency_s, attempts, error, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        run_id,
                        key,
                        call.get("model"),
                        result["status"],
                        result.get("raw_output"),
                        call.get("prompt_tokens", 0),
                        call.get("completion_tokens", 0),
                        call.get("latency_s", 0.0),
                        call.get("attempts", 1),
                        result.get("error") or None,
                        now,
                    ),
                )
            if result["status"] in CACHEABLE:
                self.db.execute(
                    "INSERT OR REPLACE INTO results(key, run_id, status, result, created) VALUES (?,?,?,?,?)",
                    (key, run_id, result["status"], json.dumps(result, ensure_ascii=False), now),
                )
                self.db.execute("INSERT OR IGNORE INTO run_rows(run_id, key) VALUES (?,?)", (run_id, key))

    def link(self, run_id: str, key: str) -> None:
        """A cached result that also belongs to this run (for the run's own summary)."""
        self.db.execute("INSERT OR IGNORE INTO run_rows(run_id, key) VALUES (?,?)", (run_id, key))

    def lineage(self, run_id: str) -> list[RunInfo]:
        """The run and its ancestors, oldest first: round 1, round 2, ..."""
        chain: list[RunInfo] = []
        current = self.run(run_id)
        while current is not None and current not in chain:
            chain.insert(0, current)
            current = self.run(current.parent_run_id) if current.parent_run_id else None
        return chain

    def summary(self, run_id: str) -> dict:
        """Rows finished in a run, by status, and how many the paper's A4 (>= 4) and A5 (5) keep."""
        counts = {"rows": 0, "ok": 0, "parse_error": 0, "A4": 0, "A5": 0}
        query = "SELECT r.status, r.result FROM run_rows rr JOIN results r ON r.key = rr.key WHERE rr.run_id = ?"
        for status, result in self.db.execute(query, (run_id,)):
            counts["rows"] += 1
            counts[status] = counts.get(status, 0) + 1
            score = json.loads(result).get("score")
            if isinstance(score, (int, float)):
                counts["A4"] += score >= 4
                counts["A5"] += score >= 5
        return counts

    def usage(self, run_id: str | None = None) -> dict:
        where, args = ("WHERE run_id=?", (run_id,)) if run_id else ("", ())
        calls, prompt, completion = self.db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0) FROM calls {where}",
            args,
        ).fetchone()
        return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion}
