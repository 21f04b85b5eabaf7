"""Runs one kind of LLM task over a stream of rows: cached, concurrent, in order, resumable.

Rows are requested as fast as free slots allow, whatever order they finish in: a slow, hanging or
retrying row never holds back the rows behind it. Each result is committed to the store when it
arrives (several rows per transaction, a few milliseconds apart) and counted in `Progress` only once
committed, so a `kill -9` loses nothing that was counted. The output comes back in input order from a
reorder buffer: rows that finished behind a slow head are kept as store keys, not as rows, when the
input can be read a second time (a file, a list), so memory stays flat however long the head takes.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from backtrans.llm import Completion, LLMClient, LLMError, LLMSettings
from backtrans.run_config import RunConfig
from backtrans.store import CACHEABLE, RunStore
from backtrans.templates import Template


class Task(Protocol):
    """What differs between judging, response generation and instruction generation."""

    kind: str
    output_columns: tuple[str, ...]
    settings: LLMSettings
    template: Template

    def key(self, row: dict) -> str: ...

    def skip(self, row: dict) -> dict | None:
        """A result for a row that needs no call (say, one that already has a response), else None."""

    async def call(self, client: LLMClient, row: dict, reask: bool = False) -> Completion:
        """`reask`: the same prompt again after a reply that did not parse (a task's `reask` says how often)."""

    def parse(self, row: dict, completion: Completion) -> dict: ...

    def failure(self, row: dict, error: str) -> dict: ...


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


@dataclass
class Progress:
    """Counted as rows finish (committed to the store), in completion order, not output order."""

    total: int | None = None
    done: int = 0
    cached: int = 0
    ok: int = 0
    parse_error: int = 0
    llm_error: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hedged: int = 0  # rows whose duplicate request answered first
    reasks: int = 0  # asks after a reply with no usable answer (not transport retries: those are the client's)
    reask_ok: int = 0  # rows that parsed only on a re-ask
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None  # set by the runner when the last row is out

    def count(self, result: dict, cached: bool, completion: Completion | None, reasks: int = 0) -> None:
        self.done += 1
        self.reasks += reasks
        self.reask_ok += bool(reasks) and result.get("status") == "ok"
        self.cached += cached
        status = result.get("status", "ok")
        setattr(self, status, getattr(self, status, 0) + 1)
        if completion is not None:
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens
            self.hedged += completion.hedged

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        """Rows per second so far."""
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the rate so far; None while unknown (no total, or nothing finished yet)."""
        if self.total is None or not self.done:
            return None
        return max(0, self.total - self.done) / self.rate if self.rate else None

    def summary(self) -> str:
        return (
            f"{self.done} rows in {self.elapsed:.1f}s: {self.ok} ok, {self.parse_error} parse_error, "
            f"{self.llm_error} llm_error; {self.cached} from the store; {self.tokens:,} tokens; "
            f"{self.rate:.1f} rows/s; {self.reask_line()}"
        )

    def reask_line(self) -> str:
        return f"re-asked {self.reasks} times after a reply with no score ({self.reask_ok} rows parsed on a re-ask)"

    def done_line(self) -> str:
        """The final line: "Done: N rows in T (R rows/s): ..."."""
        return (f"Done: {self.done} rows in {_duration(self.elapsed)} ({self.rate:.1f} rows/s): {self.ok} ok, "
                f"{self.parse_error} parse_error, {self.llm_error} llm_error; {self.cached} from the store; "
                f"{self.tokens:,} tokens; {self.reasks} re-asks")


class _GroupCommit:
    """Results that arrive within a few milliseconds of each other share one SQLite transaction.

    Each caller waits until its own row is committed: a row is finished only once it is on disk.
    """

    def __init__(self, store: RunStore, run_id: str, interval_s: float = 0.004, max_rows: int = 512):
        self.store = store
        self.run_id = run_id
        self.interval_s = interval_s
        self.max_rows = max_rows
        self.items: list[tuple[str, dict, dict | None]] = []
        self.waiters: list[asyncio.Future] = []
        self.timer: asyncio.TimerHandle | None = None

    async def record(self, key: str, result: dict, call: dict | None) -> None:
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        self.items.append((key, result, call))
        self.waiters.append(waiter)
        if len(self.items) >= self.max_rows:
            self.flush()
        elif self.timer is None:
            self.timer = loop.call_later(self.interval_s, self.flush)
        await waiter

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        items, waiters = self.items, self.waiters
        self.items, self.waiters = [], []
        if not items:
            return
        try:
            self.store.record_many(self.run_id, items)
        except Exception as exc:  # every row of the group failed to commit: each caller sees why
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _call_log(completion: Completion, result: dict, ask: int, error_column: str) -> dict:
    """One ask's line in the store's call log: its own reply, status and error, apart from the row's result."""
    return {
        "model": completion.model,
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "latency_s": completion.latency_s,
        "attempts": completion.attempts,  # transport attempts (retries) of this one ask
        "ask": ask,
        "status": result["status"],
        "raw_output": completion.text,
        "error": result.get(error_column) or None,
    }


def _added(total: Completion | None, more: Completion) -> Completion:
    """The token counts and time of several asks of one row, for the run's progress."""
    if total is None:
        return more
    return Completion(text=more.text, prompt_tokens=total.prompt_tokens + more.prompt_tokens,
                      completion_tokens=total.completion_tokens + more.completion_tokens,
                      latency_s=total.latency_s + more.latency_s, attempts=total.attempts + more.attempts,
                      model=more.model, hedged=total.hedged or more.hedged)


def asks_allowed(task: Task) -> int:
    """The first ask and the re-asks the task allows (tasks without a `reask` setting: one ask)."""
    return 1 + max(0, int(getattr(task, "reask", 0) or 0))


def asks_of(result: dict) -> int:
    """How many times a stored result's prompt was asked (results stored before re-asks existed: once)."""
    return int(result.get("asks") or 1)


@dataclass
class Asked:
    result: dict
    calls: list[dict]  # one call-log line per ask made now
    usage: Completion | None  # the tokens and time of the asks made now
    reasks: int = 0  # asks after the first made now


async def _ask(task: Task, client: LLMClient, row: dict, earlier: dict | None) -> Asked:
    """Ask until a reply parses or the task's asks are used up, keeping every reply.

    `earlier`: a stored parse_error from a run that allowed fewer asks; its replies are kept and only the asks it
    lacks are made. An ask that fails in transport ends the asking: with no reply at all the row is an llm_error
    (retried on a rerun); after an unparsable reply it stays that parse_error, with its replies.
    """
    error_column = getattr(task, "error_column", "error")
    replies = list(earlier.get("raw_outputs") or [earlier.get("raw_output")]) if earlier else []
    asked = Asked(earlier, [], None)
    for ask in range(len(replies) + 1, asks_allowed(task) + 1):
        try:
            completion = await (task.call(client, row, reask=True) if ask > 1 else task.call(client, row))
        except LLMError as exc:
            asked.calls.append({"model": client.settings.model, "attempts": exc.attempts, "ask": ask,
                                "status": "llm_error", "error": str(exc)})
            if asked.result is None:
                asked.result = task.failure(row, str(exc))
            break
        result = task.parse(row, completion)
        asked.calls.append(_call_log(completion, result, ask, error_column))
        asked.usage = _added(asked.usage, completion)
        asked.reasks += ask > 1
        replies.append(completion.text)
        asked.result = {**result, "asks": len(replies), "raw_outputs": replies}
        if result["status"] != "parse_error":
            break
        if len(replies) > 1:
            note = f"{result[error_column]} (asked {len(replies)} times; every reply is in the run store)"
            asked.result[error_column] = note
    return asked


async def _process(task: Task, client: LLMClient, store: RunStore, run_id: str, row: dict,
                   commit: _GroupCommit | None = None) -> tuple[dict, bool, Completion | None, int]:
    """(result, whether it came from the store, the tokens of the calls made, re-asks made)."""
    given = task.skip(row)
    if given is not None:
        return given, True, None, 0
    key = task.key(row)
    cached = store.get(key)
    # A stored parse_error asked fewer times than this task allows gets its missing asks; nothing else that is
    # stored is asked again: an ok row never is, whatever the re-ask setting says now.
    if cached is not None and not (cached.get("status") == "parse_error" and asks_of(cached) < asks_allowed(task)):
        store.link(run_id, key)
        return cached, True, None, 0
    asked = await _ask(task, client, row, cached)
    if commit is not None:
        await commit.record(key, asked.result, asked.calls)
    else:
        store.record(run_id, key, asked.result, asked.calls)
    return asked.result, False, asked.usage, asked.reasks


def run_loop(coroutine):
    """`asyncio.run`, on uvloop when it is installed (less CPU per request; BACKTRANS_UVLOOP=0 turns it off)."""
    import os

    if os.environ.get("BACKTRANS_UVLOOP", "1") != "0":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coroutine)
    return asyncio.run(coroutine)


