"""A fake OpenAI-compatible HTTP server for deterministic, fault-injecting tests and benchmarks.

It speaks just enough HTTP/1.1 (keep-alive, Content-Length) on raw asyncio streams to serve
thousands of requests per second, and the real `openai` client talks to it. Replies are derived from
the prompt, so runs are reproducible:
- a prompt containing `[[score=N]]` is judged N, others get a score from a hash of the prompt;
- a prompt that is not a judge prompt (no "Score") gets a response text;
- with `logprobs`, the score digit carries top_logprobs peaked at the score.
Faults (429 with Retry-After, 500, hangs, garbage text) are drawn per request from a seeded RNG.
A latency tail: `tail_rate` of the requests take `tail_s` longer (a heavy tail as real providers have).
A prompt containing `[[hang=S]]` is answered only after S seconds, every time it is asked; one containing
`[[same-line]]` is judged with its reason and score on one line; one containing `[[no-score=K]]` gets a reply with
no score the first K times it is asked, and a scored one after that (a judge that parses on a re-ask).
The OpenAI Batch API: POST /v1/files (multipart upload), GET /v1/files/ID/content, POST /v1/batches,
GET /v1/batches/ID; a batch's requests go through the same chat logic (faults included) after
`batch_delay_s`, and failed ones land in its error file.
Statistics, including how often each prompt was asked, are at GET /_stats; POST /_config changes
settings at run time.

Run standalone: python -m tests.fakellm --port 8999 --latency 0.25
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import random
import re
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass

_MARKER = re.compile(r"\[\[score=(\d+)\]\]")
_HANG = re.compile(r"\[\[hang=([\d.]+)\]\]")
_NO_SCORE = re.compile(r"\[\[no-score=(\d+)\]\]")


@dataclass
class FakeConfig:
    latency_s: float = 0.0
    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_hang: float = 0.0
    rate_garbage: float = 0.0
    retry_after_s: float = 0.05
    hang_s: float = 30.0
    seed: int = 0
    logprobs: bool = True  # answer logprob requests (llama.cpp and OpenAI do; some servers don't)
    tail_rate: float = 0.0  # this share of requests ...
    tail_s: float = 0.0  # ... take this much longer
    batch_delay_s: float = 0.2  # a batch stays `in_progress` at least this long


def judge_score(prompt: str) -> int:
    marker = _MARKER.search(prompt)
    if marker:
        return int(marker.group(1))
    return int(hashlib.sha256(prompt.encode()).hexdigest(), 16) % 5 + 1


class FakeLLM:
    def __init__(self, config: FakeConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or FakeConfig()
        self.host = host
        self.port = port
        self.rng = random.Random(self.config.seed)
        self.requests = 0
        self.connections = 0  # TCP connections accepted: a guard must refuse before connecting, not after
        self.statuses: Counter = Counter()
        self.prompts: Counter = Counter()
        self.answered: Counter = Counter()
        self.api_keys: Counter = Counter()
        self.recent_prompts: deque[str] = deque(maxlen=1000)
        self.files: dict[str, dict] = {}
        self.batches: dict[str, dict] = {}
        self.batch_requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._connection, self.host, self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> FakeLLM:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if not (self._loop and self._server):
            return

        async def shutdown() -> None:
            self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "statuses": dict(self.statuses),
            "unique_prompts": len(self.prompts),
            "repeated_prompts": sum(n - 1 for n in self.prompts.values() if n > 1),
            "api_keys": dict(self.api_keys),
            "batch_requests": self.batch_requests,
            "batches": len(self.batches),
        }

    def reset(self) -> None:
        self.requests = 0
        self.connections = 0
        self.statuses.clear()
        self.prompts.clear()
        self.answered.clear()
        self.api_keys.clear()
        self.recent_prompts.clear()
        self.batch_requests = 0

    # --- HTTP ------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        k, v = line.split(":", 1)
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                status, payload, extra = await self._route(method, path.split("?")[0], headers, body)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                extra_headers = "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(
                    f"HTTP/1.1 {status} {'OK' if status == 200 else 'Error'}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n{extra_headers}\r\n".encode()
                    + data
                )
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _route(self, method: str, path: str, headers: dict, body: bytes):
        if path in ("/health", "/v1/health"):
            return 200, {"status": "ok"}, {}
        if path == "/v1/models":
            return 200, {"object": "list", "data": [{"id": "fake-judge", "object": "model"}]}, {}
        if path == "/_stats":
            return 200, self.stats(), {}
        if path == "/_reset" and method == "POST":
            self.reset()
            return 200, {"ok": True}, {}
        if path == "/_config" and method == "POST":
            for key, value in json.loads(body or b"{}").items():
                setattr(self.config, key, value)
            return 200, asdict(self.config), {}
        if path == "/v1/chat/completions" and method == "POST":
            return await self._chat(json.loads(body), headers)
        if path.startswith("/v1/files") or path.startswith("/v1/batches"):
            return self._batch_api(method, path, headers, body)
        return 404, {"error": {"message": f"no route {path}"}}, {}

    async def _chat(self, request: dict, headers: dict, cfg: FakeConfig | None = None):
        cfg = cfg or self.config
        self.requests += 1
        auth = headers.get("authorization", "")
        self.api_keys[auth.removeprefix("Bearer ")] += 1
        messages = request.get("messages", [])
        prefill = messages[-1]["content"] if messages and messages[-1]["role"] == "assistant" else ""
        prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        digest = hashlib.sha256(prompt.encode()).hexdigest()
        self.prompts[digest] += 1
        self.recent_prompts.append(prompt)
        draw = self.rng.random()
        delay = cfg.latency_s
        if cfg.tail_rate and self.rng.random() < cfg.tail_rate:
            delay += cfg.tail_s
        hang = _HANG.search(prompt)
        if hang:
            delay += float(hang.group(1))
        if delay:
            await asyncio.sleep(delay)
        for rate, status in ((cfg.rate_429, 429), (cfg.rate_500, 500)):
            if draw < rate:
                self.statuses[status] += 1
                extra = {"Retry-After": str(cfg.retry_after_s)} if status == 429 else {}
                return status, {"error": {"message": f"injected {status}", "type": "injected"}}, extra
            draw -= rate
        if draw < cfg.rate_hang:
            self.statuses["hang"] += 1
            await asyncio.sleep(cfg.hang_s)
        draw -= cfg.rate_hang
        no_score = _NO_SCORE.search(prompt)
        self.answered[digest] += 1  # replies given (a 429 or 500 is no reply)
        garbage = draw < cfg.rate_garbage or bool(no_score and self.answered[digest] <= int(no_score.group(1)))
        self.statuses["garbage" if garbage else 200] += 1
        return 200, self._completion(request, prompt, prefill, garbage), {}

    def _completion(self, request: dict, prompt: str, prefill: str, garbage: bool) -> dict:
        is_judge = "Score" in prompt or "score" in prompt
        score = judge_score(prompt)
        if garbage:
            tokens = ["~~", "lorem", " ipsum", " ###"]
        elif is_judge and "[[same-line]]" in prompt:  # a judge that puts its reason on the score's line
            tokens = ["The", " pair", " is", " on", "-topic", ".", " Score", ":", " ", str(score)]
        elif is_judge and prefill:
            tokens = [str(score), "\n", "Because", " it", " fits", "."]
        elif is_judge:
            tokens = ["The", " answer", " addresses", " the", " request", ".", "\n", "Score", ":", " ", str(score)]
        else:
            tokens = ["A", " response", " to", ": ", prompt[:40].replace("\n", " ")]
        tokens = tokens[: max(1, int(request.get("max_tokens") or 512))]
        content = prefill + "".join(tokens)
        choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        if request.get("logprobs") and self.config.logprobs:
            choice["logprobs"] = {"content": [self._logprob(t, score) for t in tokens]}
        prompt_tokens = max(1, len(prompt) // 4)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "fake-judge"),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(tokens),
                "total_tokens": prompt_tokens + len(tokens),
            },
        }

    # --- the Batch API ----------------------------------------------------------------------------
    def _batch_api(self, method: str, path: str, headers: dict, body: bytes):
        parts = path.strip("/").split("/")  # v1, files|batches, [id], [content|cancel]
        if parts[1] == "files" and method == "POST" and len(parts) == 2:
            fields = _multipart(headers.get("content-type", ""), body)
            content = fields.get("file", b"")
            file_id = f"file-{len(self.files) + 1:06d}"
            self.files[file_id] = {"content": content, "purpose": fields.get("purpose", b"").decode()}
            return 200, self._file_object(file_id), {}
        if parts[1] == "files" and len(parts) >= 3 and parts[2] in self.files:
            if len(parts) == 4 and parts[3] == "content":
                return 200, self.files[parts[2]]["content"], {}
            return 200, self._file_object(parts[2]), {}
        if parts[1] == "batches" and method == "POST" and len(parts) == 2:
            request = json.loads(body)
            source = self.files.get(request.get("input_file_id", ""))
            if source is None:
                return 404, {"error": {"message": "no such input file"}}, {}
            batch_id = f"batch-{len(self.batches) + 1:06d}"
            batch = {
                "id": batch_id, "object": "batch", "endpoint": request.get("endpoint"),
                "input_file_id": request["input_file_id"], "completion_window": request.get("completion_window"),
                "status": "validating", "created_at": int(time.time()), "output_file_id": None,
                "error_file_id": None, "request_counts": {"total": 0, "completed": 0, "failed": 0},
            }
            self.batches[batch_id] = batch
            asyncio.ensure_future(self._run_batch(batch, source["content"]))
            return 200, batch, {}
        if parts[1] == "batches" and len(parts) >= 3 and parts[2] in self.batches:
            return 200, self.batches[parts[2]], {}
        return 404, {"error": {"message": f"no route {path}"}}, {}

    def _file_object(self, file_id: str) -> dict:
        entry = self.files[file_id]
        return {"id": file_id, "object": "file", "bytes": len(entry["content"]), "created_at": int(time.time()),
                "filename": f"{file_id}.jsonl", "purpose": entry["purpose"] or "batch", "status": "processed"}

    async def _run_batch(self, batch: dict, content: bytes) -> None:
        lines = [json.loads(line) for line in content.decode().splitlines() if line.strip()]
        batch["request_counts"]["total"] = len(lines)
        batch["status"] = "in_progress"
        await asyncio.sleep(self.config.batch_delay_s)
        outputs, errors = [], []
        for number, line in enumerate(lines):
            self.batch_requests += 1
            # A batch has no latency of its own per request, but the same faults otherwise.
            quick = FakeConfig(**{**asdict(self.config), "latency_s": 0.0, "rate_hang": 0.0, "tail_rate": 0.0})
            status, payload, _ = await self._chat(line["body"], {}, quick)
            record = {"id": f"batch_req_{number}", "custom_id": line["custom_id"]}
            if status == 200:
                outputs.append({**record, "response": {"status_code": 200, "request_id": f"req_{number}",
                                                       "body": payload}, "error": None})
                batch["request_counts"]["completed"] += 1
            else:
                errors.append({**record, "response": {"status_code": status, "request_id": f"req_{number}",
                                                      "body": payload}, "error": None})
                batch["request_counts"]["failed"] += 1
        for kind, records in (("output_file_id", outputs), ("error_file_id", errors)):
            if records:
                file_id = f"file-{len(self.files) + 1:06d}"
                self.files[file_id] = {"content": "".join(json.dumps(r) + "\n" for r in records).encode(),
                                       "purpose": "batch_output"}
                batch[kind] = file_id
        batch["status"] = "completed"
        batch["completed_at"] = int(time.time())

    @staticmethod
    def _logprob(token: str, score: int) -> dict:
        if token.strip().isdigit():
            # Most mass on the score, some on its neighbours: expected score stays near it.
            weights = {d: math.exp(-2.0 * abs(d - score)) for d in range(1, 6)}
            total = sum(weights.values())
            top = [{"token": str(d), "logprob": math.log(w / total), "bytes": None} for d, w in weights.items()]
            top.sort(key=lambda t: -t["logprob"])
            return {"token": token, "logprob": math.log(weights[int(token.strip())] / total), "bytes": None,
                    "top_logprobs": top}
        return {"token": token, "logprob": -0.01, "bytes": None, "top_logprobs": []}


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """Just enough multipart/form-data for the SDK's file upload: field name -> raw value."""
    boundary = content_type.split("boundary=", 1)[-1].strip('"').encode()
    fields = {}
    for part in body.split(b"--" + boundary):
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]+)"', head)
        if name:
            fields[name.group(1).decode()] = value.removesuffix(b"\r\n")
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    for field, value in asdict(FakeConfig()).items():
        flag = "--" + field.replace("_", "-").removesuffix("-s")
        if isinstance(value, bool):
            parser.add_argument(flag, dest=field, action=argparse.BooleanOptionalAction, default=value)
        else:
            parser.add_argument(flag, dest=field, type=type(value), default=value)
    args = parser.parse_args()
    config = FakeConfig(**{k: getattr(args, k) for k in asdict(FakeConfig())})
    fake = FakeLLM(config, args.host, args.port)

    async def run() -> None:
        await fake.serve()
        print(f"fake LLM at {fake.url}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
