"""Humans in the loop: push judged pairs to Argilla with the LLM's verdict as suggestions, pull the
reviewers' decisions back, and measure how well humans and the LLM agree (the paper's Table 7).

Record ids are a hash of the pair's text, so pushing again updates records in place: never a
duplicate, and the reviewers' responses stay. The reason the judge gave is a field beside the pair.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from backtrans.export import judge_keeps
from backtrans.llm import redact
from backtrans.store import content_key
from backtrans.templates import Template, load_template

DEFAULT_WORKSPACE = "backtrans"
POLICIES = ("majority", "unanimous", "any-discard")
KEEP, DISCARD = "keep", "discard"


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


def connect(config: ArgillaConfig):
    import argilla as rg

    try:
        client = rg.Argilla(api_url=config.url, api_key=config.api_key, timeout=30, retries=1)
        client.me  # noqa: B018 (a cheap call that proves the URL and the key)
    except Exception as exc:  # the SDK raises httpx and its own errors alike
        raise _failure(config, "connecting", exc) from None
    return client


# --- settings -----------------------------------------------------------------------------------------


def guidelines(template: Template) -> str:
    rubric = template.render(instruction="<instruction>", generation="<answer>")
    return (
        "Decide whether each answer is a good example of how an AI Assistant should respond to the instruction.\n\n"
        "**keep** it if it would be a good training example, **discard** it if not. Rate it on the same scale "
        f"the LLM judge used ({template.score_min}-{template.score_max}). The judge's score and reason are "
        "pre-filled as suggestions: accept them or override them.\n\n"
        f"The judge's rubric (template `{template.name}`):\n\n```\n{rubric.strip()}\n```"
    )


def dataset_settings(template: Template):
    import argilla as rg

    return rg.Settings(
        guidelines=guidelines(template),
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
        distribution=rg.TaskDistribution(min_submitted=1),
    )


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
    if value is None:
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
    fields = {"instruction": row["instruction"], "generation": row["generation"]}
    if row.get("reason"):
        fields["judge_reason"] = str(row["reason"])
    suggestions = []
    if score is not None:
        keep = bool(judge_keeps(row, threshold, by))
        suggestions = [
            rg.Suggestion("keep", KEEP if keep else DISCARD, score=_confidence(row, template, keep), agent=model),
            rg.Suggestion("score", int(score), score=_confidence(row, template, True), agent=model),
        ]
    return rg.Record(id=record_id(row), fields=fields, metadata=metadata, suggestions=suggestions)


@dataclass
class PushReport:
    dataset: str
    workspace: str
    pushed: int
    url: str


def _get_or_create_dataset(client, config: ArgillaConfig, name: str, template: Template):
    import argilla as rg

    workspace = client.workspaces(config.workspace)
    if workspace is None:
        workspace = rg.Workspace(name=config.workspace, client=client).create()
        owner = client.me
        if owner.role != "owner":
            workspace.add_user(owner.username)
    dataset = client.datasets(name=name, workspace=config.workspace)
    wanted = dataset_settings(template)
    if dataset is None:
        return rg.Dataset(name=name, workspace=config.workspace, settings=wanted, client=client).create()
    if _shape(dataset.settings) != _shape(wanted):
        raise ArgillaError(
            f"dataset {config.workspace}/{name} at {config.url} has other fields or questions "
            f"({_shape(dataset.settings)}) than backtrans pushes ({_shape(wanted)}); push to a new dataset name"
        )
    existing = {m.name for m in dataset.settings.metadata}
    missing = [m for m in wanted.metadata if m.name not in existing]
    if missing:  # Argilla allows adding metadata properties to a dataset that has records
        for prop in missing:
            dataset.settings.metadata.add(prop)
        dataset.settings.update()
    return dataset


def push(rows: Iterable[dict], dataset_name: str, config: ArgillaConfig, *, template: Template | str = "humpback",
         threshold: float = 4, by: str = "score", run_id: str | None = None, batch_size: int = 200,
         on_progress: Callable[[int], None] | None = None) -> PushReport:
    """Upsert every row as a record. Safe to repeat: a partial push resumes, responses are kept."""
    template = load_template(template) if isinstance(template, str) else template
    client = connect(config)
    try:
        dataset = _get_or_create_dataset(client, config, dataset_name, template)
    except ArgillaError:
        raise
    except Exception as exc:
        raise _failure(config, f"preparing dataset {dataset_name}", exc) from None
    pushed = 0
    batch: list = []

    def flush() -> None:
        nonlocal pushed, batch
        if not batch:
            return
        try:
            dataset.records.log(batch, batch_size=batch_size)
        except Exception as exc:
            raise _failure(config, f"pushing records {pushed + 1}-{pushed + len(batch)}", exc) from None
        pushed += len(batch)
        batch = []
        if on_progress:
            on_progress(pushed)

    for row in rows:
        batch.append(to_record(row, template, threshold, run_id or row.get("run_id"), by))
        if len(batch) >= batch_size:
            flush()
    flush()
    return PushReport(dataset_name, config.workspace, pushed, f"{config.url}/dataset/{dataset.id}/annotation-mode")


# --- pull ---------------------------------------------------------------------------------------------


@dataclass
class Decision:
    human_keep: bool | None
    human_score: int | None
    human_note: str
    reviewer: str
    votes: dict[str, str]  # reviewer -> keep | discard (submitted or discarded responses)
    drafts: list[str]
    row: dict = field(default_factory=dict)  # the pair and the LLM's verdict, as pushed


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


def pull(dataset_name: str, config: ArgillaConfig, policy: str = "majority") -> dict[str, Decision]:
    """Every reviewer's responses, resolved per record, keyed by record id."""
    if policy not in POLICIES:
        raise ArgillaError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    client = connect(config)
    try:
        dataset = client.datasets(name=dataset_name, workspace=config.workspace)
        if dataset is None:
            raise ArgillaError(f"no dataset {config.workspace}/{dataset_name} at {config.url}")
        usernames = {str(user.id): user.username for user in client.users}
        decisions = {}
        # Read the raw record models: flattened exports can drop responses (argilla#5042), and the SDK's
        # Record objects drop a discard that carries no values (how the web UI sends one).
        offset, page = 0, 1000
        while True:
            models = client.api.records.list(dataset.id, offset=offset, limit=page, with_suggestions=False,
                                             with_responses=True)
            for model in models:
                decision = _decide(model.responses or [], usernames, policy)
                decision.row = _row_from_record(model)
                decisions[str(model.external_id)] = decision
            if len(models) < page:
                break
            offset += page
    except ArgillaError:
        raise
    except Exception as exc:
        raise _failure(config, f"pulling {dataset_name}", exc) from None
    return decisions


