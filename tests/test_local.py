"""The embedded default against the real llama.cpp server and the smallest packaged model."""

import os
import subprocess
import sys

import pytest

from backtrans import local
from backtrans.judge import JudgeTask
from backtrans.llm import LLMSettings
from backtrans.runner import run_one
from backtrans.templates import load_template
from tests.conftest import ROOT


def _judge(server, template_name: str, row: dict) -> dict:
    settings = LLMSettings(base_url=server.base_url, model=server.model, timeout_s=120)
    return run_one(JudgeTask(load_template(template_name), settings), row)


def test_real_model_loads_answers_and_a_score_is_produced(local_llm):
    row = {"instruction": "What is the capital of France?", "generation": "The capital of France is Paris."}
    result = _judge(local_llm, "humpback-short", row)
    assert result["raw_output"].startswith("Score: ") and len(result["raw_output"]) > len("Score: ")
    assert result["status"] in ("ok", "parse_error")
    assert 1.0 <= result["expected_score"] <= 5.0  # digit probabilities always give a score
    assert result["model_name"] == local.TEST_MODEL


def test_paper_template_runs_on_the_real_model(local_llm):
    row = {"instruction": "Name a primary colour.", "generation": "Red is a primary colour."}
    result = _judge(local_llm, "humpback", row)
    assert result["raw_output"] and result["status"] in ("ok", "parse_error")
    if result["status"] == "parse_error":
        assert result["error"]  # the tiny model often writes no score: flagged, never lost


def test_model_file_is_checked_against_its_pinned_sha256(tmp_path, monkeypatch):
    spec = local.MODELS[local.TEST_MODEL]
    assert spec.path().stat().st_size > 50_000_000
    monkeypatch.setenv("BACKTRANS_HOME", str(tmp_path))
    altered = local.ModelSpec(**{**spec.__dict__, "sha256": "0" * 64})
    with pytest.raises(local.LocalError, match="does not match the pinned"):
        altered.path()


def test_local_up_env_status_down(tmp_path):
    env = {**os.environ, "BACKTRANS_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}

    def cli(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "backtrans", "local", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=240)
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        assert "LLM:     http://127.0.0.1:" in cli("up", "--model", local.TEST_MODEL, "--no-argilla")
        first = local_state(tmp_path)
        cli("up", "--model", local.TEST_MODEL, "--no-argilla")  # idempotent: the running server is kept
        assert local_state(tmp_path) == first
        exports = cli("env")
        assert f"export OPENAI_BASE_URL=http://127.0.0.1:{first['llm']['port']}/v1" in exports
        assert "export BACKTRANS_MODEL=" in exports
        assert "running" in cli("status")
    finally:
        assert "stopped llm" in cli("down")
    assert "no local servers" in cli("status")
    assert not local._alive(first["llm"]["pid"])


def local_state(home) -> dict:
    import json

    return json.loads((home / "servers.json").read_text())
