"""Runs one kind of LLM task over a stream of rows: cached, concurrent, in order, resumable.

Rows flow through a bounded window of in-flight tasks, so memory stays flat however long the input
is and the model is kept busy without waiting for a whole batch to finish (distilabel's batches wait
for their slowest call). Results come back in input order, each already committed to the store.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from backtrans.llm import Completion, LLMClient, LLMError, LLMSettings
from backtrans.store import RunStore
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

    async def call(self, client: LLMClient, row: dict) -> Completion: ...

    def parse(self, row: dict, completion: Completion) -> dict: ...

    def failure(self, row: dict, error: str) -> dict: ...


@dataclass
class Progress:
    total: int | None = None
    done: int = 0
    cached: int = 0
    ok: int = 0
    parse_error: int = 0
    llm_error: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    started: float = field(default_factory=time.monotonic)

    def count(self, result: dict, cached: bool, completion: Completion | None) -> None:
        self.done += 1
        self.cached += cached
        status = result.get("status", "ok")
        setattr(self, status, getattr(self, status, 0) + 1)
        if completion is not None:
            self.prompt_tokens += completion.prompt_tokens
            self.completion_tokens += completion.completion_tokens

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def summary(self) -> str:
        elapsed = time.monotonic() - self.started
        return (
            f"{self.done} rows in {elapsed:.1f}s: {self.ok} ok, {self.parse_error} parse_error, "
            f"{self.llm_error} llm_error; {self.cached} from the store; {self.tokens:,} tokens"
        )


async def _process(task: Task, client: LLMClient, store: RunStore, run_id: str, row: dict):
    given = task.skip(row)
    if given is not None:
        return given, True, None
    key = task.key(row)
    cached = store.get(key)
    if cached is not None:
        store.link(run_id, key)
        return cached, True, None
    completion = None
    try:
        completion = await task.call(client, row)
        result = task.parse(row, completion)
        call = {
            "model": completion.model,
            "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens,
            "latency_s": completion.latency_s,
            "attempts": completion.attempts,
        }
    except LLMError as exc:
        result = task.failure(row, str(exc))
        call = {"model": client.settings.model, "attempts": exc.attempts}
    store.record(run_id, key, result, call)
    return result, False, completion


def run_one(task: Task, row: dict) -> dict:
    """One row through a task, with no store: for a quick check of a template, a model or a pair."""

    async def go() -> dict:
        client = LLMClient(task.settings)
        try:
            return task.parse(row, await task.call(client, row))
        except LLMError as exc:
            return task.failure(row, str(exc))
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
) -> AsyncIterator[tuple[dict, dict]]:
    """Yields (row, result) in input order. Cancelling the consumer cancels what is in flight."""
    progress = progress or Progress()
    window = window or max(32, client.settings.concurrency * 4)
    pending: deque[tuple[dict, asyncio.Task]] = deque()
    try:
        for row in rows:
            pending.append((row, asyncio.ensure_future(_process(task, client, store, run_id, row))))
            # A finished head frees its slot at once; otherwise wait only when the window is full.
            while pending and (pending[0][1].done() or len(pending) >= window):
                head_row, head = pending.popleft()
                result, cached, completion = await head
                progress.count(result, cached, completion)
                yield head_row, result
            if len(pending) and not pending[-1][1].done():
                await asyncio.sleep(0)  # let a cache hit or a fast reply resolve before reading on
        while pending:
            head_row, head = pending.popleft()
            result, cached, completion = await head
            progress.count(result, cached, completion)
            yield head_row, result
    finally:
        for _, pending_task in pending:
            pending_task.cancel()


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

    def run_config(self) -> dict:
        task = self.task
        return {
            "source": self.source,
            "output": self.output,
            "template": task.template.path or task.template.name,
            "template_digest": task.template.digest,
            "model": task.settings.model,
            "base_url": task.settings.base_url,
            "mapping": self.mapping,
            "config": self.config,
            "split": self.split,
            "parent_run_id": self.parent_run_id,
        }

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
            run_id = (run_id or store.find_run(self.task.kind, config)
                      or store.start_run(self.task.kind, config, parent=self.parent_run_id))
            progress = Progress(total=total)
            # A later round keeps the earlier round's verdict beside its own: score_r1, reason_r1, ...
            earlier = len(store.lineage(self.parent_run_id)) if self.parent_run_id else 0

            async def drive() -> None:
                with RowWriter(self.output, self.output_format) as writer:
                    try:
                        async for row, result in run_rows(self.rows(), self.task, client, store, run_id, progress):
                            if earlier:
                                row = {(f"{k}_r{earlier}" if k in self.task.output_columns else k): v
                                       for k, v in row.items()}
                            writer.write(merge(row, result, self.task.output_columns))
                            if on_progress:
                                on_progress(progress)
                    finally:
                        await client.close()

            asyncio.run(drive())
            store.finish_run(run_id)
            return run_id, progress
        finally:
            store.close()


def merge(row: dict, result: dict, columns: tuple[str, ...]) -> dict:
    merged = dict(row)
    merged.update({column: result.get(column) for column in columns})
    return merged


async def stream_results(
    rows: list[dict], task: Task, store_path: str, run_config: dict, owner: str = ""
) -> AsyncIterator[tuple[int, dict, Progress]]:
    """For interactive faces: (row index, result, progress) as each row finishes, in order.

    Closing the generator (a Stop button, a closed tab) cancels what is in flight; finished rows are
    already in the store, so starting again picks up where it stopped.
    """
    store = RunStore(store_path)
    client = LLMClient(task.settings)
    progress = Progress(total=len(rows))
    run_id = store.find_run(task.kind, run_config, owner) or store.start_run(task.kind, run_config, owner=owner)
    try:
        index = 0
        async for _, result in run_rows(rows, task, client, store, run_id, progress):
            yield index, result, progress
            index += 1
        store.finish_run(run_id)
    finally:
        await client.close()
        store.close()
