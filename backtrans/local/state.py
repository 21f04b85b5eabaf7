"""What runs, in one file (servers.json in the state folder), so the app and the CLI can come and go.

Every service has one entry of one shape: `{"pids": {name: pid, ...}, ...}` plus its own fields (the LLM's
`base_url`, Argilla's `url` and credentials, the app's `argv` and `url`). `down` stops them by PID. Entries
written before that shape (a single `"pid"`) are converted as they are read, so `make down` after an upgrade
still stops what an older version started.
"""

from __future__ import annotations

import contextlib
import json
import os
import runpy
import signal
import sys
import threading
from pathlib import Path

from backtrans.local.argilla_stack import ARGILLA_OWNER, start_argilla
from backtrans.local.base import ROOT, LocalError, state_dir
from backtrans.local.llm_server import start_llm
from backtrans.local.models import DEFAULT_MODEL, MODELS
from backtrans.local.process import alive, stop_pid, wait_exit

APP_SCRIPT = ROOT / "app.py"
# The name an old single-"pid" entry's process gets in "pids"; the same names the current writers use.
_OLD_PID_NAMES = {"llm": "server", "app": "app"}


def _state_file() -> Path:
    return state_dir() / "servers.json"


def _upgrade(name: str, info: dict) -> dict:
    """An entry in the current shape: an old `{"pid": N, ...}` becomes `{"pids": {<name>: N}, ...}`."""
    if "pid" not in info or "pids" in info:
        return info
    rest = {key: value for key, value in info.items() if key != "pid"}
    return {"pids": {_OLD_PID_NAMES.get(name, "main"): info["pid"]}, **rest}


