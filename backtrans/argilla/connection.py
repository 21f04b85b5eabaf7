"""Where an Argilla server is, the client that reaches it, and what a failure there says.

A failure names the URL, never the key, and says that the local results are intact. It says "retry later" only
where a retry can help: the server did not answer, or answered that it is busy or broken (5xx, 429). A refused key,
a request the server rejects, or a fault on our side needs a change first, and the message says what it was.
"""

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
_BUSY = (408, 429)  # with every 5xx: the server may answer the same request later


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


def _status_code(exc: BaseException) -> int | None:
    """The HTTP status of a failed request: the SDK's errors carry `status_code`, httpx's a `response`."""
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def failure(config: ArgillaConfig, action: str, exc: BaseException) -> ArgillaError:
    """`action` ("pushing records 1-200") failed with `exc`: the error a face shows."""
    detail = redact(f"{type(exc).__name__}: {exc}", config.api_key)
    lowered = detail.lower()
    status = _status_code(exc)
    if status == 401 or "401" in detail or "unauthorized" in lowered or "credentials" in lowered:
        hint, retry = "the API key was refused", False
    elif status is None and any(word in lowered for word in _UNANSWERED):
        hint, retry = "the server did not answer", True
    else:
        hint, retry = detail[:300], status is not None and (status >= 500 or status in _BUSY)
    advice = "Local results are intact; retry later." if retry else "Local results are intact."
    return ArgillaError(f"{action} at Argilla {config.url} failed: {hint}. {advice}")


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
