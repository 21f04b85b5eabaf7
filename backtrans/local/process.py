"""Process helpers for the servers: a free port, liveness, stopping, and the one wait loop they all use.

Every wait (a URL answering, a port listening, a process exiting) goes through `wait_until`, so each one
fails the same way: early if the process it waits on died, and naming what it waited for on timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import urllib.request
from collections.abc import Callable

from backtrans.local.base import LocalError


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int) -> bool:
    """True while `pid` runs (a child of ours that exited is reaped here, so it reads as gone)."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def wait_until(check: Callable[[], object], timeout_s: float, what: str, pid: int | None = None,
               interval_s: float = 0.1, retry_on: tuple[type[Exception], ...] = ()) -> None:
    """Polls `check` every `interval_s` until it returns something true.

    Raises LocalError at once if `pid` is given and that process exits, and after `timeout_s` otherwise; both
    name `what` ("http://127.0.0.1:8080/health to answer"). An exception of a `retry_on` type from `check`
    counts as "not yet"; the last one is quoted in the timeout error.
    """
    deadline = time.monotonic() + timeout_s
    last = ""
    while True:
        if pid is not None and not alive(pid):
            raise LocalError(f"pid {pid} exited while waiting for {what}")
        try:
            if check():
                return
        except retry_on as exc:
            last = f" (last: {exc})"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalError(f"timed out after {timeout_s:g}s waiting for {what}{last}")
        time.sleep(min(interval_s, remaining))


def wait_exit(pid: int, timeout_s: float) -> bool:
    """Waits for `pid` to exit; False if it still runs after `timeout_s`."""
    try:
        wait_until(lambda: not alive(pid), timeout_s, f"pid {pid} to exit")
    except LocalError:
        return False
    return True


def wait_http(url: str, timeout_s: float, pid: int | None = None, headers: dict | None = None) -> None:
    """Waits for `url` to answer 200; refused, reset or 503 (a server still loading) mean not yet."""

    def answers() -> bool:
        request = urllib.request.Request(url, headers=headers or {})
        with urllib.request.urlopen(request, timeout=2) as response:
            return response.status == 200

    wait_until(answers, timeout_s, f"{url} to answer", pid=pid, interval_s=0.25, retry_on=(Exception,))


def wait_port(port: int, timeout_s: float, pid: int) -> None:
    """Waits for something to listen on 127.0.0.1:`port` (a server that speaks no HTTP, like redis)."""

    def listens() -> bool:
        with contextlib.closing(socket.socket()) as sock:
            return sock.connect_ex(("127.0.0.1", port)) == 0

    wait_until(listens, timeout_s, f"a listener on port {port}", pid=pid)


def stop_pid(pid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM to the process group that `pid` leads (the servers start their own), SIGKILL if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    wait_exit(pid, timeout_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
