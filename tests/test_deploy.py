import yaml

from backtrans import deploy
from backtrans.cli import main
from tests.conftest import ROOT


def test_readme_front_matter_is_a_valid_gradio_space():
    text = (ROOT / "README.md").read_text()
    front = yaml.safe_load(text.split("---")[1])
    assert front["sdk"] == "gradio" and front["app_file"] == "app.py"
    pinned = next(line for line in (ROOT / "requirements.txt").read_text().splitlines()
                  if line.startswith(("gradio==", "gradio[")))
    assert front["sdk_version"] == pinned.split("==")[1]
    assert front["hf_oauth"] is True and "inference-api" in front["hf_oauth_scopes"]  # visitors pay with their token


def test_dry_run_plan_names_secrets_but_never_their_values(capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-deploy-SECRET-0123456789")
    monkeypatch.setenv("BACKTRANS_MODEL", "gpt-4o-mini")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["deploy", "--space", "me/backtrans", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "https://huggingface.co/spaces/me/backtrans" in out
    assert "secret   OPENAI_API_KEY: from the environment" in out
    assert "secret   HF_TOKEN: NOT SET" in out and "variable BACKTRANS_MODEL=gpt-4o-mini" in out
    assert "sk-deploy-SECRET" not in out and "dry run" in out


def test_plan_uploads_the_app_and_not_local_state():
    plan = deploy.plan("me/space", env={"OPENAI_API_KEY": "x", "BACKTRANS_MODEL": "m"})
    assert {"app.py", "README.md", "requirements.txt", "prompts/humpback.jinja2", "backtrans/judge.py"} <= set(
        plan.files)
    assert not any(f.startswith((".venv", ".backtrans", "tests/")) or "__pycache__" in f for f in plan.files)
    assert plan.missing_required == []
    assert set(deploy.plan("me/space", env={}).missing_required) == {"OPENAI_API_KEY", "BACKTRANS_MODEL"}


def test_deploy_without_required_settings_or_token_is_a_clear_error(capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("BACKTRANS_MODEL", raising=False)
    assert main(["deploy", "--space", "me/backtrans"]) == 2
    assert "set OPENAI_API_KEY, BACKTRANS_MODEL" in capsys.readouterr().err
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    monkeypatch.setenv("BACKTRANS_MODEL", "m")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert main(["deploy", "--space", "me/backtrans"]) == 2
    assert "HF_TOKEN" in capsys.readouterr().err
    assert main(["deploy", "--space", "not-a-space-id", "--dry-run"]) == 2
