"""Background jobs: a judge, generate or augment run of one owner that lives apart from the page.

A page starts a job and then only reads it: closing the tab does not stop it, and any page of the same owner
(the same browser, or the same account anywhere) finds it again, running or done. The job writes every
finished row to the run store as it goes, so a server restart loses nothing but the calls in flight; the
unfinished run is then resumable from the owner's run list. Finished jobs keep only their counts: memory does
not grow with the number of jobs a server has run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from backtrans.redaction import redact


@dataclass
class Job:
    owner: str
    kind: str  # judge | generate | augment
    label: str  # what it runs over, in the owner's words
    total: int
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    state: str = "running"  # running | done | stopped | failed
    error: str | None = None
    progress: object | None = None  # runner.Progress, once the first row is out
    filters: object | None = None  # augment: the segment filter report
    version: int = 0  # bumped at every change a reader may want to show
    _task: asyncio.Task | None = field(default=None, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    def stop(self) -> bool:
        """Cancel what is in flight; finished rows stay in the store. False when it had already ended."""
        if self._task is None or self._task.done():
            return False
        self._task.cancel()
        return True

    async def changed(self, timeout: float) -> None:
        """Wait until the job changes or `timeout` seconds pass, whichever is first."""
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            pass
        self._changed.clear()

    def _touch(self) -> None:
        self.version += 1
        self._changed.set()


class Jobs:
    """Every owner's jobs in this server process: the running ones and each owner's latest finished one."""

    def __init__(self) -> None:
        self._latest: dict[str, Job] = {}

    def start(self, owner: str, kind: str, label: str, total: int, updates: AsyncIterator,
              on_end: Callable[[], None] | None = None, secret: str | None = None) -> Job:
        """Run `updates` (a session's job stream of JobUpdate) in the background. Must be called from within the
        server's event loop; `on_end` runs once when the job ends, however it ends. `secret` never reaches the
        error text."""
        job = Job(owner, kind, label, total)
        job._task = asyncio.get_running_loop().create_task(self._drive(job, updates, on_end, secret))
        self._latest[owner] = job
        return job

    def latest(self, owner: str) -> Job | None:
        return self._latest.get(owner)

    def running(self, owner: str) -> bool:
        job = self._latest.get(owner)
        return job is not None and job.running

    def forget(self, owner: str) -> None:
        job = self._latest.pop(owner, None)
        if job is not None:
            job.stop()

    @staticmethod
    async def _drive(job: Job, updates: AsyncIterator, on_end: Callable[[], None] | None,
                     secret: str | None) -> None:
        try:
            async for update in updates:
                job.progress, job.filters = update.progress, update.filters or job.filters
                if update.done:
                    job.state, job.error = ("failed", update.error) if update.error else ("done", None)
                job._touch()
            if job.state == "running":
                job.state = "done"
        except asyncio.CancelledError:
            job.state = "stopped"
        except Exception as exc:  # noqa: BLE001 - a job's failure is shown on its page, never crashes the server
            job.state, job.error = "failed", redact(f"{type(exc).__name__}: {exc}", secret)
        finally:
            await updates.aclose()  # cancels the calls in flight; finished rows are already in the store
            job.finished = time.monotonic()
            job._task = None
            job._touch()
            if on_end is not None:
                on_end()
