"""`--batch`: the rows as one OpenAI Batch API job, at the Batch API's price, through the project's own task.

1. Every row that the store does not already hold becomes one line of the Batch API's JSONL
   (`{"custom_id": KEY, "method": "POST", "url": "/v1/chat/completions", "body": ...}`), with the row's content
   key as its custom_id and the body the task would have sent itself.
2. The file is uploaded (`files.create(purpose="batch")`) and submitted (`batches.create`), at most
   MAX_PER_BATCH lines per batch; their ids are kept beside the store, so a rerun of an interrupted job polls
   the same batches instead of paying twice.
3. The batches are polled, with a progress line, until they end.
4. Each result line is parsed by the task's own parser and recorded in the store; the output is then written in
   input order. Failed lines end as `llm_error` (not cached: a rerun asks again).

vLLM's `run_batch` reads and writes the same format: `write_requests` writes the file, and `ingest` reads its
results (`--batch-file` / `--batch-results` in the CLI; see docs/scaling.md).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from backtrans.llm import LLMClient, LLMSettings
from backtrans.runner import FileJob, Progress, merge
from backtrans.store import RunStore

MAX_PER_BATCH = 50_000  # the OpenAI Batch API's limit per file
ENDPOINT = "/v1/chat/completions"
FINAL = {"completed", "failed", "expired", "cancelled"}


class _Recorded(Exception):
    pass


class _Recorder(LLMClient):
    """Builds a row's request exactly as the task would send it, and sends nothing."""

    def __init__(self, settings: LLMSettings):
        super().__init__(settings)
        self.request: dict | None = None
        self.prefill = ""

    async def chat(self, prompt: str, **params):  # noqa: D102 - same signature as LLMClient.chat
        self.request = self.build_request(prompt, **params)
        self.prefill = params.get("prefill", "")
        raise _Recorded


def request_for(task, recorder: _Recorder, row: dict) -> tuple[dict, str]:
    """(request body, prefill) for one row, without an event loop: the task's call stops at the request."""
    coroutine = task.call(recorder, row)
    try:
        coroutine.send(None)
    except _Recorded:
        return recorder.request, recorder.prefill
    finally:
        coroutine.close()
    raise RuntimeError(f"{type(task).__name__}.call did not make a chat request")


def write_requests(job: FileJob, store: RunStore, path: Path) -> int:
    """The Batch API input file for the rows the store does not hold yet; returns its line count."""
    recorder = _Recorder(job.task.settings)
    written: set[str] = set()
    with path.open("w", encoding="utf-8") as handle:
        for row in job.rows():
            if job.task.skip(row) is not None:
                continue
            key = job.task.key(row)
            if key in written or store.get(key) is not None:
                continue
            body, _ = request_for(job.task, recorder, row)
            handle.write(json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT, "body": body},
                                    ensure_ascii=False) + "\n")
            written.add(key)
    return len(written)


def _split(path: Path, size: int) -> Iterator[Path]:
    """The input file in parts of at most `size` lines."""
    part, lines = 0, []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            lines.append(line)
            if len(lines) == size:
                yield _write_part(path, part, lines)
                part, lines = part + 1, []
    if lines:
        yield _write_part(path, part, lines)


def _write_part(path: Path, part: int, lines: list[str]) -> Path:
    target = path.with_name(f"{path.stem}.part{part}.jsonl")
    target.write_text("".join(lines), encoding="utf-8")
    return target


def _sdk(settings: LLMSettings):
    import openai

    return openai.OpenAI(base_url=settings.base_url, api_key=settings.api_key or "no-key", max_retries=3,
                         timeout=max(60.0, settings.timeout_s))


def ingest(job: FileJob, store: RunStore, run_id: str, result_lines: Iterator[str],
           progress: Progress, on_progress: Callable[[Progress], None] | None = None,
           missing_error: str = "no result for this row in the batch") -> None:
    """Parse result lines into the store, then write the output in input order."""
    from backtrans.export import RowWriter

    task = job.task
    recorder = _Recorder(task.settings)
    answers: dict[str, dict] = {}
    for line in result_lines:
        if line.strip():
            record = json.loads(line)
            answers[record["custom_id"]] = record
    pending: list[tuple[str, dict, dict | None]] = []
    with RowWriter(job.output, job.output_format) as writer:
        for row in job.rows():
            given = task.skip(row)
            completion = None
            if given is not None:
                result, cached = given, True
            else:
                key = task.key(row)
                result, cached = store.get(key), True
                if result is None:
                    cached = False
                    result, call, completion = _answer(task, recorder, row, answers.get(key), missing_error)
                    pending.append((key, result, call))
                    if len(pending) >= 500:
                        store.record_many(run_id, pending)
                        pending.clear()
                else:
                    store.link(run_id, key)
            writer.write(merge(row, result, task.output_columns))
            progress.count(result, cached, completion)
            if on_progress:
                on_progress(progress)
        if pending:
            store.record_many(run_id, pending)


