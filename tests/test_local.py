"""The embedded default against the real llama.cpp server and the smallest packaged model."""

import os
import subprocess
import sys
import time
from pathlib import Path

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


@pytest.mark.slow  # starts a real llama.cpp server
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
    assert not local.alive(first["llm"]["pids"]["server"])


def local_state(home) -> dict:
    import json

    return json.loads((home / "servers.json").read_text())


def _local_cli(home, *args: str) -> str:
    env = {**os.environ, "BACKTRANS_HOME": str(home), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "backtrans", "local", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow  # starts the real app
def test_local_down_stops_the_app_that_make_run_recorded(tmp_path):
    # What `make run` does, with a stand-in for app.py: run_app records the PID, then runs the script.
    script = tmp_path / "stand_in_app.py"
    script.write_text("import time\nprint('serving', flush=True)\ntime.sleep(120)\n")
    env = {**os.environ, "BACKTRANS_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-c", f"import sys; from pathlib import Path; from backtrans import local; "
                                  f"sys.exit(local.run_app(Path({str(script)!r})))"]
    app = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout.readline() == "serving\n"  # the script runs in the very process that was started
        recorded = local_state(tmp_path)["app"]
        assert recorded["pids"] == {"app": app.pid}
        assert recorded["argv"] == argv  # its command line, as /proc has it: what `down` checks before a signal
        assert "app: running at http://127.0.0.1:" in _local_cli(tmp_path, "status")

        # A second app would fight over the port: refused while the first runs.
        second = subprocess.run([sys.executable, "-m", "backtrans", "local", "app"], env=env, cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2 and f"already running (pid {app.pid})" in second.stderr

        assert "stopped app" in _local_cli(tmp_path, "down")
        assert app.wait(timeout=15) == 0  # SIGTERM ends it calmly
        assert app.stdout.read() == local.APP_STOPPED + "\n"
        assert "app" not in local_state(tmp_path)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()


@pytest.mark.slow  # starts the real app under make
def test_make_down_leaves_make_run_with_a_calm_line(fake_llm, tmp_path):
    # `make run`'s last step, under make itself: make prints "make: *** [...] Terminated" when the app dies of
    # the SIGTERM that `make down` sends, and nothing when the app exits 0.
    makefile = tmp_path / "Makefile"
    makefile.write_text(f"run:\n\texec {sys.executable} -m backtrans local app\n")
    port = local.free_port()
    env = {**os.environ, "BACKTRANS_HOME": str(tmp_path / "home"), "BACKTRANS_DATA_DIR": str(tmp_path / "data"),
           "PYTHONPATH": str(ROOT), "GRADIO_SERVER_PORT": str(port), "OPENAI_BASE_URL": fake_llm.url,
           "OPENAI_API_KEY": "local", "BACKTRANS_MODEL": "fake"}
    env.pop("ARGILLA_API_URL", None)
    run = subprocess.Popen(["make", "--no-print-directory", "-f", str(makefile), "run"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        local.wait_http(f"http://127.0.0.1:{port}/", 120, pid=run.pid)
        down = subprocess.run([sys.executable, "-m", "backtrans", "local", "down"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=60)
        assert down.returncode == 0 and "stopped app" in down.stdout, down.stderr
        output, _ = run.communicate(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, output
    assert output.rstrip().splitlines()[-1] == local.APP_STOPPED, output
    assert "Terminated" not in output and "make: ***" not in output and "Traceback" not in output, output


def test_local_down_leaves_a_process_that_only_shares_the_recorded_pid(tmp_path, monkeypatch):
    # The app exited and the system gave its PID to something else: its command line tells them apart.
    monkeypatch.setenv("BACKTRANS_HOME", str(tmp_path))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        local.record_app(other.pid, [sys.executable, str(local.APP_SCRIPT)], "http://127.0.0.1:7860")
        assert local.status()["app"].startswith("stopped")
        assert local.down() == []
        time.sleep(0.2)
        assert other.poll() is None  # still running
        assert local.read_state() == {}
    finally:
        other.kill()
        other.wait()


def test_wait_until_names_what_it_waited_for_on_timeout():
    started = time.monotonic()
    with pytest.raises(local.LocalError, match=r"timed out after 0.3s waiting for the moon to rise"):
        local.wait_until(lambda: False, 0.3, "the moon to rise", interval_s=0.05)
    assert 0.3 <= time.monotonic() - started < 2

    def not_yet() -> bool:
        raise ConnectionRefusedError("refused")

    with pytest.raises(local.LocalError, match=r"waiting for port 1 \(last: refused\)"):
        local.wait_until(not_yet, 0.2, "port 1", interval_s=0.05, retry_on=(OSError,))
    with pytest.raises(ConnectionRefusedError):  # an exception it was not told to retry is a bug: raised at once
        local.wait_until(not_yet, 30, "port 1")
    calls = iter([False, False, True])
    local.wait_until(lambda: next(calls), 5, "the third call", interval_s=0.01)


def test_wait_until_fails_fast_when_the_process_it_waits_on_dies():
    dead = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    started = time.monotonic()
    with pytest.raises(local.LocalError, match=rf"pid {dead.pid} exited while waiting for the server to answer"):
        local.wait_until(lambda: False, 60, "the server to answer", pid=dead.pid)
    with pytest.raises(local.LocalError, match=rf"pid {dead.pid} exited while waiting for http://127.0.0.1:1/"):
        local.wait_http("http://127.0.0.1:1/", 60, pid=dead.pid)
    assert time.monotonic() - started < 10  # not the 60 s timeout


def test_serve_llm_entry_point_still_runs_as_a_module():
    # start_llm runs `python -m backtrans.local serve-llm ...` for the server's own process.
    done = subprocess.run([sys.executable, "-m", "backtrans.local", "serve-llm", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout and "--parallel" in done.stdout


def test_a_state_file_of_the_old_shape_is_read_and_down_still_stops_it(tmp_path, monkeypatch):
    # Before one shape, the LLM and the app had `"pid": N`; a `make down` after an upgrade must still stop them.
    import json

    monkeypatch.setenv("BACKTRANS_HOME", str(tmp_path))
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    app_argv = [sys.executable, "-c", "import time; time.sleep(121)"]
    app = subprocess.Popen(app_argv)
    # Right after the fork, /proc shows the parent's argv until the child has exec'd.
    local.wait_until(lambda: Path(f"/proc/{app.pid}/cmdline").read_bytes().split(b"\0")[:-1]
                     == [a.encode() for a in app_argv], 30, "the app's exec", pid=app.pid)
    try:
        (tmp_path / "servers.json").write_text(json.dumps({
            "llm": {"pid": server.pid, "port": 1, "model": local.TEST_MODEL, "base_url": "http://127.0.0.1:1/v1"},
            "app": {"pid": app.pid, "argv": app_argv, "url": "http://127.0.0.1:7860"},
        }))
        state = local.read_state()
        assert state["llm"] == {"pids": {"server": server.pid}, "port": 1, "model": local.TEST_MODEL,
                                "base_url": "http://127.0.0.1:1/v1"}
        assert state["app"] == {"pids": {"app": app.pid}, "argv": app_argv, "url": "http://127.0.0.1:7860"}
        lines = local.status()
        assert lines["llm"] == f"running at http://127.0.0.1:1/v1 (pids [{server.pid}])"
        assert lines["app"] == f"running at http://127.0.0.1:7860 (pid {app.pid})"
        assert "export OPENAI_BASE_URL=http://127.0.0.1:1/v1" in local.env_lines()
        assert "export BACKTRANS_HEDGE=0" in local.env_lines()  # one local server: no duplicates

        assert local.down() == ["app", "llm"]
        server.wait(timeout=15)  # `alive`, in this process, may have reaped them: their exit codes read 0
        app.wait(timeout=15)
        assert local.read_state() == {}
    finally:
        for process in (server, app):
            if process.poll() is None:
                process.kill()
                process.wait()
