"""Humans in the loop: push judged pairs to Argilla with the LLM's verdict as suggestions, pull the
reviewers' decisions back, and measure how well humans and the LLM agree (the paper's Table 7).

Record ids are a hash of the pair's text, so pushing again updates records in place: never a
duplicate, and the reviewers' responses stay. The reason the judge gave is a field beside the pair.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from backtrans.decisions import final_keep, judge_keeps
from backtrans.records import missing
from backtrans.redaction import redact
from backtrans.store import content_key
from backtrans.templates import Template, load_template

DEFAULT_WORKSPACE = "backtrans"
POLICIES = ("majority", "unanimous", "any-discard")
KEEP, DISCARD = "keep", "discard"
# A hash of what was pushed, kept as unindexed extra metadata: a rerun skips records the server already holds
# unchanged, and still updates those whose verdict changed.
PUSH_HASH = "backtrans_push"
PAGE = 1000  # the server's largest page for listing records
GUIDELINES_MAX = 10000  # argilla-server rejects longer guidelines


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


def _failure(config: ArgillaConfig, action: str, exc: BaseException) -> ArgillaError:
    detail = redact(f"{type(exc).__name__}: {exc}", config.api_key)
    lowered = detail.lower()
    if "401" in detail or "unauthorized" in lowered or "credentials" in lowered:
        hint = "the API key was refused"
    elif any(word in lowered for word in ("connect", "refused", "timed out", "timeout", "name or service")):
        hint = "the server did not answer"
    else:
        hint = detail[:300]
    return ArgillaError(f"{action} at Argilla {config.url} failed: {hint}. Local results are intact; retry later.")


@contextmanager
def _quiet_lookups() -> Iterator[None]:
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
        raise _failure(config, "connecting", exc) from None
    return client


# --- settings -----------------------------------------------------------------------------------------


def guidelines(template: Template, design: str | None = None) -> str:
    rubric = template.render(instruction="<instruction>", generation="<answer>")
    text = (
        "Decide whether each answer is a good example of how an AI Assistant should respond to the instruction.\n\n"
        "**keep** it if it would be a good training example, **discard** it if not. Rate it on the same scale "
        f"the LLM judge used ({template.score_min}-{template.score_max}). The judge's score and reason are "
        "pre-filled as suggestions: accept them or override them.\n\n"
        f"The judge's rubric (template `{template.name}`):\n\n```\n{rubric.strip()}\n```"
    )
    if design and design.strip():
        heading = "\n\n**How these records were chosen**\n\n"
        room = GUIDELINES_MAX - len(text) - len(heading)
        body = design.strip()
        if len(body) > room:  # the server refuses the whole dataset otherwise
            body = body[: max(0, room - 1)] + "…"
        text += heading + body
    return text


def dataset_settings(template: Template, design: str | None = None, overlap: int = 1):
    import argilla as rg

    return rg.Settings(
        guidelines=guidelines(template, design),
        fields=[
            rg.TextField(name="instruction", title="Instruction"),
            rg.TextField(name="generation", title="Response"),
            rg.TextField(name="judge_reason", title="The LLM judge's reason", required=False),
        ],
        questions=[
            rg.LabelQuestion(name="keep", title="Keep this pair for training?", labels=[KEEP, DISCARD],
                             required=True),
            rg.RatingQuestion(name="score", title="Quality score",
                              values=list(range(template.score_min, template.score_max + 1)), required=False),
            rg.TextQuestion(name="note", title="Note (optional)", required=False),
        ],
        metadata=[
            rg.IntegerMetadataProperty(name="llm_score", min=template.score_min, max=template.score_max),
            rg.FloatMetadataProperty(name="expected_score", min=float(template.score_min),
                                     max=float(template.score_max)),
            rg.TermsMetadataProperty(name="model_name"),
            rg.TermsMetadataProperty(name="template"),
            rg.TermsMetadataProperty(name="run_id"),
            rg.TermsMetadataProperty(name="status"),
            rg.IntegerMetadataProperty(name="instruction_length"),
            rg.IntegerMetadataProperty(name="generation_length"),
        ],
        distribution=rg.TaskDistribution(min_submitted=overlap),
        allow_extra_metadata=True,  # holds PUSH_HASH without indexing it
    )


def plan_metadata() -> list:
    """Properties for the review plan's columns, added to a dataset when pushed rows carry them."""
    import argilla as rg

    return [rg.TermsMetadataProperty(name="stratum", title="Sample stratum"),
            rg.FloatMetadataProperty(name="inclusion_prob", title="Inclusion probability", min=0.0, max=1.0),
            # 1 marks a record the plan gives a second reviewer. Argilla's distribution is per dataset only,
            # so this is how reviewers can filter for them.
            rg.IntegerMetadataProperty(name="overlap", title="Second reviewer wanted", min=0, max=1)]