def _row_from_record(model) -> dict:
    fields, metadata = model.fields or {}, model.metadata or {}
    if isinstance(metadata, list):  # the API model holds MetadataModel(name, value) items
        metadata = {m.name: m.value for m in metadata}
    return {
        "instruction": fields.get("instruction"),
        "generation": fields.get("generation"),
        "score": metadata.get("llm_score"),
        "expected_score": metadata.get("expected_score"),
        "reason": fields.get("judge_reason", ""),
        "model_name": metadata.get("model_name"),
        "status": metadata.get("status"),
    }


def _decide(responses: list, usernames: dict[str, str], policy: str) -> Decision:
    votes: dict[str, str] = {}
    scores: list[int] = []
    notes: list[str] = []
    drafts: list[str] = []
    by_user: dict[str, dict] = {}
    for response in responses:
        user = usernames.get(str(response.user_id), str(response.user_id))
        entry = by_user.setdefault(user, {"status": str(getattr(response.status, "value", response.status))})
        for question, answer in (response.values or {}).items():
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
            scores.append(int(entry["score"]))
        if entry.get("note"):
            notes.append(f"{user}: {entry['note']}")
    human_score = int(round(sorted(scores)[len(scores) // 2])) if scores else None
    return Decision(resolve(votes, policy), human_score, "\n".join(notes), ", ".join(sorted(votes)), votes, drafts)


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
        llm_keep = bool(judge_keeps(row, threshold, by))
        out["final_keep"] = out["human_keep"] if out["human_keep"] is not None else llm_keep
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
