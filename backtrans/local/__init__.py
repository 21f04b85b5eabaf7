"""The embedded default: a local llama.cpp server (xllamacpp) on a GGUF model shipped in a PyPI wheel, and a local
Argilla, each run as their own processes so the app and the CLI can come and go.

    models         the model registry: which wheels hold which GGUF, its sha256, its judge template
    process        free ports, liveness, stopping, and `wait_until`, the one wait loop
    llm_server     the llama.cpp server (`python -m backtrans.local serve-llm`, see __main__.py)
    argilla_stack  osmem, redis, argilla-server and its worker, from the Argilla venv
    state          servers.json in the state folder (BACKTRANS_HOME, default ./.backtrans): up, down, status,
                   env, and the app that `make run` records there
"""

from backtrans.local.argilla_stack import ARGILLA_OWNER, ARGILLA_VENV, ArgillaStack, start_argilla
from backtrans.local.base import ROOT, LocalError, state_dir
from backtrans.local.llm_server import LLMServer, serve_llm, start_llm
from backtrans.local.models import DEFAULT_MODEL, MODELS, TEST_MODEL, ModelSpec
from backtrans.local.process import alive, free_port, stop_pid, wait_exit, wait_http, wait_port, wait_until
from backtrans.local.state import (
    APP_SCRIPT,
    APP_STOPPED,
    argilla_login,
    down,
    env_lines,
    external_argilla,
    read_state,
    record_app,
    run_app,
    status,
    stop_app,
    up,
)

__all__ = [
    "APP_SCRIPT", "APP_STOPPED", "ARGILLA_OWNER", "ARGILLA_VENV", "DEFAULT_MODEL", "MODELS", "ROOT", "TEST_MODEL",
    "ArgillaStack", "LLMServer", "LocalError", "ModelSpec", "alive", "argilla_login", "down", "env_lines",
    "external_argilla", "free_port", "read_state", "record_app", "run_app", "serve_llm", "start_argilla", "start_llm",
    "state_dir", "status", "stop_app", "stop_pid", "up", "wait_exit", "wait_http", "wait_port", "wait_until",
]
