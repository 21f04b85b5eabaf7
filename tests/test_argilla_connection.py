"""Reaching Argilla: the SDK behind the package's own name, and failures that say what to do."""

import httpx
import pytest

from backtrans.argilla import ArgillaConfig, ArgillaError, pull, push
from backtrans.argilla.connection import failure
from backtrans.cli import main
from backtrans.templates import TemplateError, load_template
from tests.conftest import argilla_sdk, scored_rows, write_jsonl

CONFIG = ArgillaConfig("http://127.0.0.1:9", "argilla.apikey.SECRET0123456789")


def test_the_package_name_does_not_hide_the_sdk():
    # `import argilla as rg` inside backtrans/argilla/ is absolute: it reaches the SDK, not the package itself.
    import argilla as rg

    import backtrans.argilla
    from backtrans.argilla import columns

    assert rg is not backtrans.argilla and rg.__name__ == "argilla"
    record = columns.to_record({"instruction": "q", "generation": "a", "score": 4}, load_template("humpback"), 4)
    assert isinstance(record, rg.Record)


def _server_error(status: int):
    from argilla._exceptions._api import ArgillaAPIError

    return ArgillaAPIError(f"the server said {status}", status_code=status)


@pytest.mark.parametrize(("error", "hint", "retry"), [
    (httpx.ConnectError("[Errno 111] Connection refused"), "the server did not answer", True),
    (httpx.ReadTimeout("timed out"), "the server did not answer", True),
    (_server_error(500), "the server said 500", True),
    (_server_error(503), "the server said 503", True),
    (_server_error(401), "the API key was refused", False),
    (_server_error(422), "the server said 422", False),
    (TemplateError("template 'mine' uses a variable the row does not have: 'id' is undefined"), "'id' is undefined",
     False),
    (ValueError("a bug on our side"), "a bug on our side", False),
])
def test_failures_say_retry_later_only_where_a_retry_can_help(error, hint, retry):
    message = str(failure(CONFIG, "preparing dataset d", error))
    assert message.startswith("preparing dataset d at Argilla http://127.0.0.1:9 failed: ")
    assert hint in message and "Local results are intact" in message
    assert ("retry later" in message) is retry


def test_a_failure_never_shows_the_key():
    message = str(failure(CONFIG, "pushing", RuntimeError(f"echo of {CONFIG.api_key}")))
    assert "SECRET0123456789" not in message


def test_dead_url_is_a_clean_error_without_the_key():
    with pytest.raises(ArgillaError) as info:
        push(scored_rows(3), "x", CONFIG)
    message = str(info.value)
    assert "http://127.0.0.1:9" in message and "SECRET0123456789" not in message
    assert "the server did not answer" in message and "retry later" in message


def test_from_env_names_what_to_set(monkeypatch):
    monkeypatch.delenv("ARGILLA_API_URL", raising=False)
    with pytest.raises(ArgillaError, match="set ARGILLA_API_URL and ARGILLA_API_KEY"):
        ArgillaConfig.from_env()
    config = ArgillaConfig.from_env("http://h:6900/", "k" * 10)
    assert (config.url, config.workspace) == ("http://h:6900", "backtrans") and "k" * 10 not in repr(config)


def test_cli_reports_a_dead_argilla_with_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ARGILLA_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("ARGILLA_API_KEY", "argilla.apikey.TOPSECRET123456")
    scored = write_jsonl(tmp_path / "s.jsonl", scored_rows(2))
    assert main(["argilla", "push", str(scored), "--dataset", "d"]) == 2
    err = capsys.readouterr().err
    assert "http://127.0.0.1:9" in err and "TOPSECRET" not in err


# --- against the real server -------------------------------------------------------------------------


def test_a_refused_key_says_so_and_not_to_retry(argilla_stack):
    with pytest.raises(ArgillaError) as info:
        push(scored_rows(2), "refused", ArgillaConfig(argilla_stack.url, "argilla.apikey.WRONGKEY0123456"))
    message = str(info.value)
    assert "the API key was refused" in message and "retry" not in message and "WRONGKEY" not in message


def test_first_push_prints_no_sdk_lookup_warnings(argilla_stack, recwarn):
    config = ArgillaConfig(argilla_stack.url, argilla_stack.api_key, "fresh-workspace")
    client = argilla_sdk(argilla_stack)
    with pytest.warns(UserWarning, match="not found"):  # what the SDK says on its own
        client.datasets(name="never-made", workspace="backtrans")
    recwarn.clear()
    push(scored_rows(2, "quiet"), "quiet-set", config)
    assert not [w for w in recwarn if "not found" in str(w.message)]
    with pytest.raises(ArgillaError, match="no dataset"):
        pull("never-made", config)
    assert not [w for w in recwarn if "not found" in str(w.message)]
