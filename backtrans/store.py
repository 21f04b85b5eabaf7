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

from backtrans.decisions import PAPER_LEVELS
from backtrans.run_config import RunConfig

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

# Numbered steps from the first schema (version 0) on; `PRAGMA user_version` says how many have run.
# Append only: a store written by an older backtrans is brought up to date when it is opened.
MIGRATIONS = (
    # 1: every run belongs to an owner (a signed-in user or a browser), so a shared app can scope reads.
    "ALTER TABLE runs ADD COLUMN owner TEXT NOT NULL DEFAULT ''",
    "CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created)",
    "CREATE INDEX IF NOT EXISTS calls_created ON calls(created)",
    # 3: which ask of its row a call was (1, then re-asks after a reply with no score); NULL before re-asks existed.
    "ALTER TABLE calls ADD COLUMN ask INTEGER",
)

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
    owner: str = ""

    @property
    def settings(self) -> RunConfig:
        # Runs recorded before the settings named their kind take the task's, as the runs table has it.
        return RunConfig.from_json({"kind": {"backward": "augment"}.get(self.kind, self.kind), **self.config})


def _config_json(config: RunConfig | dict) -> str:
    """The one text a run's settings are stored as, and matched by when a rerun looks for its run."""
    return json.dumps(config.to_json() if isinstance(config, RunConfig) else config, default=str)


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
        self._migrate()

    def _migrate(self) -> None:
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")  # two processes opening an old store migrate it once
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            for number, statement in enumerate(MIGRATIONS[version:], start=version + 1):
                self.db.execute(statement)
                self.db.execute(f"PRAGMA user_version={number}")

    @property
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def close(self) -> None:
        self.db.close()

    # runs -----------------------------------------------------------------------------------------
    def start_run(self, kind: str, config: RunConfig | dict, run_id: str | None = None, parent: str | None = None,
                  owner: str = "") -> str:
        """`owner`: who may see the run again ("" for the CLI's own store, which belongs to its user)."""
        # Unguessable: in a shared app a run id is never a key to someone else's run, but it is shown.
        run_id = run_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:12]
        self.db.execute(
            "INSERT OR IGNORE INTO runs(run_id, created, kind, config, parent_run_id, owner) VALUES (?,?,?,?,?,?)",
            (run_id, time.time(), kind, _config_json(config), parent, owner),
        )
        return run_id

    def find_run(self, kind: str, config: RunConfig | dict, owner: str = "") -> str | None:
        """The owner's newest unfinished run with exactly this configuration: the one to resume."""
        row = self.db.execute(
            "SELECT run_id FROM runs WHERE kind=? AND config=? AND owner=? AND finished IS NULL"
            " ORDER BY created DESC LIMIT 1",
            (kind, _config_json(config), owner),
        ).fetchone()
        return row[0] if row else None

    def resume_or_start(self, kind: str, config: RunConfig | dict, owner: str = "", parent: str | None = None) -> str:
        """The owner's unfinished run with exactly this configuration, else a new one: what every engine runs under."""
        return self.find_run(kind, config, owner) or self.start_run(kind, config, parent=parent, owner=owner)

    def finish_run(self, run_id: str) -> None:
        self.db.execute("UPDATE runs SET finished=? WHERE run_id=?", (time.time(), run_id))

    def run(self, run_id: str, owner: str | None = None) -> RunInfo | None:
        """The run, or None. With `owner`, another owner's run is None too, exactly as a made-up id is."""
        row = self.db.execute(
            "SELECT run_id, kind, config, created, finished, parent_run_id, owner FROM runs WHERE run_id=?",
            (run_id,),
        ).fetchone()
        if not row or (owner is not None and row[6] != owner):
            return None
        return RunInfo(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], row[6])

    def runs(self, owner: str | None = None) -> list[RunInfo]:
        """Newest first; with `owner`, only that owner's."""
        where, args = ("WHERE owner=?", (owner,)) if owner is not None else ("", ())
        ids = [r[0] for r in self.db.execute(f"SELECT run_id FROM runs {where} ORDER BY created DESC", args)]
        return [self.run(i) for i in ids]

    def calls_since(self, owner: str, since: float) -> int:
        """LLM calls made for an owner's runs since a time: what a daily quota counts."""
        return self.db.execute(
            "SELECT COUNT(*) FROM calls c JOIN runs r ON r.run_id = c.run_id WHERE r.owner=? AND c.created>=?",
            (owner, since),
        ).fetchone()[0]

    def delete_runs(self, owner: str | None = None, before: float | None = None) -> int:
        """Forget runs (an owner's, or all created before a time): their calls and their cached results.

        A cached result that another remaining run also uses stays: it is that run's result too.
        """
        clauses, args = [], []
        if owner is not None:
            clauses.append("owner=?")
            args.append(owner)
        if before is not None:
            clauses.append("created<?")
            args.append(before)
        if not clauses:
            raise ValueError("delete_runs needs an owner or a time")
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("CREATE TEMP TABLE IF NOT EXISTS doomed(run_id TEXT PRIMARY KEY)")
            self.db.execute("DELETE FROM doomed")
            self.db.execute(f"INSERT INTO doomed SELECT run_id FROM runs WHERE {' AND '.join(clauses)}", args)
            count = self.db.execute("SELECT COUNT(*) FROM doomed").fetchone()[0]
            self.db.execute("DELETE FROM calls WHERE run_id IN (SELECT run_id FROM doomed)")
            self.db.execute(
                "DELETE FROM results WHERE key IN"
                " (SELECT key FROM run_rows WHERE run_id IN (SELECT run_id FROM doomed))"
                " AND key NOT IN (SELECT key FROM run_rows WHERE run_id NOT IN (SELECT run_id FROM doomed))"
            )
            self.db.execute("DELETE FROM run_rows WHERE run_id IN (SELECT run_id FROM doomed)")
            self.db.execute("DELETE FROM runs WHERE run_id IN (SELECT run_id FROM doomed)")
        return count

    # results --------------------------------------------------------------------------------------
    def get(self, key: str) -> dict | None:
        row = self.db.execute("SELECT result FROM results WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def record(self, run_id: str, key: str, result: dict, call: dict | list[dict] | None) -> None:
        """Log the call(s) and, when the row is finished, cache its result, in one transaction."""
        self.record_many(run_id, [(key, result, call)])

    def record_many(self, run_id: str, items: list[tuple[str, dict, dict | list[dict] | None]]) -> None:
        """`record` for several rows (key, result, call) in one transaction: a group commit.

        `call`: one call-log line, or a list of them (one per ask of the row, each with its own reply, status and
        error); a line without those fields takes the row's result's."""
        now = time.time()
        calls = [
            (run_id, key, call.get("model"), call.get("status", result["status"]),
             call.get("raw_output", result.get("raw_output")), call.get("prompt_tokens", 0),
             call.get("completion_tokens", 0), call.get("latency_s", 0.0), call.get("attempts", 1),
             (call.get("error") if "error" in call else result.get("error")) or None, call.get("ask"), now)
            for key, result, logged in items if logged is not None
            for call in (logged if isinstance(logged, list) else [logged])
        ]
        finished = [(key, result) for key, result, _ in items if result["status"] in CACHEABLE]
        with self.db:
            self.db.execute("BEGIN")
            self.db.executemany(
                "INSERT INTO calls(run_id, key, model, status, raw_output, prompt_tokens, completion_tokens,"
                " latency_s, attempts, error, ask, created) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", calls)
            self.db.executemany(
                "INSERT OR REPLACE INTO results(key, run_id, status, result, created) VALUES (?,?,?,?,?)",
                [(key, run_id, result["status"], json.dumps(result, ensure_ascii=False), now)
                 for key, result in finished])
            self.db.executemany("INSERT OR IGNORE INTO run_rows(run_id, key) VALUES (?,?)",
                                [(run_id, key) for key, _ in finished])

    def replies(self, key: str) -> list[dict]:
        """Every call logged for a row, oldest first: each ask's reply, status, error and transport attempts."""
        query = ("SELECT run_id, ask, status, raw_output, error, attempts, created FROM calls WHERE key=?"
                 " ORDER BY id")
        names = ("run_id", "ask", "status", "raw_output", "error", "attempts", "created")
        return [dict(zip(names, row, strict=True)) for row in self.db.execute(query, (key,))]

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
        """Rows finished in a run, by status, and how many the paper's A4 (>= 4) and A5 (5) keep; `llm_error`:
        rows whose calls failed and that have no result yet (they are never cached, so a rerun tries them again)."""
        counts = {"rows": 0, "ok": 0, "parse_error": 0, "llm_error": 0, **dict.fromkeys(PAPER_LEVELS, 0)}
        query = "SELECT r.status, r.result FROM run_rows rr JOIN results r ON r.key = rr.key WHERE rr.run_id = ?"
        for status, result in self.db.execute(query, (run_id,)):
            counts["rows"] += 1
            counts[status] = counts.get(status, 0) + 1
            score = json.loads(result).get("score")
            if isinstance(score, (int, float)):
                for name, level in PAPER_LEVELS.items():
                    counts[name] += score >= level
        counts["llm_error"] = self.db.execute(
            "SELECT COUNT(DISTINCT key) FROM calls WHERE run_id = ? AND status = 'llm_error' "
            "AND key NOT IN (SELECT key FROM run_rows WHERE run_id = ?)", (run_id, run_id)).fetchone()[0]
        return counts

    def usage(self, run_id: str | None = None) -> dict:
        where, args = ("WHERE run_id=?", (run_id,)) if run_id else ("", ())
        calls, prompt, completion = self.db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(prompt_tokens),0), COALESCE(SUM(completion_tokens),0) FROM calls {where}",
            args,
        ).fetchone()
        return {"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion}