def _shape(settings) -> dict[str, tuple[str, ...]]:
    return {
        "fields": tuple(sorted(f.name for f in settings.fields)),
        "questions": tuple(sorted(f"{q.name}:{type(q).__name__}" for q in settings.questions)),
    }


# --- push ---------------------------------------------------------------------------------------------


def record_id(row: dict) -> str:
    """Stable across pushes and reruns: the same pair is the same record."""
    return content_key("pair", row["instruction"], row["generation"])[:32]


def _number(value) -> float | None:
    if missing(value):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _confidence(row: dict, template: Template, keep: bool) -> float | None:
    """How sure the judge was, 0-1, from its digit probabilities when the backend gave them."""
    expected = _number(row.get("expected_score"))
    if expected is None:
        return None
    span = template.score_max - template.score_min
    position = (expected - template.score_min) / span if span else 1.0
    return round(min(1.0, max(0.0, position if keep else 1.0 - position)), 4)


def to_record(row: dict, template: Template, threshold: float, run_id: str | None = None, by: str = "score"):
    import argilla as rg

    score = _number(row.get("score"))
    model = str(row.get("model_name") or "llm-judge")
    metadata = {
        "model_name": model,
        "template": template.name,
        "status": str(row.get("status") or "ok"),
        "instruction_length": len(row["instruction"]),
        "generation_length": len(row["generation"]),
    }
    if run_id:
        metadata["run_id"] = run_id
    if score is not None:
        metadata["llm_score"] = int(score)
    if (expected := _number(row.get("expected_score"))) is not None:
        metadata["expected_score"] = min(float(template.score_max), max(float(template.score_min), expected))
    metadata.update(_plan_values(row))
    fields = {"instruction": row["instruction"], "generation": row["generation"]}
    if row.get("reason"):
        fields["judge_reason"] = str(row["reason"])
    suggested: list[tuple] = []
    if score is not None:
        keep = bool(judge_keeps(row, threshold, by))
        suggested = [("keep", KEEP if keep else DISCARD, _confidence(row, template, keep), model),
                     ("score", int(score), _confidence(row, template, True), model)]
    metadata[PUSH_HASH] = _push_hash(fields, metadata, suggested)
    suggestions = [rg.Suggestion(name, value, score=confidence, agent=agent)
                   for name, value, confidence, agent in suggested]
    return rg.Record(id=record_id(row), fields=fields, metadata=metadata, suggestions=suggestions)


def _plan_values(row: dict) -> dict:
    values: dict = {}
    stratum = row.get("stratum")
    if not missing(stratum):
        values["stratum"] = str(stratum)
    if row.get("inclusion_prob") is not None:
        prob = _number(row["inclusion_prob"])
        if prob is None or not 0 < prob <= 1:
            raise ValueError(f"inclusion_prob must be a number in (0, 1], not {row['inclusion_prob']!r}")
        values["inclusion_prob"] = prob
    overlap = row.get("overlap")
    if not missing(overlap):
        values["overlap"] = int(bool(overlap))
    return values