def run_one(task: Task, row: dict) -> dict:
    """One row through a task, with no store: for a quick check of a template, a model or a pair."""

    async def go() -> dict:
        client = LLMClient(task.settings)
        try:
            return (await _ask(task, client, row, None)).result
        finally:
            await client.close()

    return asyncio.run(go())


async def run_rows(
    rows: Iterable[dict],
    task: Task,
    client: LLMClient,
    store: RunStore,
    run_id: str,
    progress: Progress | None = None,
    window: int | None = None,
    *,
    replay: Callable[[], Iterator[dict]] | None = None,
    ticks: bool = False,
    group_commit: bool | None = None,
) -> AsyncIterator[tuple[dict | None, dict | None]]:
    """Yields (row, result) in input order; cancelling the consumer cancels what is in flight.

    `window`: rows in flight at once (default: 4 x the client's concurrency, at least 32); finished rows
    waiting behind a slow one do not count, so they never hold back new requests.
    `replay`: a second, identical pass over the input (a list or a file is read again). With it, rows
    that wait behind a slow head are kept as store keys only, and read again when their turn comes.
    `ticks`: also yield (None, None) when rows finished but the next one in order has not, so that a
    display can show progress that is counted in completion order.
    """
    progress = progress or Progress()
    window = window or max(32, client.settings.concurrency * 4)
    listed = rows if isinstance(rows, Sequence) else None
    replayed: Iterator[dict] | None = None  # started only once a row is first held as a key
    # Kept whole up to this many waiting rows; past it, only a key (or a small failure) per row.
    hold_rows = window * 4
    if group_commit is None:  # BACKTRANS_GROUP_COMMIT=0: one transaction per row, for measuring the difference
        import os

        group_commit = os.environ.get("BACKTRANS_GROUP_COMMIT", "1") != "0"
    commit = _GroupCommit(store, run_id) if group_commit else None
    source = iter(rows)
    running: dict[asyncio.Future, tuple[int, dict]] = {}
    finished: deque[asyncio.Future] = deque()
    wake = asyncio.Event()
    waiting: dict[int, tuple[dict | None, dict | str]] = {}  # index -> (row, result) | (None, key | result)
    next_in = next_out = 0
    exhausted = False

    def on_done(future: asyncio.Future) -> None:
        finished.append(future)
        wake.set()

    def out_row(index: int, row: dict | None) -> dict:
        if listed is not None:
            return listed[index]
        if replayed is not None:
            again = next(replayed)  # in step with the output from the moment it started
            return row if row is not None else again
        return row

    try:
        while True:
            while not exhausted and len(running) < window:
                try:
                    row = next(source)
                except StopIteration:
                    exhausted = True
                    break
                future = asyncio.ensure_future(_process(task, client, store, run_id, row, commit))
                future.add_done_callback(on_done)
                running[future] = (next_in, row)
                next_in += 1
            if not running and not finished:
                break
            if not finished:
                wake.clear()
                await wake.wait()
            completed, emitted = 0, False
            while finished:
                future = finished.popleft()
                index, row = running.pop(future)
                result, cached, completion, reasks = future.result()
                progress.count(result, cached, completion, reasks)
                completed += 1
                if index == next_out:
                    next_out += 1
                    emitted = True
                    yield out_row(index, row), result
                    continue
                if len(waiting) < hold_rows or (listed is None and replay is None):
                    waiting[index] = (row, result)
                    continue
                if replayed is None and listed is None:
                    replayed = itertools.islice(replay(), next_out, None)
                if result.get("status") in CACHEABLE and not cached:
                    waiting[index] = (None, task.key(row))
                else:
                    waiting[index] = (None, result)
            while next_out in waiting:
                row, result = waiting.pop(next_out)
                row = out_row(next_out, row)
                if isinstance(result, str):
                    result = store.get(result) or task.failure(row, "the finished result left the store")
                next_out += 1
                emitted = True
                yield row, result
            if ticks and completed and not emitted:
                yield None, None
        progress.finished = time.monotonic()
    finally:
        for future in running:
            future.cancel()
        if commit is not None:
            commit.flush()


