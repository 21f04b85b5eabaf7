"""The project as an installed package: `pip install .` gives a `backtrans` command that finds its bundled
templates as package data, away from the source tree."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from tests.conftest import write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_is_listed_for_the_build():
    # The build lists its packages by hand (prompts/ is mapped in), so a new subpackage must be added there.
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "backtrans").rglob("__init__.py")}
    assert on_disk <= listed
    assert "backtrans.prompts" in listed


@pytest.mark.slow
def test_pip_install_gives_a_working_backtrans_score(fake_llm, tmp_path):
    # A copy of what the build reads, so the build leaves nothing (build/, *.egg-info) in the working tree.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("backtrans", "prompts"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Dependencies come from the test's own environment (no network); the fresh site comes first, so
    # `backtrans` itself can only be the installed copy.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-build-isolation", str(src)], check=True, cwd=tmp_path)

    installed = site / "backtrans" / "prompts"
    assert {p.name for p in installed.glob("*.jinja2")} == {p.name for p in (ROOT / "prompts").glob("*.jinja2")}
    assert (site / "backtrans" / "data" / "seed_examples.jsonl").is_file()
    where = subprocess.run([str(python), "-c", "import backtrans.templates as t; print(t.PROMPTS_DIR)"],
                           check=True, capture_output=True, text=True, cwd=tmp_path).stdout.strip()
    assert Path(where) == installed

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"instruction": f"q{i}", "generation": f"a{i}"} for i in range(3)])
    out = tmp_path / "scored.jsonl"
    run = subprocess.run([str(venv / "bin" / "backtrans"), "score", str(pairs), "-o", str(out), "--template",
                          "humpback-short", "--base-url", fake_llm.url, "--model", "fake", "--store",
                          str(tmp_path / "s.sqlite"), "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["instruction"] for row in rows] == ["q0", "q1", "q2"]
    assert all(row["status"] == "ok" and 1 <= row["score"] <= 5 for row in rows)


@pytest.mark.slow  # three interpreters start
def test_the_venv_runs_backtrans_from_any_folder(tmp_path):
    # `make install` installs the package editable: the venv's `backtrans` command and `python -m backtrans`
    # work in any folder, not only in the repository root, and both run the code of the checkout that holds
    # the venv (<checkout>/.venv), so an edit needs no reinstall.
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    command = Path(sys.executable).parent / "backtrans"
    assert command.is_file(), f"{command} is missing: the venv lacks the package (make install installs it editable)"
    for argv in ([str(command), "--help"], [sys.executable, "-m", "backtrans", "--help"]):
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (argv, done.stderr)
        assert "score, generate, curate and export" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import backtrans; print(backtrans.__file__)"], cwd=tmp_path,
                           env=env, check=True, capture_output=True, text=True).stdout.strip()
    checkout = Path(sys.prefix).resolve().parent
    assert Path(where).resolve() == checkout / "backtrans" / "__init__.py"
