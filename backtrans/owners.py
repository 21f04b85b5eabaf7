"""Who owns a run, an upload or an export, and what a user may name.

In a shared app every read is scoped to an owner: the signed-in Hugging Face user, else a random id
that only that browser holds. The faces pass what they know (a profile name, a browser id); this
module alone turns it into an owner. See docs/security.md for the threat model.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

BROWSER_ID = re.compile(r"^[A-Za-z0-9_-]{32,64}$")
# The Hub's repo id grammar: OWNER/NAME, each part alphanumerics with - _ . inside, at most 96 characters,
# no part that starts or ends with - or ., no `--` or `..` (so never a path that walks up).
_HUB_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9])?"
HUB_ID = re.compile(rf"^{_HUB_PART}/{_HUB_PART}$")


class OwnershipError(ValueError):
    """A name or path that a user may not use. The message is safe to show to that user."""


@dataclass(frozen=True)
class Owner:
    """`key` is what the store records; for a browser it is a hash, so the store never holds the id itself."""

    key: str
    label: str
    signed_in: bool = False

    @property
    def folder(self) -> str:
        """A directory name for the owner's files that reveals nothing about who they are."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]

    @property
    def slug(self) -> str:
        """A short readable name for shared places (an Argilla dataset): the Hub name, or anon-<hash>."""
        return self.label if self.signed_in else "anon-" + self.folder[:10]


def new_browser_id() -> str:
    return secrets.token_urlsafe(32)


def owner_for(username: str | None, browser_id: str | None) -> Owner:
    """The signed-in user if there is one, else the browser; a missing or malformed browser id gets a new one.

    A browser id is a bearer secret (256 random bits): whoever holds it is that owner. It is never shown.
    """
    if username:
        return Owner(key=f"hf:{username}", label=username, signed_in=True)
    if not browser_id or not BROWSER_ID.match(browser_id):
        browser_id = new_browser_id()
    digest = hashlib.sha256(browser_id.encode()).hexdigest()
    return Owner(key=f"browser:{digest}", label="this browser")


def check_hub_id(text: str) -> str:
    """A Hub dataset id (OWNER/NAME), or OwnershipError. Never a path: no leading /, no `..`, one separator."""
    dataset_id = (text or "").strip()
    if not HUB_ID.match(dataset_id) or ".." in dataset_id or "--" in dataset_id:
        raise OwnershipError("that is not a Hugging Face dataset id: use OWNER/NAME")
    return dataset_id


def confined_path(root: str | Path, relative: str) -> Path:
    """A file inside `root`, by its real path: `..`, absolute paths and symlinks that leave `root` are refused."""
    base = Path(root).resolve()
    candidate = (base / (relative or "").strip()).resolve()
    if candidate != base and base not in candidate.parents:
        raise OwnershipError("that file is outside the local data folder")
    if not candidate.is_file():
        raise OwnershipError("no such file in the local data folder")
    return candidate


def on_space() -> bool:
    """Hugging Face Spaces set SPACE_ID (and SYSTEM=spaces) for the running app."""
    return bool(os.environ.get("SPACE_ID")) or os.environ.get("SYSTEM") == "spaces"
