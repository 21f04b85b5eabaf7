"""Reaching Argilla: the SDK behind the package's own name, and failures that say what to do."""

import pytest

from backtrans.argilla import ArgillaConfig, ArgillaError, pull, push
from backtrans.argilla.connection import failure
from backtrans.cli import main
from backtrans.templates import load_template
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


def test_a_failure_never_shows_the_key():
    message = str(failure(CONFIG, "pushing", RuntimeError(f"echo of {CONFIG.api_key}")))
    assert "SECRET0123456789" not in message


def test_dead_url_is_a_clean_error_without_the_key():
    with pytest.raises(ArgillaError) as info:
        push(scored_rows(3), "x", CONFIG)
    message = str(info.value)
    assert "http://127.0.0.1:9" in message and "SECRET0123456789" not in message
    assert "the server did not answer" in message and "Local results are intact" in message


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
