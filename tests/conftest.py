"""Shared fixtures: a fake OpenAI-compatible server and the real local llama.cpp server, once per session."""

from __future__ import annotations

import http.server
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
os.environ["BACKTRANS_HOME"] = tempfile.mkdtemp(prefix="backtrans-test-")  # never a developer's own state
for leaked in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "BACKTRANS_MODEL", "BACKTRANS_TEMPLATE", "ARGILLA_API_URL",
               "ARGILLA_API_KEY", "ARGILLA_WORKSPACE", "BACKTRANS_LOCAL_MODEL", "BACKTRANS_STORE",
               "BACKTRANS_DATA_DIR"):
    os.environ.pop(leaked, None)

from backtrans import local  # noqa: E402
from tests.fakellm import FakeConfig, FakeLLM  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# One rule marks what a test starts, from the fixtures it uses: `make test-fast` leaves these out.
SERVER_MARKS = {"argilla_stack": "argilla", "argilla_config": "argilla", "local_llm": "llama", "page": "browser",
                "browser": "browser", "fake_process": "slow"}


def pytest_collection_modifyitems(items: list) -> None:
    """Marks from fixtures, and browser tests last: Playwright's sync API keeps an event loop running in the main
    thread until the session ends, and `asyncio.run` (the CLI, the runner) refuses to start inside it."""
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in SERVER_MARKS:
                item.add_marker(SERVER_MARKS[fixture])
                item.add_marker("slow")
    playwright = {"page", "browser", "context"}
    items.sort(key=lambda item: bool(playwright & set(getattr(item, "fixturenames", ()))))


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


@pytest.fixture(scope="session")
def argilla_stack(tmp_path_factory) -> local.ArgillaStack:
    """A real argilla-server (osmem, redis, worker), started once for the whole session."""
    stack = local.start_argilla(home=tmp_path_factory.mktemp("argilla"))
    yield stack
    stack.stop()


@pytest.fixture
def argilla_config(argilla_stack):
    from backtrans.argilla import ArgillaConfig

    return ArgillaConfig(argilla_stack.url, argilla_stack.api_key)


class Annotator:
    """A reviewer who works through the REST path the web UI uses, with their own login."""

    def __init__(self, stack: local.ArgillaStack, username: str, workspace: str = "backtrans"):
        import argilla as rg
        import requests

        owner = rg.Argilla(api_url=stack.url, api_key=stack.api_key)
        user = owner.users(username) or rg.User(username=username, password="annotate-123", role="annotator",
                                                client=owner).create()
        user.add_to_workspace(owner.workspaces(workspace))
        self.url = stack.url
        self.session = requests.Session()
        token = self.session.post(f"{stack.url}/api/v1/token",
                                  data={"username": username, "password": "annotate-123"}).json()["access_token"]
        self.session.headers["Authorization"] = f"Bearer {token}"
        self.user_id = self.session.get(f"{stack.url}/api/v1/me").json()["id"]

    def respond(self, record_server_id, keep: str | None, score: int | None = None, note: str | None = None,
                status: str = "submitted") -> None:
        values = {}
        if keep is not None:
            values["keep"] = {"value": keep}
        if score is not None:
            values["score"] = {"value": score}
        if note:
            values["note"] = {"value": note}
        reply = self.session.post(f"{self.url}/api/v1/records/{record_server_id}/responses",
                                  json={"values": values, "status": status})
        assert reply.status_code == 201, reply.text


def scored_rows(n: int, prefix: str = "q") -> list[dict]:
    """Judged pairs as a scored file holds them: scores 1..5 in turn, an expected score on every other row."""
    return [
        {"instruction": f"{prefix} {i}?", "generation": f"answer {i}.", "score": i % 5 + 1, "reason": f"reason {i}",
         "model_name": "judge-m", "expected_score": round(i % 5 + 1 - 0.25, 2) if i % 2 else None, "status": "ok"}
        for i in range(n)
    ]


def argilla_sdk(stack: local.ArgillaStack):
    """The SDK's own client, to check what the server holds without our code in between."""
    import argilla as rg

    return rg.Argilla(api_url=stack.url, api_key=stack.api_key)


def server_ids(stack: local.ArgillaStack, dataset: str) -> dict[str, object]:
    """Record id (ours) -> the server's id, which the web UI's REST path (`Annotator.respond`) takes."""
    records = argilla_sdk(stack).datasets(name=dataset, workspace="backtrans").records(with_responses=False)
    return {str(r.id): r._server_id for r in records}


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """Debian's Chromium: Playwright cannot download its own browser here. No network beyond loopback."""
    import shutil

    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("Chromium is missing: `make browser` installs Debian's chromium")
    return {
        **browser_type_launch_args,
        "executable_path": executable,
        "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"],
    }


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1000}, "accept_downloads": True}


class AppServer:
    """app.py as a user runs it, in its own process."""

    def __init__(self, data_dir: Path, env: dict[str, str], root: Path = ROOT):
        """`root`: the checkout whose app.py runs (a benchmark compares an older commit's)."""
        self.port = local.free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        full_env = {**os.environ, "GRADIO_SERVER_PORT": str(self.port), "BACKTRANS_DATA_DIR": str(data_dir),
                    "PYTHONPATH": str(root), **env}
        self.log = open(data_dir / "app.log", "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=full_env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        local.wait_http(self.url, 120, pid=self.process.pid)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.log.close()


def results_in(store: Path) -> int:
    """Finished rows in a run store, read the way another process would (the run may be in flight)."""
    import sqlite3

    try:
        with sqlite3.connect(store) as db:
            return db.execute("SELECT COUNT(*) FROM results").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


# The judge endpoint's parameters by name, as a gradio_client caller passes them.
JUDGE = {"template_name": "humpback", "custom_text": "", "backend": "server", "model": "m", "base_url": "",
         "api_key": "", "concurrency": 8, "threshold": 4, "min_score": 1, "max_score": 5,
         "statuses": ["ok", "parse_error", "llm_error", "pending"], "text": "", "sort": "input order"}


def client_for(url: str, **kwargs):
    from gradio_client import Client

    return Client(url, verbose=False, **kwargs)


def upload(client, path: Path) -> tuple:
    """The way a file reaches the app: an upload, then a load with the mapping by name."""
    from gradio_client import handle_file

    client.predict(file=handle_file(str(path)), api_name="/inspect_upload")
    return client.predict(instruction_column="instruction", generation_column="generation", api_name="/load_upload")


class QuietHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:  # a test's output is its asserts, not an access log
        pass


class LoopbackServer:
    """A stdlib HTTP server on loopback, in a thread of its own: for the small fakes a test needs (a Hub API, an
    internal service)."""

    def __init__(self, handler: type) -> None:
        import threading

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
