"""Fair limits for a shared app: upload size, rows per job, concurrent jobs and daily rows per owner.

Off a Space the defaults are generous (the app is its user's own tool); on a Space they protect the
Space's owner and every other visitor. Each is an environment variable; 0 means no limit.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from backtrans.owners import on_space


class LimitError(RuntimeError):
    """A limit was reached. The message says which, and what the user can do."""


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        raise LimitError(f"{name} must be a whole number, not {value[:20]!r}") from None


@dataclass(frozen=True)
class Limits:
    upload_mb: int = 200
    rows_per_job: int = 0
    jobs_per_owner: int = 2
    rows_per_day: int = 0  # counts only calls the app's own key pays for
    concurrency: int = 256
    retention_days: int = 0

    @classmethod
    def from_env(cls) -> Limits:
        space = on_space()
        return cls(
            upload_mb=_env_int("BACKTRANS_MAX_UPLOAD_MB", 50 if space else 200),
            rows_per_job=_env_int("BACKTRANS_MAX_ROWS_PER_JOB", 20_000 if space else 0),
            jobs_per_owner=_env_int("BACKTRANS_MAX_JOBS_PER_OWNER", 2),
            rows_per_day=_env_int("BACKTRANS_ROWS_PER_DAY", 1_000 if space else 0),
            concurrency=_env_int("BACKTRANS_MAX_CONCURRENCY", 32 if space else 256),
            retention_days=_env_int("BACKTRANS_RETENTION_DAYS", 7 if space else 0),
        )

    def check_job(self, rows: int) -> None:
        if self.rows_per_job and rows > self.rows_per_job:
            raise LimitError(f"This job has {rows:,} rows; this app takes at most {self.rows_per_job:,} per job. "
                             "Split the file, or run the CLI on your own machine.")

    def check_daily(self, used: int, rows: int) -> None:
        if self.rows_per_day and used + rows > self.rows_per_day:
            left = max(0, self.rows_per_day - used)
            raise LimitError(f"Daily limit of the app's model: {used:,} of {self.rows_per_day:,} rows used in the "
                             f"last 24 hours, {left:,} left, and this job needs {rows:,}. Sign in and use your own "
                             "Hugging Face token or endpoint, or come back later.")


class JobGate:
    """Counts each owner's running jobs, so one visitor cannot hold every worker of a shared app."""

    def __init__(self) -> None:
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    def acquire(self, owner_key: str, limit: int) -> None:
        """Count one more running job of this owner, or refuse it past `limit` (0: no limit)."""
        with self._lock:
            if limit and self._running[owner_key] >= limit:
                raise LimitError(f"You already have {self._running[owner_key]} job(s) running, the most this app "
                                 "runs at once for one user. Wait for one to finish, or stop it.")
            self._running[owner_key] += 1

    def release(self, owner_key: str) -> None:
        with self._lock:
            self._running[owner_key] -= 1
            if self._running[owner_key] <= 0:
                del self._running[owner_key]

    @contextmanager
    def job(self, owner_key: str, limit: int) -> Iterator[None]:
        self.acquire(owner_key, limit)
        try:
            yield
        finally:
            self.release(owner_key)

    def running(self, owner_key: str) -> int:
        with self._lock:
            return self._running[owner_key]


def day_ago() -> float:
    return time.time() - 24 * 3600
