"""A run's settings, typed: what the store records for every run, and what resume reads back.

One shape for the CLI, the app, the Ray and batch engines. A run is found again by its exact settings
(rerun the same command, press Start again), so `to_json` is the one place that decides what the store
holds. On resume, the stored settings fill in what the user did not say, and anything they did say wins.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

KINDS = ("judge", "generate", "augment")

# The store's key for a field, where it is not the field's own name (kept for runs recorded before this module).
_STORED_AS = {"hf_config": "config"}


@dataclass(frozen=True)
class RunConfig:
    kind: str  # judge | generate | augment
    source: str  # a file, a folder, a Hub id, an owner's uploaded copy, the bundled sample
    template: str  # a bundled template's name or a template file's path
    model: str
    base_url: str
    template_digest: str = ""
    output: str | None = None  # the CLI's output file; None for the app, which keeps rows in the session
    source_name: str = ""  # what the user calls the source: an upload's own name, a Hub id
    source_kind: str = ""  # app: upload | sample | hub | local | documents
    mapping: dict[str, str] = field(default_factory=dict)
    hf_config: str | None = None
    split: str | None = None
    parent_run_id: str | None = None
    rows: int | None = None
    engine: str | None = None  # None: this process; "batch": a provider's Batch API
    seeds: list[dict] | None = None  # augment: the seed examples in each prompt

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown run kind {self.kind!r}; one of {', '.join(KINDS)}")

    @classmethod
    def for_task(cls, task: Any, **where: Any) -> RunConfig:
        """The settings of a run of `task` (its kind, template, model and seeds) over `where` (source, output,
        mapping, ...): the one builder for the CLI's jobs, the app's, Ray's and the Batch API's."""
        template = task.template
        return cls(kind=task.kind, template=template.path or template.name, template_digest=template.digest,
                   model=task.settings.model, base_url=task.settings.base_url,
                   seeds=getattr(task, "examples", None), **where)

    def to_json(self) -> dict[str, Any]:
        """What the store records. Fields left at None are left out, so a setting added later does not
        change the record of runs that never used it (and rerunning an older command still finds its run)."""
        out: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if value is None or (item.name in ("source_name", "source_kind", "template_digest") and value == ""):
                continue
            out[_STORED_AS.get(item.name, item.name)] = value
        return out

    @classmethod
    def from_json(cls, stored: dict[str, Any]) -> RunConfig:
        """Read a store's record. Keys this version does not know are ignored: a newer or older record still
        resumes on what both understand."""
        names = {item.name for item in dataclasses.fields(cls)}
        values = {name: stored[_STORED_AS.get(name, name)] for name in names if _STORED_AS.get(name, name) in stored}
        values.setdefault("kind", "judge")
        for required in ("source", "template", "model", "base_url"):
            values[required] = str(values.get(required) or "")
        values["mapping"] = dict(values.get("mapping") or {})
        return cls(**values)

    def updated(self, **explicit: Any) -> RunConfig:
        """These settings with every explicitly given value (not None, not empty) in place of the stored one."""
        unknown = set(explicit) - {item.name for item in dataclasses.fields(self)}
        if unknown:
            raise TypeError(f"RunConfig has no setting {', '.join(sorted(unknown))}")
        given = {name: value for name, value in explicit.items() if value is not None and value != {} and value != ""}
        return dataclasses.replace(self, **given)
