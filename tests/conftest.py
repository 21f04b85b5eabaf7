"""Shared fixtures: a fake OpenAI-compatible server and the real local llama.cpp server, once per session."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("BACKTRANS_HOME", tempfile.mkdtemp(prefix="backtrans-test-"))
for leaked in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "BACKTRANS_MODEL", "BACKTRANS_TEMPLATE"):
    os.environ.pop(leaked, None)

from backtrans import local  # noqa: E402
from tests.fakellm import FakeConfig, FakeLLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def fake_server() -> FakeLLM:
    server = FakeLLM(FakeConfig()).start()
    yield server
    server.stop()


@pytest.fixture
def fake_llm(fake_server: FakeLLM) -> FakeLLM:
    """The session's fake server, with counters and faults reset for this test."""
    fake_server.config = FakeConfig()
    fake_server.rng.seed(0)
    fake_server.reset()
    return fake_server


class FakeProcess:
    """The fake server in its own process, for tests that kill or outlive the test's own process."""

    def __init__(self, *args: str):
        self.port = local.free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.fakellm", "--port", str(self.port), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        local.wait_http(f"http://127.0.0.1:{self.port}/health", 15, pid=self.process.pid)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stats(self) -> dict:
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stats") as response:
            return json.load(response)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture
def fake_process():
    started: list[FakeProcess] = []

    def start(*args: str) -> FakeProcess:
        started.append(FakeProcess(*args))
        return started[-1]

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="session")
def local_llm() -> local.LLMServer:
    """The real llama.cpp server on the smallest packaged model."""
    server = local.start_llm(local.TEST_MODEL, parallel=1)
    yield server
    server.stop()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path