def _answer(task, recorder: _Recorder, row: dict, record: dict | None, missing_error: str):
    """(result, call log, completion) for one row from its Batch API result line."""
    model = task.settings.model
    if record is None:
        return task.failure(row, missing_error), {"model": model, "attempts": 1}, None
    response = record.get("response") or {}
    status = int(response.get("status_code") or 0)
    body = response.get("body") or {}
    if record.get("error") or status != 200:
        error = record.get("error") or body.get("error") or {}
        message = error.get("message") if isinstance(error, dict) else str(error)
        return task.failure(row, f"HTTP {status}: {message} (batch)"), {"model": model, "attempts": 1}, None
    _, prefill = request_for(task, recorder, row)
    try:
        completion = recorder.completion_from(body, prefill)
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        return task.failure(row, f"malformed response: {exc} (batch)"), {"model": model, "attempts": 1}, None
    result = task.parse(row, completion)
    call = {"model": completion.model, "prompt_tokens": completion.prompt_tokens,
            "completion_tokens": completion.completion_tokens, "latency_s": 0.0, "attempts": 1}
    return result, call, completion


def run_job(job: FileJob, poll_s: float = 10.0, on_progress: Callable[[Progress], None] | None = None,
            total: int | None = None, run_id: str | None = None, log=None) -> tuple[str, Progress, str]:
    """Submit, poll, ingest. Returns (run_id, progress, a line about the batches)."""
    log = log or sys.stderr
    total = job.validate() if total is None else total
    store = RunStore(job.store_path)
    try:
        config = job.run_config().updated(engine="batch")
        run_id = run_id or store.resume_or_start(job.task.kind, config, parent=job.parent_run_id)
        state_path = Path(f"{job.store_path}.batch-{run_id}.json")
        client = _sdk(job.task.settings)
        if state_path.exists():  # an interrupted job: poll what was already paid for
            state = json.loads(state_path.read_text())
            print(f"resuming batches {', '.join(state['batches'])}", file=log)
        else:
            requests_path = Path(f"{job.store_path}.batch-{run_id}.requests.jsonl")
            count = write_requests(job, store, requests_path)
            state = {"batches": [], "requests": count}
            for part in _split(requests_path, MAX_PER_BATCH) if count else ():
                with part.open("rb") as handle:
                    uploaded = client.files.create(file=handle, purpose="batch")
                batch = client.batches.create(input_file_id=uploaded.id, endpoint=ENDPOINT, completion_window="24h",
                                              metadata={"backtrans_run": run_id})
                state["batches"].append(batch.id)
                part.unlink()
            state_path.write_text(json.dumps(state))
            requests_path.unlink(missing_ok=True)
            print(f"submitted {count} requests in {len(state['batches'])} batch(es): "
                  f"{', '.join(state['batches']) or 'none needed'}", file=log)
        finished = _poll(client, state["batches"], poll_s, log)
        lines = _result_lines(client, finished)
        progress = Progress(total=total)
        ingest(job, store, run_id, lines, progress, on_progress)
        progress.finished = time.monotonic()
        store.finish_run(run_id)
        state_path.unlink(missing_ok=True)
        counts = {name: sum(getattr(b.request_counts, name, 0) or 0 for b in finished)
                  for name in ("total", "completed", "failed")}
        line = (f"batches {len(finished)} ({', '.join(sorted({b.status for b in finished})) or 'none'}): "
                f"{counts['total']} requests, {counts['completed']} completed, {counts['failed']} failed")
        return run_id, progress, line
    finally:
        store.close()


def _poll(client, batch_ids: list[str], poll_s: float, log) -> list:
    """Wait for every batch to end, with one progress line per check."""
    while True:
        batches = [client.batches.retrieve(batch_id) for batch_id in batch_ids]
        done = sum((b.request_counts.completed or 0) + (b.request_counts.failed or 0)
                   for b in batches if b.request_counts)
        asked = sum(b.request_counts.total or 0 for b in batches if b.request_counts)
        states = ", ".join(f"{b.id} {b.status}" for b in batches)
        print(f"batch: {done}/{asked} requests done ({states})", file=log, flush=True)
        if all(b.status in FINAL for b in batches):
            return batches
        time.sleep(poll_s)


def _result_lines(client, batches: list) -> Iterator[str]:
    for batch in batches:
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                yield from client.files.content(file_id).text.splitlines()


def write_file(job: FileJob, path: str | Path) -> int:
    """Only step 1: the requests file, for vLLM's `run_batch` or a provider's console. Returns its line count."""
    store = RunStore(job.store_path)
    try:
        return write_requests(job, store, Path(path))
    finally:
        store.close()


def ingest_file(job: FileJob, results: str | Path, on_progress: Callable[[Progress], None] | None = None,
                total: int | None = None, run_id: str | None = None) -> tuple[str, Progress, str]:
    """Only step 4: a results file (vLLM's `run_batch -o`, or one downloaded) into the store and the output."""
    total = job.validate() if total is None else total
    store = RunStore(job.store_path)
    try:
        config = job.run_config().updated(engine="batch")
        run_id = run_id or store.resume_or_start(job.task.kind, config, parent=job.parent_run_id)
        progress = Progress(total=total)
        with Path(results).open(encoding="utf-8") as handle:
            ingest(job, store, run_id, handle, progress, on_progress,
                   missing_error=f"no result for this row in {Path(results).name}")
        progress.finished = time.monotonic()
        store.finish_run(run_id)
        return run_id, progress, f"results from {Path(results).name}"
    finally:
        store.close()
