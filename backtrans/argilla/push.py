"""Pushing judged pairs to Argilla, the judge's verdicts as suggestions: safe to repeat or to kill.

A review plan's rows are split in two datasets: how many reviewers a record needs is a setting of the whole
dataset (its task distribution), so the plan's overlap share goes to `<name>-overlap`, which asks for two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from backtrans.argilla.columns import PUSH_HASH, ROW_ORDER, dataset_settings, plan_metadata, to_record
from backtrans.argilla.connection import ArgillaConfig, ArgillaError, all_records, connect, failure, quiet_lookups
from backtrans.argilla.guidelines import plan_design
from backtrans.decisions import DEFAULT_MEASURE, DEFAULT_THRESHOLD
from backtrans.templates import DEFAULT_JUDGE_TEMPLATE, Template, load_template

OVERLAP_SUFFIX = "-overlap"
BULK_MAX = 500  # the server's bulk limit


@dataclass
class PushReport:
    dataset: str
    workspace: str
    pushed: int
    url: str
    skipped: int = 0  # already on the server, unchanged (a resumed or repeated push)


def _shape(settings) -> dict[str, tuple[str, ...]]:
    return {
        "fields": tuple(sorted(f.name for f in settings.fields)),
        "questions": tuple(sorted(f"{q.name}:{type(q).__name__}" for q in settings.questions)),
    }


def _get_or_create_dataset(client, config: ArgillaConfig, name: str, template: Template,
                           design: str | None = None, overlap: int | None = None):
    import argilla as rg

    with quiet_lookups():
        workspace = client.workspaces(config.workspace)
        if workspace is None:
            workspace = rg.Workspace(name=config.workspace, client=client).create()
            owner = client.me
            if owner.role != "owner":
                workspace.add_user(owner.username)
        dataset = client.datasets(name=name, workspace=config.workspace)
    wanted = dataset_settings(template, design, overlap or 1)
    if dataset is None:
        return rg.Dataset(name=name, workspace=config.workspace, settings=wanted, client=client).create()
    if _shape(dataset.settings) != _shape(wanted):
        raise ArgillaError(
            f"dataset {config.workspace}/{name} at {config.url} has other fields or questions "
            f"({_shape(dataset.settings)}) than backtrans pushes ({_shape(wanted)}); push to a new dataset name"
        )
    settings = dataset.settings
    existing = {m.name for m in settings.metadata}
    missing = [m for m in wanted.metadata if m.name not in existing]
    for prop in missing:  # Argilla allows adding metadata properties to a dataset that has records
        settings.metadata.add(prop)
    changed = bool(missing)
    if not settings.allow_extra_metadata:  # a dataset from before PUSH_HASH
        settings.allow_extra_metadata, changed = True, True
    if design and settings.guidelines != wanted.guidelines:
        settings.guidelines, changed = wanted.guidelines, True
    if overlap and settings.distribution.min_submitted != overlap:
        # The server allows it at any time and recomputes which records are complete.
        settings.distribution, changed = rg.TaskDistribution(min_submitted=overlap), True
    if changed:
        settings.update()
    return dataset


def _server_hashes(client, dataset_id) -> dict[str, str | None]:
    """Record id -> the PUSH_HASH it was pushed with (None for records pushed before hashes)."""
    hashes: dict[str, str | None] = {}
    for item in all_records(client, dataset_id):
        metadata = item.get("metadata") or {}
        hashes[str(item.get("external_id"))] = metadata.get(PUSH_HASH)
    return hashes


def _add_plan_metadata(dataset, template: Template, batch: list, names: set[str]) -> None:
    wanted = [prop for prop in plan_metadata(template) if prop.name not in names
              and any(prop.name in record.metadata for record in batch)]
    if wanted:
        for prop in wanted:
            dataset.settings.metadata.add(prop)
        dataset.settings.update()
        names.update(prop.name for prop in wanted)


def push(rows: Iterable[dict], dataset_name: str, config: ArgillaConfig, *,
         template: Template | str = DEFAULT_JUDGE_TEMPLATE, threshold: float = DEFAULT_THRESHOLD,
         by: str = DEFAULT_MEASURE, run_id: str | None = None, batch_size: int = 200,
         on_progress: Callable[[int], None] | None = None, design: str | None = None,
         overlap: int | None = None, resume: bool = True) -> PushReport:
    """Upsert every row as a record, in batches of `batch_size`. Safe to repeat or to kill: each batch is
    committed on its own, and a rerun first lists what the server holds and sends only the records that are
    missing or changed, so nothing is lost and nothing is duplicated; reviewers' responses are kept.

    Each record holds its place in `rows` (the `row` metadata; a record whose place changed is sent again), and
    the report's URL opens Argilla's annotation page sorted by it: the reviewers see the rows in this order.

    `on_progress(n)` gets the rows done so far (sent or already there) after each batch.
    `design` (the review plan's sample design) is appended to the guidelines. `overlap` is how many
    reviewers each record asks for (the dataset's distribution): 1 for a new dataset when None, and an
    existing dataset's setting is left as it is when None. `resume=False` sends every row again.
    """
    template = load_template(template) if isinstance(template, str) else template
    if overlap is not None and overlap < 1:
        raise ArgillaError(f"overlap must be 1 or more reviewers per record, not {overlap}")
    batch_size = max(1, min(batch_size, BULK_MAX))
    client = connect(config)
    try:
        dataset = _get_or_create_dataset(client, config, dataset_name, template, design, overlap)
        on_server = _server_hashes(client, dataset.id) if resume else {}
    except ArgillaError:
        raise
    except Exception as exc:
        raise failure(config, f"preparing dataset {dataset_name}", exc) from None
    metadata_names = {m.name for m in dataset.settings.metadata}
    pushed = skipped = 0
    reported = -1
    batch: list = []

    def report() -> None:
        nonlocal reported
        if on_progress and pushed + skipped != reported:
            reported = pushed + skipped
            on_progress(reported)

    def flush() -> None:
        nonlocal pushed, batch
        if not batch:
            return
        try:
            _add_plan_metadata(dataset, template, batch, metadata_names)
            for record in batch:
                record.dataset = dataset
            # The API directly, not records.log: log draws its own tqdm bar on stderr for every batch.
            client.api.records.bulk_upsert(dataset.id, [record.api_model() for record in batch])
        except Exception as exc:
            raise failure(config, f"pushing records {pushed + skipped + 1}-{pushed + skipped + len(batch)}",
                          exc) from None
        pushed += len(batch)
        batch = []
        report()

    queued: set[str] = set()
    for number, row in enumerate(rows, 1):
        try:
            record = to_record(row, template, threshold, run_id, by, position=number)
        except ValueError as exc:
            raise ArgillaError(f"row {number}: {exc}") from None
        key = str(record.id)
        if key in queued or on_server.get(key, "") == record.metadata[PUSH_HASH]:
            skipped += 1  # a duplicate pair in the input, or already on the server as it is
            continue
        queued.add(key)
        batch.append(record)
        if len(batch) >= batch_size:
            flush()
    flush()
    report()
    return PushReport(dataset_name, config.workspace, pushed,
                      f"{config.url}/dataset/{dataset.id}/annotation-mode?{ROW_ORDER}", skipped)


def push_plan(rows: list[dict], dataset_name: str, config: ArgillaConfig, *, design: str | None = None,
              **kwargs) -> list[PushReport]:
    """A review plan's rows: the overlap share to `<name>-overlap` (two reviewers each), the rest to `<name>`,
    reviewed once. `pull.pull_plan` reads both back as one."""
    single = [row for row in rows if not row.get("overlap")]
    double = [row for row in rows if row.get("overlap")]
    on_progress = kwargs.pop("on_progress", None)
    reports = []
    if single:
        reports.append(push(single, dataset_name, config, design=design, overlap=1, on_progress=on_progress,
                            **kwargs))
    if double:
        note = (design + "\n\n" if design else "") + "These records are the plan's overlap: two reviewers each."
        # One count over both datasets, so that a caller's progress bar keeps climbing.
        offset = len(single)
        shifted = (lambda n: on_progress(offset + n)) if on_progress else None
        reports.append(push(double, dataset_name + OVERLAP_SUFFIX, config, design=note, overlap=2,
                            on_progress=shifted, **kwargs))
    return reports


def push_rows(rows: list[dict], dataset_name: str, config: ArgillaConfig, *, design: str | None = None,
              overlap: int | None = None, **kwargs) -> list[PushReport]:
    """What every face pushes. A review plan's rows (they carry `overlap`) are split as `push_plan` does unless
    an overlap is asked for; other rows go to one dataset. A plan's design goes into the guidelines."""
    design = design or plan_design(rows)
    if overlap is None and any(row.get("overlap") for row in rows):
        return push_plan(rows, dataset_name, config, design=design, **kwargs)
    return [push(rows, dataset_name, config, design=design, overlap=overlap, **kwargs)]