def _push_hash(fields: dict, metadata: dict, suggestions: list[tuple]) -> str:
    payload = json.dumps([fields, {k: v for k, v in metadata.items() if k != PUSH_HASH}, suggestions],
                         sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.blake2b(payload.encode("utf-8"), digest_size=12).hexdigest()


@dataclass
class PushReport:
    dataset: str
    workspace: str
    pushed: int
    url: str
    skipped: int = 0  # already on the server, unchanged (a resumed or repeated push)


def _get_or_create_dataset(client, config: ArgillaConfig, name: str, template: Template,
                           design: str | None = None, overlap: int | None = None):
    import argilla as rg

    with _quiet_lookups():
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


def _list_page(client, dataset_id, offset: int, include: tuple[str, ...] = ()) -> tuple[list[dict], int]:
    """One page of raw records: plain JSON is far cheaper than the SDK's models at 100k records."""
    reply = client.http_client.get(f"/api/v1/datasets/{dataset_id}/records",
                                   params={"offset": offset, "limit": PAGE, "include": list(include)})
    reply.raise_for_status()
    body = reply.json()
    return body["items"], int(body["total"])


def _all_records(client, dataset_id, include: tuple[str, ...] = ()) -> Iterator[dict]:
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


def _server_hashes(client, dataset_id) -> dict[str, str | None]:
    """Record id -> the PUSH_HASH it was pushed with (None for records pushed before hashes)."""
    hashes: dict[str, str | None] = {}
    for item in _all_records(client, dataset_id):
        metadata = item.get("metadata") or {}
        hashes[str(item.get("external_id"))] = metadata.get(PUSH_HASH)
    return hashes


def push(rows: Iterable[dict], dataset_name: str, config: ArgillaConfig, *, template: Template | str = "humpback",
         threshold: float = 4, by: str = "score", run_id: str | None = None, batch_size: int = 200,
         on_progress: Callable[[int], None] | None = None, design: str | None = None,
         overlap: int | None = None, resume: bool = True) -> PushReport:
    """Upsert every row as a record, in batches of `batch_size`. Safe to repeat or to kill: each batch is
    committed on its own, and a rerun first lists what the server holds and sends only the records that are
    missing or changed, so nothing is lost and nothing is duplicated; reviewers' responses are kept.

    `on_progress(n)` gets the rows done so far (sent or already there) after each batch.
    `design` (the review plan's sample design) is appended to the guidelines. `overlap` is how many
    reviewers each record asks for (the dataset's distribution): 1 for a new dataset when None, and an
    existing dataset's setting is left as it is when None. `resume=False` sends every row again.
    """
    template = load_template(template) if isinstance(template, str) else template
    if overlap is not None and overlap < 1:
        raise ArgillaError(f"overlap must be 1 or more reviewers per record, not {overlap}")
    batch_size = max(1, min(batch_size, 500))  # the server's bulk limit
    client = connect(config)
    try:
        dataset = _get_or_create_dataset(client, config, dataset_name, template, design, overlap)
        on_server = _server_hashes(client, dataset.id) if resume else {}
    except ArgillaError:
        raise
    except Exception as exc:
        raise _failure(config, f"preparing dataset {dataset_name}", exc) from None
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
            _add_plan_metadata(dataset, batch, metadata_names)
            for record in batch:
                record.dataset = dataset
            # The API directly, not records.log: log draws its own tqdm bar on stderr for every batch.
            client.api.records.bulk_upsert(dataset.id, [record.api_model() for record in batch])
        except Exception as exc:
            raise _failure(config, f"pushing records {pushed + skipped + 1}-{pushed + skipped + len(batch)}",
                           exc) from None
        pushed += len(batch)
        batch = []
        report()

    queued: set[str] = set()
    for number, row in enumerate(rows, 1):
        try:
            record = to_record(row, template, threshold, run_id or row.get("run_id"), by)
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
    return PushReport(dataset_name, config.workspace, pushed, f"{config.url}/dataset/{dataset.id}/annotation-mode",
                      skipped)


def _add_plan_metadata(dataset, batch: list, names: set[str]) -> None:
    wanted = [prop for prop in plan_metadata() if prop.name not in names
              and any(prop.name in record.metadata for record in batch)]
    if wanted:
        for prop in wanted:
            dataset.settings.metadata.add(prop)
        dataset.settings.update()
        names.update(prop.name for prop in wanted)


# --- pull ---------------------------------------------------------------------------------------------


@dataclass
class Decision:
    human_keep: bool | None
    human_score: int | None
    human_note: str
    reviewer: str
    votes: dict[str, str]  # reviewer -> keep | discard (submitted or discarded responses): one per reviewer
    drafts: list[str]
    row: dict = field(default_factory=dict)  # the pair and the LLM's verdict, as pushed
    scores: dict[str, int] = field(default_factory=dict)  # reviewer -> submitted score, for weighted agreement


def resolve(votes: dict[str, str], policy: str) -> bool | None:
    """One keep/discard from several reviewers; None when there is no decision (the LLM's stands)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    values = list(votes.values())
    if not values:
        return None
    keeps, discards = values.count(KEEP), values.count(DISCARD)
    if policy == "unanimous":
        return keeps == len(values)
    if policy == "any-discard":
        return discards == 0
    if keeps == discards:
        return None
    return keeps > discards


def _find_dataset(client, config: ArgillaConfig, dataset_name: str):
    with _quiet_lookups():
        dataset = client.datasets(name=dataset_name, workspace=config.workspace)
    if dataset is None:
        raise ArgillaError(f"no dataset {config.workspace}/{dataset_name} at {config.url}")
    return dataset


def pull(dataset_name: str, config: ArgillaConfig, policy: str = "majority") -> dict[str, Decision]:
    """Every reviewer's responses, resolved per record, keyed by record id: every record, page by page."""
    if policy not in POLICIES:
        raise ArgillaError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    client = connect(config)
    try:
        dataset = _find_dataset(client, config, dataset_name)
        usernames = {str(user.id): user.username for user in client.users}
        decisions = {}
        # Raw records: flattened exports can drop responses (argilla#5042), and the SDK's Record objects drop
        # a discard that carries no values (how the web UI sends one).
        for item in _all_records(client, dataset.id, ("responses",)):
            decision = _decide(item.get("responses") or [], usernames, policy)
            decision.row = _row_from_record(item)
            decisions[str(item.get("external_id") or item["id"])] = decision
    except ArgillaError:
        raise
    except Exception as exc:
        raise _failure(config, f"pulling {dataset_name}", exc) from None
    return decisions


def summary(decisions: dict[str, Decision]) -> dict:
    """What a pull brought back, for a face to say: records, who reviewed, how many records have a decision."""
    reviewers: set[str] = set()
    votes = drafts = decided = 0
    for decision in decisions.values():
        reviewers.update(decision.votes)
        reviewers.update(decision.drafts)
        votes += len(decision.votes)
        drafts += len(decision.drafts)
        decided += decision.human_keep is not None
    return {"records": len(decisions), "reviewers": sorted(reviewers), "decisions": decided, "votes": votes,
            "drafts": drafts}


def format_summary(info: dict) -> str:
    who = ", ".join(info["reviewers"]) or "no reviewers yet"
    return (f"Pulled {info['records']} records: {info['decisions']} with a decision, {counted(info['votes'], 'vote')} "
            f"from {counted(len(info['reviewers']), 'reviewer')} ({who}), {counted(info['drafts'], 'draft')}")


def counted(number: int, noun: str) -> str:
    """"1 vote", "2 votes": what every pull message says."""
    return f"{number} {noun}{'' if number == 1 else 's'}"


def progress_by_reviewer(dataset_name: str, config: ArgillaConfig) -> dict[str, int]:
    """Submitted responses per reviewer (username -> count), from the server's own progress counts."""
    client = connect(config)
    try:
        dataset = _find_dataset(client, config, dataset_name)
        users = client.api.datasets.list_users_progress(dataset_id=dataset.id)
    except ArgillaError:
        raise
    except Exception as exc:
        raise _failure(config, f"reading progress of {dataset_name}", exc) from None
    return {user.username: int(user.completed.submitted or 0) + int(user.pending.submitted or 0) for user in users}


def _row_from_record(item: dict) -> dict:
    fields, metadata = item.get("fields") or {}, item.get("metadata") or {}
    if isinstance(metadata, list):
        metadata = {m["name"]: m["value"] for m in metadata}
    row = {
        "instruction": fields.get("instruction"),
        "generation": fields.get("generation"),
        "score": metadata.get("llm_score"),
        "expected_score": metadata.get("expected_score"),
        "reason": fields.get("judge_reason", ""),
        "model_name": metadata.get("model_name"),
        "status": metadata.get("status"),
    }
    for name in ("stratum", "inclusion_prob"):  # the review plan's columns come back for the estimates
        if name in metadata:
            row[name] = metadata[name]
    if "overlap" in metadata:
        row["overlap"] = bool(metadata["overlap"])
    return row


def _decide(responses: list[dict], usernames: dict[str, str], policy: str) -> Decision:
    votes: dict[str, str] = {}
    scores: dict[str, int] = {}
    notes: list[str] = []
    drafts: list[str] = []
    by_user: dict[str, dict] = {}
    for response in responses:
        user = usernames.get(str(response["user_id"]), str(response["user_id"]))
        entry = by_user.setdefault(user, {"status": str(response.get("status"))})
        for question, answer in (response.get("values") or {}).items():
            entry[question] = answer.get("value") if isinstance(answer, dict) else answer
    for user, entry in by_user.items():
        status = entry["status"]
        if status == "draft":
            drafts.append(user)
            continue
        if status == "discarded":
            votes[user] = DISCARD  # a reviewer who discards the record rejects the pair
        elif entry.get("keep") in (KEEP, DISCARD):
            votes[user] = entry["keep"]
        if status == "submitted" and entry.get("score") is not None:
            scores[user] = int(entry["score"])
        if entry.get("note"):
            notes.append(f"{user}: {entry['note']}")
    ordered = sorted(scores.values())
    human_score = int(round(ordered[len(ordered) // 2])) if ordered else None
    return Decision(resolve(votes, policy), human_score, "\n".join(notes), ", ".join(sorted(votes)), votes, drafts,
                    scores=scores)


def merge(rows: Iterable[dict], decisions: dict[str, Decision], threshold: float, by: str = "score") -> list[dict]:
    """Adds human_keep, human_score, human_note, reviewer and final_keep to each row."""
    merged = []
    for row in rows:
        decision = decisions.get(record_id(row))
        out = dict(row)
        out["human_keep"] = decision.human_keep if decision else None
        out["human_score"] = decision.human_score if decision else None
        out["human_note"] = decision.human_note if decision else ""
        out["reviewer"] = decision.reviewer if decision else ""
        out["human_votes"] = dict(decision.votes) if decision and decision.votes else None  # reviewer agreement
        out["final_keep"] = final_keep(out, threshold, by, afresh=True)
        merged.append(out)
    return merged


# --- agreement ----------------------------------------------------------------------------------------


def _ranks(values: list[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 2:
        return None
    rx, ry = _ranks(xs), _ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return round(cov / (sx * sy), 4) if sx and sy else None


def agreement(rows: Iterable[dict], threshold: float, decisions: dict[str, Decision] | None = None,
              by: str = "score") -> dict:
    """Precision, recall and F1 of the LLM's keep against the humans', Cohen's kappa, the confusion
    matrix, Spearman correlation of scores, and counts per annotator."""
    tp = fp = fn = tn = 0
    llm_scores: list[float] = []
    human_scores: list[float] = []
    disagreements = []
    for row in rows:
        human = row.get("human_keep")
        score = _number(row.get("score"))
        llm = judge_keeps(row, threshold, by)
        if human is None or llm is None:
            continue
        tp += llm and human
        fp += llm and not human
        fn += (not llm) and human
        tn += (not llm) and (not human)
        if llm != human:
            disagreements.append(record_id(row))
        if (hs := _number(row.get("human_score"))) is not None and score is not None:
            llm_scores.append(score)
            human_scores.append(hs)
    n = tp + fp + fn + tn
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    observed = (tp + tn) / n if n else None
    expected = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n) if n else None
    kappa = (observed - expected) / (1 - expected) if n and expected != 1 else None
    per_annotator: Counter = Counter()
    for decision in (decisions or {}).values():
        for user, vote in decision.votes.items():
            per_annotator[(user, vote)] += 1
        for user in decision.drafts:
            per_annotator[(user, "draft")] += 1
    annotators: dict[str, dict[str, int]] = {}
    for (user, kind), count in sorted(per_annotator.items()):
        annotators.setdefault(user, {})[kind] = count
    return {
        "threshold": threshold,
        "by": by,
        "reviewed": n,
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "accuracy": _round(observed),
        "cohen_kappa": _round(kappa),
        "confusion": {"llm_keep_human_keep": tp, "llm_keep_human_discard": fp,
                      "llm_discard_human_keep": fn, "llm_discard_human_discard": tn},
        "spearman": spearman(llm_scores, human_scores),
        "scored_by_both": len(llm_scores),
        "annotators": annotators,
        "disagreements": disagreements,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def format_report(report: dict) -> str:
    c = report["confusion"]
    lines = [
        f"Agreement of the LLM's keep ({report['by']} >= {report['threshold']:g}) with the reviewers, "
        f"over {report['reviewed']} reviewed pairs:",
        f"  precision {report['precision']}  recall {report['recall']}  F1 {report['f1']}  "
        f"accuracy {report['accuracy']}  Cohen's kappa {report['cohen_kappa']}",
        f"  Spearman (LLM score vs human score, {report['scored_by_both']} pairs): {report['spearman']}",
        "                    human keep   human discard",
        f"  LLM keep          {c['llm_keep_human_keep']:>10}   {c['llm_keep_human_discard']:>13}",
        f"  LLM discard       {c['llm_discard_human_keep']:>10}   {c['llm_discard_human_discard']:>13}",
        "  annotators: " + ("; ".join(f"{user} {counts}" for user, counts in report["annotators"].items()) or "none"),
    ]
    return "\n".join(lines)


# --- a review plan ------------------------------------------------------------------------------------------

OVERLAP_SUFFIX = "-overlap"


def push_plan(rows: list[dict], dataset_name: str, config: ArgillaConfig, *, design: str | None = None,
              **kwargs) -> list[PushReport]:
    """A review plan's rows. How many reviewers a record needs is a setting of the whole dataset (its task
    distribution), so the plan's overlap share goes to `<name>-overlap`, which asks for two; the rest to `<name>`,
    reviewed once. `pull_plan` reads both back as one."""
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


def plan_design(rows: list[dict]) -> str | None:
    """The sample design that a review plan's rows carry (`stratum`, `inclusion_prob`), in words for the
    dataset's guidelines; None for rows that are not a plan."""
    if not rows or not all("stratum" in row and "inclusion_prob" in row for row in rows):
        return None
    bands: dict[str, tuple[int, float]] = {}
    for row in rows:
        count, probability = bands.get(str(row["stratum"]), (0, float(row["inclusion_prob"])))
        bands[str(row["stratum"])] = (count + 1, probability)
    return (f"Review plan: {len(rows)} pairs sampled at random within bands of the judge's measure; "
            + "; ".join(f"{band}: {count} (inclusion probability {p:.3g})"
                        for band, (count, p) in sorted(bands.items())))


def push_rows(rows: list[dict], dataset_name: str, config: ArgillaConfig, *, design: str | None = None,
              overlap: int | None = None, **kwargs) -> list[PushReport]:
    """What every face pushes. A review plan's rows (they carry `overlap`) are split as `push_plan` does unless
    an overlap is asked for; other rows go to one dataset. A plan's design goes into the guidelines."""
    design = design or plan_design(rows)
    if overlap is None and any(row.get("overlap") for row in rows):
        return push_plan(rows, dataset_name, config, design=design, **kwargs)
    return [push(rows, dataset_name, config, design=design, overlap=overlap, **kwargs)]


def pull_plan(dataset_name: str, config: ArgillaConfig, policy: str = "majority") -> dict[str, Decision]:
    """`pull` of a dataset and, where there is one, of its overlap dataset: one decision per record."""
    decisions = pull(dataset_name, config, policy)
    try:
        decisions.update(pull(dataset_name + OVERLAP_SUFFIX, config, policy))
    except ArgillaError as exc:
        if "no dataset" not in str(exc):
            raise
    return decisions


def pull_merged(rows: list[dict] | None, dataset_name: str, config: ArgillaConfig, policy: str = "majority",
                threshold: float = 4, by: str = "score") -> tuple[dict[str, Decision], list[dict], dict]:
    """Reviewers' decisions merged into `rows` (None: the rows rebuilt from Argilla's records), with the
    agreement report: (decisions, merged rows, report)."""
    decisions = pull_plan(dataset_name, config, policy)
    merged = merge(rows if rows is not None else [d.row for d in decisions.values()], decisions, threshold, by)
    return decisions, merged, agreement(merged, threshold, decisions, by)
