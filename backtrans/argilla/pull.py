"""Pulling reviewers' decisions back from Argilla: one decision per record under a policy for several reviewers,
merged into the rows, with the judge's agreement with the reviewers (statistics from `review`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from backtrans import review
from backtrans.argilla.columns import DISCARD, KEEP, record_id, row_from_record
from backtrans.argilla.connection import ArgillaConfig, ArgillaError, all_records, connect, failure, find_dataset
from backtrans.argilla.push import OVERLAP_SUFFIX
from backtrans.decisions import DEFAULT_MEASURE, DEFAULT_THRESHOLD, final_keep

POLICIES = ("majority", "unanimous", "any-discard")


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


def pull(dataset_name: str, config: ArgillaConfig, policy: str = "majority") -> dict[str, Decision]:
    """Every reviewer's responses, resolved per record, keyed by record id: every record, page by page."""
    if policy not in POLICIES:
        raise ArgillaError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    client = connect(config)
    try:
        dataset = find_dataset(client, config, dataset_name)
        usernames = {str(user.id): user.username for user in client.users}
        decisions = {}
        # Raw records: flattened exports can drop responses (argilla#5042), and the SDK's Record objects drop
        # a discard that carries no values (how the web UI sends one).
        for item in all_records(client, dataset.id, ("responses",)):
            decision = _decide(item.get("responses") or [], usernames, policy)
            decision.row = row_from_record(item)
            decisions[str(item.get("external_id") or item["id"])] = decision
    except ArgillaError:
        raise
    except Exception as exc:
        raise failure(config, f"pulling {dataset_name}", exc) from None
    return decisions


def pull_plan(dataset_name: str, config: ArgillaConfig, policy: str = "majority") -> dict[str, Decision]:
    """`pull` of a dataset and, where there is one, of its overlap dataset: one decision per record."""
    decisions = pull(dataset_name, config, policy)
    try:
        decisions.update(pull(dataset_name + OVERLAP_SUFFIX, config, policy))
    except ArgillaError as exc:
        if "no dataset" not in str(exc):
            raise
    return decisions


def merge(rows: Iterable[dict], decisions: dict[str, Decision], threshold: float,
          by: str = DEFAULT_MEASURE) -> list[dict]:
    """Adds human_keep, human_score, human_note, reviewer, human_votes and final_keep to each row."""
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


def annotators(decisions: dict[str, Decision]) -> dict[str, dict[str, int]]:
    """Per reviewer, how many records they kept, discarded, and left as a draft."""
    counts: Counter = Counter()
    for decision in decisions.values():
        for user, vote in decision.votes.items():
            counts[(user, vote)] += 1
        for user in decision.drafts:
            counts[(user, "draft")] += 1
    out: dict[str, dict[str, int]] = {}
    for (user, kind), count in sorted(counts.items()):
        out.setdefault(user, {})[kind] = count
    return out


def pull_merged(rows: list[dict] | None, dataset_name: str, config: ArgillaConfig, policy: str = "majority",
                threshold: float = DEFAULT_THRESHOLD, by: str = DEFAULT_MEASURE
                ) -> tuple[dict[str, Decision], list[dict], dict]:
    """Reviewers' decisions merged into `rows` (None: the rows rebuilt from Argilla's records), with the
    agreement report, all numbers (None where undefined): (decisions, merged rows, report). The report is
    `review.judge_agreement`'s, its disagreements named by record id, plus `annotators`."""
    decisions = pull_plan(dataset_name, config, policy)
    merged = merge(rows if rows is not None else [d.row for d in decisions.values()], decisions, threshold, by)
    report = review.judge_agreement(merged, threshold, by, key=record_id)
    report["annotators"] = annotators(decisions)
    return decisions, merged, report


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