@dataclass
class FileJob:
    """One file through one task into one output file, recorded in a run store."""

    source: str
    output: str
    task: Task
    store_path: str
    mapping: dict = field(default_factory=dict)
    required: tuple[str, ...] = ("instruction", "generation")
    optional: tuple[str, ...] = ()
    config: str | None = None
    split: str | None = None
    drop_duplicates: bool = False
    output_format: str | None = None
    row_source: Callable[[], Iterator[dict]] | None = None  # rows from elsewhere than a records file
    parent_run_id: str | None = None

    def run_config(self) -> RunConfig:
        return RunConfig.for_task(self.task, source=self.source, output=self.output, mapping=self.mapping,
                                  hf_config=self.config, split=self.split, parent_run_id=self.parent_run_id)

    def rows(self, validated: bool = True) -> Iterator[dict]:
        """The input's rows; once `validate()` has passed, without holding duplicate fingerprints."""
        if self.row_source is not None:
            return self.row_source()
        from backtrans.records import iter_rows

        located = iter_rows(
            self.source, self.mapping, self.required, config=self.config, split=self.split,
            drop_duplicates=self.drop_duplicates, optional=self.optional, check_duplicates=not validated,
        )
        return (item.row for item in located)

    def validate(self) -> int:
        """Read the input once before any call: a bad line stops the job before it costs anything."""
        return sum(1 for _ in self.rows(validated=False))

    def run(self, client: LLMClient, run_id: str | None = None, on_progress=None,
            total: int | None = None) -> tuple[str, Progress]:
        """`total`: the row count from an earlier `validate()`, so the input is not read twice for it."""
        from backtrans.export import RowWriter

        total = self.validate() if total is None else total
        store = RunStore(self.store_path)
        try:
            config = self.run_config()
            run_id = run_id or store.resume_or_start(self.task.kind, config, parent=self.parent_run_id)
            progress = Progress(total=total)
            # A later round keeps the earlier round's verdict beside its own: score_r1, reason_r1, ...
            earlier = len(store.lineage(self.parent_run_id)) if self.parent_run_id else 0

            async def drive() -> None:
                with RowWriter(self.output, self.output_format) as writer:
                    try:
                        # A file is read a second time, in step with the output, so that rows waiting
                        # behind a slow one are held as keys; rows from elsewhere are held whole.
                        replay = self.rows if self.row_source is None else None
                        async for row, result in run_rows(self.rows(), self.task, client, store, run_id, progress,
                                                          replay=replay, ticks=True):
                            if row is None:
                                if on_progress:
                                    on_progress(progress)
                                continue
                            if earlier:
                                row = {(f"{k}_r{earlier}" if k in self.task.output_columns else k): v
                                       for k, v in row.items()}
                            writer.write(merge(row, result, self.task.output_columns))
                            if on_progress:
                                on_progress(progress)
                    finally:
                        await client.close()

            run_loop(drive())
            store.finish_run(run_id)
            return run_id, progress
        finally:
            store.close()


