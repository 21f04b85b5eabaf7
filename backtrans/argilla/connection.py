"""Where an Argilla server is, the client that reaches it, and what a failure there says (the URL, never the key)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from backtrans.redaction import redact

DEFAULT_WORKSPACE = "backtrans"
PAGE = 1000  # the server's largest page for listing records
# Words of the failures where the server never answered (the SDK passes httpx's transport errors through).
_UNANSWERED = ("connect", "refused", "timed out", "timeout", "name or service")


class ArgillaError(RuntimeError):
    """Argilla could not be reached or refused a request. Names the URL, never the key."""


@dataclass
class ArgillaConfig:
    url: str
    api_key: str = field(repr=False)
    workspace: str = DEFAULT_WORKSPACE

    @classmethod
    def from_env(cls, url: str | None = None, api_key: str | None = None,
                 workspace: str | None = None) -> ArgillaConfig:
        url = url or os.environ.get("ARGILLA_API_URL")
        api_key = api_key or os.environ.get("ARGILLA_API_KEY")
        if not url or not api_key:
            raise ArgillaError("set ARGILLA_API_URL and ARGILLA_API_KEY (or run `python -m backtrans local up`)")
        return cls(url.rstrip("/"), api_key, workspace or os.environ.get("ARGILLA_WORKSPACE", DEFAULT_WORKSPACE))


def failure(config: ArgillaConfig, action: str, exc: BaseException) -> ArgillaError:
    """`action` ("pushing records 1-200") failed with `exc`: the error a face shows."""
    detail = redact(f"{type(exc).__name__}: {exc}", config.api_key)
    lowered = detail.lower()
    if "401" in detail or "unauthorized" in lowered or "credentials" in lowered:
        hint = "the API key was refused"
    elif any(word in lowered for word in _UNANSWERED):
        hint = "the server did not answer"
    else:
        hint = detail[:300]
    return ArgillaError(f"{action} at Argilla {config.url} failed: {hint}. Local results are intact; retry later.")


@contextmanager
def quiet_lookups() -> Iterator[None]:
    """The SDK warns when a lookup finds nothing; on a first push that is expected, not news for the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Workspace with name .* not found")
        warnings.filterwarnings("ignore", message=r"Dataset with name .* not found in workspace")
        yield


def connect(config: ArgillaConfig):
    import argilla as rg

    try:
        client = rg.Argilla(api_url=config.url, api_key=config.api_key, timeout=30, retries=1)
        client.me  # noqa: B018 (a cheap call that proves the URL and the key)
    except Exception as exc:  # the SDK raises httpx and its own errors alike
        raise failure(config, "connecting", exc) from None
    return client


def find_dataset(client, config: ArgillaConfig, dataset_name: str):
    with quiet_lookups():
        dataset = client.datasets(name=dataset_name, workspace=config.workspace)
    if dataset is None:
        raise ArgillaError(f"no dataset {config.workspace}/{dataset_name} at {config.url}")
    return dataset


def _list_page(client, dataset_id, offset: int, include: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """One page of raw records: plain JSON is far cheaper than the SDK's models at 100k records."""
    reply = client.http_client.get(f"/api/v1/datasets/{dataset_id}/records",
                                   params={"offset": offset, "limit": PAGE, "include": list(include)})
    reply.raise_for_status()
    body = reply.json()
    return body["items"], int(body["total"])


def all_records(client, dataset_id, include: tuple[str, ...] = ()) -> Iterator[dict]:
    """Every record once, page by page, and never fewer than the server counts.

    The server pages with OFFSET and no ORDER BY, so records added while we read can shift a page; we
    de-duplicate by id and read again from the start if the count falls short."""
    for _attempt in range(3):
        seen: set[str] = set()
        offset, total = 0, 0
        while True:
            items, total = _list_page(client, dataset_id, offset, include)
            for item in items:
                key = str(item.get("external_id") or item["id"])
                if key not in seen:
                    seen.add(key)
                    yield item
            offset += len(items)
            if not items or offset >= total:
                break
        if len(seen) >= total:
            return
    raise ArgillaError(f"read {len(seen)} of {total} records: the dataset kept changing while it was read; retry")
