"""The server's side of the app: its data folder, the shared run store, the limits, the job gate, retention
and the secret that keeps each browser's owner id. Every `Session` is one owner's view of a `Workspace`.
"""

from __future__ import annotations

import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from backtrans.jobs import Jobs
from backtrans.limits import JobGate, Limits
from backtrans.owners import Owner, on_space
from backtrans.store import RunStore

if TYPE_CHECKING:
    from backtrans.session import Session


@dataclass
class Workspace:
    """What every session shares: the data folder, the run store, the limits and the job gate."""

    data_dir: Path
    limits: Limits = field(default_factory=Limits)
    gate: JobGate = field(default_factory=JobGate)
    local_files_dir: Path | None = None  # opt-in folder a workstation user may load from by name
    jobs: Jobs = field(default_factory=Jobs)
    max_sessions: int = 512  # owners whose rows stay in memory; the least recently seen idle one goes first
    _sessions: OrderedDict = field(default_factory=OrderedDict, repr=False)

    @classmethod
    def from_env(cls, default_dir: str | Path) -> Workspace:
        local_dir = os.environ.get("BACKTRANS_LOCAL_FILES_DIR", "").strip()
        if local_dir and on_space():
            local_dir = ""  # a Space serves strangers: never a folder of server files
        return cls(Path(os.environ.get("BACKTRANS_DATA_DIR") or default_dir), Limits.from_env(),
                   local_files_dir=Path(local_dir).resolve() if local_dir else None)

    @property
    def store_path(self) -> str:
        return str(self.data_dir / "runs.sqlite")

    def owner_dir(self, owner: Owner) -> Path:
        return self.data_dir / "owners" / owner.folder

    def session(self, owner: Owner) -> Session:
        """The owner's one session in this process: every page of the same owner (a reopened tab, the same
        account elsewhere) sees the same rows and the same running job."""
        from backtrans.session import Session

        session = self._sessions.get(owner.key)
        if session is None:
            session = self._sessions[owner.key] = Session(self, owner)
        self._sessions.move_to_end(owner.key)
        while len(self._sessions) > self.max_sessions:
            idle = next((key for key in self._sessions if not self.jobs.running(key)), None)
            if idle is None:
                break
            del self._sessions[idle]  # its runs stay in the store: the owner resumes from the run list
        return session

    def browser_secret(self) -> str:
        """What the page's browser storage is encrypted with. It must outlive restarts, or every visitor loses
        their runs: BACKTRANS_BROWSER_SECRET where set, else a file made once in the data folder."""
        secret = os.environ.get("BACKTRANS_BROWSER_SECRET")
        if secret:
            return secret
        path = self.data_dir / ".browser-secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(32))
            path.chmod(0o600)
        return path.read_text().strip()

    def expire(self, now: float | None = None) -> int:
        """Remove runs and owner files older than the retention period (run at start). Returns runs removed."""
        if not self.limits.retention_days:
            return 0
        cutoff = (now or time.time()) - self.limits.retention_days * 86400
        removed = 0
        if Path(self.store_path).exists():
            store = RunStore(self.store_path)
            try:
                removed = store.delete_runs(before=cutoff)
            finally:
                store.close()
        owners = self.data_dir / "owners"
        for path in sorted(owners.rglob("*"), reverse=True) if owners.exists() else ():
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()  # children come first in reverse order
        return removed