def read_state() -> dict:
    try:
        state = json.loads(_state_file().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return {name: _upgrade(name, info) if isinstance(info, dict) else info for name, info in state.items()}


def _write_state(state: dict) -> None:
    path = _state_file()
    path.write_text(json.dumps(state, indent=2))
    path.chmod(0o600)  # it holds the local Argilla's key and password


def _running(info: dict | None) -> bool:
    return bool(info) and all(alive(pid) for pid in info["pids"].values())


def external_argilla() -> bool:
    """A remote Argilla is configured: use it and start none."""
    return bool(os.environ.get("ARGILLA_API_URL") and os.environ.get("ARGILLA_API_KEY"))


def up(model: str = DEFAULT_MODEL, argilla: bool = True) -> dict:
    """Starts what is not running yet; running servers are left as they are."""
    state = read_state()
    llm = state.get("llm")
    if not (_running(llm) and llm.get("model") == model):
        if llm:
            for pid in llm["pids"].values():
                stop_pid(pid)
        server = start_llm(model)
        state["llm"] = {"pids": server.pids, "port": server.port, "model": model, "base_url": server.base_url}
        _write_state(state)
    if argilla and not external_argilla() and not _running(state.get("argilla")):
        for pid in state["argilla"]["pids"].values() if state.get("argilla") else ():
            stop_pid(pid)
        stack = start_argilla()
        state["argilla"] = {"pids": stack.pids, "url": stack.url, "api_key": stack.api_key,
                            "username": ARGILLA_OWNER, "password": stack.password}
        _write_state(state)
    return state


# --- the app (make run) ------------------------------------------------------------------------------
# `make run` starts the app through `run_app`, which records the app's PID and command line here too, so
# `down` stops the app as well (and only the app: a PID whose command line differs is left alone).

# What the app's terminal shows when `down` stops it: the SIGTERM it sends is the normal way out, so the app exits
# 0 and make, which names a child that died of a signal ("make: *** [Makefile:45: run] Terminated"), stays quiet.
APP_STOPPED = "backtrans: the app was stopped (make down)"
# Time to unwind after the SIGTERM before the process ends itself anyway (`stop_app` waits 10 s, then kills).
_STOP_GRACE_S = 5.0


class _AppStopped(BaseException):
    """Raised in the main thread by the SIGTERM handler; a BaseException, so no `except Exception` holds it."""


def _cmdline(pid: int) -> list[str] | None:
    """The process's argv, or None where it cannot be read (gone, or no /proc)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").split("\0")[:-1]


def _app_pid(info: dict) -> int:
    return info["pids"]["app"]


def _is_our_app(info: dict | None) -> bool:
    # A PID alone is not enough: after the app exits, the system may give its PID to another process.
    return bool(info) and alive(_app_pid(info)) and _cmdline(_app_pid(info)) == info.get("argv")


def record_app(pid: int, argv: list[str], url: str) -> None:
    state = read_state()
    state["app"] = {"pids": {"app": pid}, "argv": argv, "url": url}
    _write_state(state)


def _on_sigterm(signum: int, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once is enough: a second one must not interrupt the unwinding
    # Past the grace time (a thread that does not let the interpreter finish), end without waiting for it.
    deadline = threading.Timer(_STOP_GRACE_S, os._exit, args=(0,))
    deadline.daemon = True  # it must not be the thread that the interpreter waits for
    deadline.start()
    raise _AppStopped


def run_app(script: Path = APP_SCRIPT, args: tuple[str, ...] = ()) -> int:
    """Runs the app in this process, recorded so that `down` stops it; `down`'s SIGTERM ends it with the one line
    APP_STOPPED and exit status 0.

    In this process rather than exec'd: an exec would drop the SIGTERM handler, and the recorded PID and command
    line are this process's own either way."""
    info = read_state().get("app")
    if _is_our_app(info):
        raise LocalError(f"the app is already running (pid {_app_pid(info)}) at {info['url']}; "
                         "stop it first with `make down`")
    argv = _cmdline(os.getpid()) or list(sys.orig_argv)
    record_app(os.getpid(), argv, f"http://127.0.0.1:{os.environ.get('GRADIO_SERVER_PORT', '7860')}")
    signal.signal(signal.SIGTERM, _on_sigterm)
    sys.argv = [str(script), *args]
    sys.path.insert(0, str(script.parent))  # as `python app.py` would: the script's folder first
    try:
        runpy.run_path(str(script), run_name="__main__")
    except _AppStopped:
        print(APP_STOPPED, flush=True)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    return 0


def stop_app(info: dict, timeout_s: float = 10.0) -> bool:
    """Stops the recorded app if that PID is still the app; True if it was running."""
    if not _is_our_app(info):
        return False
    pid = _app_pid(info)
    # The app shares make's process group (unlike the servers), so signal the process, not its group.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    wait_exit(pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        if _is_our_app(info):
            os.kill(pid, signal.SIGKILL)
    return True


# --- down / status / env ---------------------------------------------------------------------------


def down() -> list[str]:
    stopped = []
    state = read_state()
    app = state.pop("app", None)
    if app and stop_app(app):  # first: it is the servers' client
        stopped.append("app")
    for name, info in state.items():
        for pid in reversed(list(info["pids"].values())):
            if alive(pid):
                stop_pid(pid)
        stopped.append(name)
    _write_state({})
    return stopped


def status() -> dict[str, str]:
    lines = {}
    for name, info in read_state().items():
        if name == "app":
            lines[name] = f"{'running' if _is_our_app(info) else 'stopped'} at {info['url']} (pid {_app_pid(info)})"
            continue
        where = info.get("base_url") or info.get("url", "")
        pids = list(info["pids"].values())
        lines[name] = f"{'running' if _running(info) else 'stopped'} at {where} (pids {pids})"
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
            "export BACKTRANS_HEDGE=0",  # one local server: a duplicate of a slow call only queues behind it
        ]
    argilla = state.get("argilla")
    if _running(argilla) and not external_argilla():
        lines += [f"export ARGILLA_API_URL={argilla['url']}", f"export ARGILLA_API_KEY={argilla['api_key']}"]
    return lines


def argilla_login() -> dict | None:
    """Where to sign in to the local Argilla, when it is the one this process reviews in (ARGILLA_API_URL):
    its URL, user name and password. None for any other Argilla: its login is its owner's to give."""
    info = read_state().get("argilla")
    url = os.environ.get("ARGILLA_API_URL", "").rstrip("/")
    if not info or not _running(info) or str(info.get("url", "")).rstrip("/") != url:
        return None
    return {"url": info["url"], "username": info.get("username"), "password": info.get("password")}
