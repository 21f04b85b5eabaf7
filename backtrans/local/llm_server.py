"""The local LLM: llama.cpp's OpenAI-compatible server (xllamacpp) in a process of its own.

`start_llm` runs `python -m backtrans.local serve-llm ...` (see __main__.py), so the server outlives the
process that started it and is stopped by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backtrans.local.base import ROOT, LocalError, state_dir
from backtrans.local.models import DEFAULT_MODEL, MODELS
from backtrans.local.process import free_port, stop_pid, wait_http


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

    @property
    def pids(self) -> dict[str, int]:
        """Its processes by name, as the state file records every service's."""
        return {"server": self.pid}

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
