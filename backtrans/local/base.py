"""What every part of backtrans.local shares: the error it raises and where things live.

Kept apart so that the model registry, the servers and the state file can all use them without importing each other.
"""

from __future__ import annotations

import os
from pathlib import Path

# The repository root (app.py, .venv-argilla). Installed from a wheel it is site-packages, as it always was.
ROOT = Path(__file__).resolve().parent.parent.parent


class LocalError(RuntimeError):
    pass


def state_dir() -> Path:
    """The state folder (BACKTRANS_HOME, default ./.backtrans): servers.json, logs, credentials, assembled models."""
    path = Path(os.environ.get("BACKTRANS_HOME", ROOT / ".backtrans"))
    path.mkdir(parents=True, exist_ok=True)
    return path