def merge(row: dict, result: dict, columns: tuple[str, ...]) -> dict:
    merged = dict(row)
    merged.update({column: result.get(column) for column in columns})
    return merged


async def stream_results(
    rows: list[dict], task: Task, store_path: str, run_config: RunConfig, owner: str = "", *,
    ticks: bool = True, tick_every_s: float = 0.1,
) -> AsyncIterator[tuple[int | None, dict | None, Progress]]:
    """For interactive faces: (row index, result, progress) in input order, as rows finish.

    Progress counts rows as they complete, in any order. While the next row in order is still out
    (a slow or retrying call), finished rows behind it show up as (None, None, progress) ticks, at most
    one per `tick_every_s`, so a display keeps moving; `ticks=False` leaves them out.
    Closing the generator (a Stop button, a closed tab) cancels what is in flight; finished rows are
    already in the store, so starting again picks up where it stopped.
    """
    store = RunStore(store_path)
    client = LLMClient(task.settings)
    progress = Progress(total=len(rows))
    run_id = store.resume_or_start(task.kind, run_config, owner)
    try:
        index, last_tick = 0, 0.0
        async for row, result in run_rows(rows, task, client, store, run_id, progress, ticks=ticks):
            if row is None:
                now = time.monotonic()
                if now - last_tick >= tick_every_s:
                    last_tick = now
                    yield None, None, progress
                continue
            yield index, result, progress
            index += 1
        store.finish_run(run_id)
    finally:
        await client.close()
        store.close()
