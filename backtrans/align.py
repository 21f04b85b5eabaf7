"""The judge learns from its reviewers: calibration on their decisions, and their overrulings as examples.

After a pull, some rows carry a reviewer's decision (`human_keep`, and maybe `human_note`). Two things are
learned from them, and reported on reviewed rows the fit did not see (k-fold cross-validation):

- **Calibration** (`fit`, no calls): P(a reviewer keeps the pair | the judge's expected score and score), fitted
  monotone (isotonic, pool-adjacent-violators) or logistic (two features, L2). It is written as `aligned_score`,
  a measure the keep rule, the review estimates and export read like the others (keep: `aligned_score` >= 0.5).
- **Examples** (`overruled`, `backtrans.judge.examples_prefix`): the reviewed pairs where the reviewers overruled
  the judge, with their notes, in one fixed block ahead of the judge's template. Re-judging through the run store
  with that judge (FileSession.align with `rejudge`) costs one call per row once, and nothing on a rerun.

Too few reviews to say anything is refused with `AlignError`, naming how many there are and how many are needed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

from backtrans.decisions import (
    ALIGNED_THRESHOLD,
    check_measure,
    final_keep,
    human_keep,
    judge_keeps,
    judge_measure,
)
from backtrans.records import missing

MIN_REVIEWS = 20  # reviewed, judged rows needed before anything is fitted
MIN_EACH = 5  # ... with at least this many kept and this many discarded
METHODS = ("isotonic", "logistic")
EXAMPLE_CHARS = 700  # an example's instruction and answer are cut to this many characters each


class AlignError(ValueError):
    """Reviews that cannot support an alignment; the message says how many there are and what is needed."""


# --- the reviewed rows -----------------------------------------------------------------------------------------


def reviewed(rows: Iterable[dict], by: str = "expected_score") -> list[dict]:
    """Rows with a reviewer's decision and a judge's measure."""
    return [row for row in rows if human_keep(row) is not None and judge_measure(row, by) is not None]


def check_reviews(rows: Sequence[dict], by: str = "expected_score", minimum: int = MIN_REVIEWS,
                  each: int = MIN_EACH) -> None:
    """Refuse, with the counts, a set of reviews too small or too one-sided to fit or to measure anything."""
    seen = reviewed(rows, by)
    kept = sum(bool(human_keep(row)) for row in seen)
    discarded = len(seen) - kept
    if len(seen) < minimum or kept < each or discarded < each:
        raise AlignError(
            f"{len(seen)} reviewed pairs with a judge's score ({kept} kept, {discarded} discarded): aligning the "
            f"judge needs at least {minimum}, with at least {each} kept and {each} discarded, to say anything "
            "about pairs the reviewers did not see. Review more pairs (`review plan`, then `argilla pull "
            "--scored`), and align again.")


def _features(row: dict, by: str) -> tuple[float, float]:
    """(the judge's measure, its integer score): the expected score and the score, or the score twice."""
    measure = judge_measure(row, by)
    score = row.get("score")
    return float(measure), float(measure if missing(score) else score)


# --- calibration --------------------------------------------------------------------------------------------


@dataclass
class Calibration:
    """P(reviewer keeps | judge) as fitted on reviewed rows; `predict` gives it for any judged row."""

    method: str
    by: str  # the judge's measure it reads (expected_score, else score)
    reviewed: int
    kept: int
    steps: list[tuple[float, float]] = field(default_factory=list)  # isotonic: (lowest measure of a block, P)
    weights: list[float] = field(default_factory=list)  # logistic: intercept, measure, score (standardised)
    scale: list[tuple[float, float]] = field(default_factory=list)  # logistic: (mean, sd) of each feature

    def predict(self, row: dict) -> float | None:
        if judge_measure(row, self.by) is None:
            return None
        measure, score = _features(row, self.by)
        if self.method == "isotonic":
            probability = self.steps[0][1]
            for low, p in self.steps:
                if measure >= low:
                    probability = p
            return round(probability, 4)
        z = [(value - mean) / sd for value, (mean, sd) in zip((measure, score), self.scale, strict=True)]
        logit = self.weights[0] + sum(w * x for w, x in zip(self.weights[1:], z, strict=True))
        return round(1 / (1 + math.exp(-logit)), 4)

    def to_json(self) -> dict:
        return asdict(self)


def fit(rows: Iterable[dict], method: str = "isotonic", by: str = "expected_score",
        minimum: int = MIN_REVIEWS, each: int = MIN_EACH) -> Calibration:
    """Fit P(keep | judge) on the reviewed rows of `rows` (unreviewed ones are ignored). No LLM call."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration {method!r}; one of {', '.join(METHODS)}")
    by = check_measure(by)
    rows = list(rows)
    check_reviews(rows, by, minimum, each)
    seen = reviewed(rows, by)
    xs = [_features(row, by) for row in seen]
    ys = [1.0 if human_keep(row) else 0.0 for row in seen]
    calibration = Calibration(method, by, len(seen), int(sum(ys)))
    if method == "isotonic":
        calibration.steps = _isotonic([x[0] for x in xs], ys)
    else:
        calibration.weights, calibration.scale = _logistic(xs, ys)
    return calibration


def _isotonic(xs: list[float], ys: list[float]) -> list[tuple[float, float]]:
    """Pool-adjacent-violators on (x, y), ties pooled first; each block's rate is Laplace-smoothed, (k+1)/(n+2), so
    a block whose reviews all agree still is not a certainty. Returns (lowest x of the block, P) in rising x."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys, strict=True):
        by_x.setdefault(x, []).append(y)
    blocks = [[x, sum(v), len(v)] for x, v in sorted(by_x.items())]  # [lowest x, keeps, count]
    merged: list[list[float]] = []
    for block in blocks:
        merged.append(block)
        while len(merged) > 1 and merged[-2][1] / merged[-2][2] >= merged[-1][1] / merged[-1][2]:
            last = merged.pop()
            merged[-1][1] += last[1]
            merged[-1][2] += last[2]
    steps, floor = [], 0.0
    for x, keeps, count in merged:
        floor = max(floor, (keeps + 1) / (count + 2))  # smoothing blocks of other sizes must not undo the order
        steps.append((x, floor))
    return steps


def _logistic(xs: list[tuple[float, float]], ys: list[float], l2: float = 1.0, steps: int = 50
              ) -> tuple[list[float], list[tuple[float, float]]]:
    """L2-regularised logistic regression by Newton's method on standardised features (the intercept free)."""
    columns = list(zip(*xs, strict=True))
    scale = []
    for column in columns:
        mean = sum(column) / len(column)
        sd = math.sqrt(sum((v - mean) ** 2 for v in column) / len(column)) or 1.0
        scale.append((mean, sd))
    design = [[1.0] + [(v - m) / s for v, (m, s) in zip(x, scale, strict=True)] for x in xs]
    k = len(design[0])
    w = [0.0] * k
    for _ in range(steps):
        gradient = [0.0] * k
        hessian = [[0.0] * k for _ in range(k)]
        for x, y in zip(design, ys, strict=True):
            p = 1 / (1 + math.exp(-max(-30.0, min(30.0, sum(a * b for a, b in zip(w, x, strict=True))))))
            for i in range(k):
                gradient[i] += (p - y) * x[i]
                for j in range(k):
                    hessian[i][j] += p * (1 - p) * x[i] * x[j]
        for i in range(1, k):
            gradient[i] += l2 * w[i]
            hessian[i][i] += l2
        hessian[0][0] += 1e-9
        delta = _solve(hessian, gradient)
        w = [a - b for a, b in zip(w, delta, strict=True)]
        if max(abs(d) for d in delta) < 1e-8:
            break
    return w, scale


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float]:
    """Gaussian elimination with partial pivoting, for the small Newton systems above."""
    n = len(vector)
    a = [row[:] + [value] for row, value in zip(matrix, vector, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[pivot] = a[pivot], a[col]
        if abs(a[col][col]) < 1e-12:
            continue
        for r in range(n):
            if r != col:
                factor = a[r][col] / a[col][col]
                a[r] = [x - factor * y for x, y in zip(a[r], a[col], strict=True)]
    return [a[i][n] / a[i][i] if abs(a[i][i]) >= 1e-12 else 0.0 for i in range(n)]


def apply(rows: Iterable[dict], calibration: Calibration) -> list[dict]:
    """The rows with `aligned_score` (None where the judge gave no score), and `final_keep` decided again: the
    reviewer's decision where there is one, else aligned_score >= 0.5."""
    out = []
    for row in rows:
        row = {**row, "aligned_score": calibration.predict(row)}
        row["final_keep"] = final_keep(row, ALIGNED_THRESHOLD, "aligned_score", afresh=True)
        out.append(row)
    return out


# --- examples -------------------------------------------------------------------------------------------------


def overruled(rows: Iterable[dict], threshold: float, by: str = "expected_score", limit: int = 6) -> list[dict]:
    """The reviewed pairs where the reviewers' decision went against the judge's keep at `threshold`, as few-shot
    examples: the judge's worst misses first (farthest from the threshold), alternating kept and discarded ones so
    that neither kind crowds out the other, each cut to EXAMPLE_CHARS. Deterministic for the same rows."""
    misses: dict[bool, list[tuple[float, dict]]] = {True: [], False: []}
    for row in reviewed(rows, by):
        keep = bool(human_keep(row))
        if judge_keeps(row, threshold, by) != keep:
            misses[keep].append((abs(judge_measure(row, by) - threshold), row))
    for kind in misses:
        misses[kind].sort(key=lambda item: (-item[0], str(item[1].get("instruction"))))
    picked: list[dict] = []
    queues = [misses[False], misses[True]]  # a judge that keeps too much learns first from what reviewers dropped
    while len(picked) < limit and any(queues):
        for queue in queues:
            if queue and len(picked) < limit:
                _, row = queue.pop(0)
                note = row.get("human_note")
                picked.append({"instruction": _cut(row["instruction"]), "generation": _cut(row["generation"]),
                               "keep": bool(human_keep(row)), "note": "" if missing(note) else str(note)})
    return picked


def _cut(text: object) -> str:
    text = str(text or "").strip()
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1].rstrip() + "…"


# --- agreement with the reviewers, on rows a fit did not see ------------------------------------------------


def auc(values: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(a kept pair's value > a discarded pair's), ties counting half (Mann-Whitney, by ranks)."""
    pairs = sorted(zip(values, labels, strict=True), key=lambda item: item[0])
    positives = sum(1 for _, y in pairs if y)
    negatives = len(pairs) - positives
    if not positives or not negatives:
        return None
    rank_sum, i = 0.0, 0
    while i < len(pairs):
        j = i
        while j < len(pairs) and pairs[j][0] == pairs[i][0]:
            j += 1
        average_rank = (i + j + 1) / 2  # ranks i+1 .. j
        rank_sum += average_rank * sum(1 for _, y in pairs[i:j] if y)
        i = j
    return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def _decision_figures(decisions: Sequence[bool], truth: Sequence[bool]) -> dict[str, float | None]:
    from backtrans.review import cohen_kappa

    true_keep = sum(d and t for d, t in zip(decisions, truth, strict=True))
    kept, good = sum(decisions), sum(truth)
    return {
        "precision": true_keep / kept if kept else None,
        "recall": true_keep / good if good else None,
        "kappa": cohen_kappa(list(zip(decisions, truth, strict=True))),
        "agreement": sum(d == t for d, t in zip(decisions, truth, strict=True)) / len(truth) if truth else None,
    }


METRICS = ("auc", "precision", "recall", "kappa", "agreement")


def agreement(values: Sequence[float], decisions: Sequence[bool], truth: Sequence[bool]) -> dict[str, float | None]:
    """AUC of `values` and precision, recall, Cohen's kappa and raw agreement of `decisions`, against `truth`."""
    return {"auc": auc(values, truth), **_decision_figures(decisions, truth)}


@dataclass
class Estimate:
    estimate: float | None
    low: float | None
    high: float | None


@dataclass
class AlignmentReport:
    method: str
    by: str
    threshold: float  # the judge's keep threshold ("before")
    reviewed: int
    kept: int
    folds: int
    before: dict[str, Estimate]  # the judge as it is: its measure, kept at the threshold
    after: dict[str, Estimate]  # the aligned judge: aligned_score, kept at 0.5
    change: dict[str, Estimate]  # after - before, paired over the same held-out rows
    examples: int = 0
    cost: dict | None = None  # with re-judging: calls, tokens, rows from the store, seconds

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        def fmt(e: Estimate, signed: bool = False) -> str:
            if e.estimate is None:
                return "n/a"
            sign = "+" if signed else ""
            return f"{e.estimate:{sign}.2f} ({e.low:{sign}.2f} to {e.high:{sign}.2f})"

        lines = [f"Aligned on {self.reviewed} reviewed pairs ({self.kept} kept), {self.method} calibration of "
                 f"{self.by.replace('_', ' ')}" + (f" and {self.examples} reviewed examples in the prompt"
                                                    if self.examples else "") + ".",
                 f"Agreement with the reviewers on held-out reviewed pairs ({self.folds}-fold cross-validation, "
                 "95% bootstrap intervals):",
                 f"  {'':10} {'before (' + self.by + ' >= ' + format(self.threshold, 'g') + ')':32} "
                 f"{'after (aligned_score >= 0.5)':32} change"]
        for metric in METRICS:
            lines.append(f"  {metric:10} {fmt(self.before[metric]):32} {fmt(self.after[metric]):32} "
                         f"{fmt(self.change[metric], signed=True)}")
        if self.cost:
            lines.append(f"Re-judging cost: {self.cost['calls']} calls, {self.cost['tokens']:,} tokens, "
                         f"{self.cost['cached']} rows from the store, {self.cost['seconds']:.1f}s.")
        return "\n".join(lines)


def folds_of(rows: Sequence[dict], folds: int = 5, seed: int = 0) -> list[int]:
    """A fold number for every row, stratified by the reviewer's decision, reproducible for a seed."""
    order: dict[bool, list[int]] = {True: [], False: []}
    for index, row in enumerate(rows):
        order[bool(human_keep(row))].append(index)
    rng = random.Random(seed)
    assignment = [0] * len(rows)
    offset = 0
    for kind in (True, False):
        rng.shuffle(order[kind])
        for position, index in enumerate(order[kind]):
            assignment[index] = (position + offset) % folds
        offset += len(order[kind])
    return assignment


def held_out_scores(rows: Sequence[dict], method: str = "isotonic", by: str = "expected_score", folds: int = 5,
                    seed: int = 0) -> list[float]:
    """Each reviewed row's aligned_score from a calibration fitted without its fold."""
    assignment = folds_of(rows, folds, seed)
    out: list[float] = [0.5] * len(rows)
    for fold in range(folds):
        train = [row for row, f in zip(rows, assignment, strict=True) if f != fold]
        calibration = fit(train, method, by, minimum=2, each=1)
        for index, row in enumerate(rows):
            if assignment[index] == fold:
                out[index] = calibration.predict(row)
    return out


def compare(before_values: Sequence[float], before_keep: Sequence[bool], after_values: Sequence[float],
            truth: Sequence[bool], seed: int = 0, resamples: int = 1000) -> tuple[dict, dict, dict]:
    """Before, after and the paired change, each metric with a 95% bootstrap interval over the rows."""
    after_keep = [value >= ALIGNED_THRESHOLD for value in after_values]
    point_before = agreement(before_values, before_keep, truth)
    point_after = agreement(after_values, after_keep, truth)
    rng = random.Random(seed)
    n = len(truth)
    sides = ("before", "after", "change")
    draws: dict[str, dict[str, list[float]]] = {side: {m: [] for m in METRICS} for side in sides}
    for _ in range(resamples):
        picks = [rng.randrange(n) for _ in range(n)]
        t = [truth[i] for i in picks]
        b = agreement([before_values[i] for i in picks], [before_keep[i] for i in picks], t)
        a = agreement([after_values[i] for i in picks], [after_keep[i] for i in picks], t)
        for metric in METRICS:
            if b[metric] is not None:
                draws["before"][metric].append(b[metric])
            if a[metric] is not None:
                draws["after"][metric].append(a[metric])
            if a[metric] is not None and b[metric] is not None:
                draws["change"][metric].append(a[metric] - b[metric])

    def interval(point: float | None, values: list[float]) -> Estimate:
        if point is None or not values:
            return Estimate(point, None, None)
        values.sort()
        return Estimate(round(point, 4), round(values[int(0.025 * len(values))], 4),
                        round(values[max(0, int(0.975 * len(values)) - 1)], 4))

    change_point = {m: (None if point_after[m] is None or point_before[m] is None else point_after[m] - point_before[m])
                    for m in METRICS}
    return ({m: interval(point_before[m], draws["before"][m]) for m in METRICS},
            {m: interval(point_after[m], draws["after"][m]) for m in METRICS},
            {m: interval(change_point[m], draws["change"][m]) for m in METRICS})


def report(rows: Iterable[dict], threshold: float, method: str = "isotonic", by: str = "expected_score",
           folds: int = 5, seed: int = 0, after_values: Sequence[float] | None = None, examples: int = 0,
           resamples: int = 1000) -> AlignmentReport:
    """How much closer to the reviewers the aligned judge is, on reviewed rows each fit did not see.

    `after_values`: the aligned scores of the reviewed rows (in `reviewed(rows)` order) when they come from
    elsewhere (re-judged with examples, then calibrated out of fold); by default, calibration alone."""
    rows = list(rows)
    check_reviews(rows, by)
    seen = reviewed(rows, by)
    folds = max(2, min(folds, sum(bool(human_keep(r)) for r in seen), sum(not human_keep(r) for r in seen)))
    truth = [bool(human_keep(row)) for row in seen]
    before_values = [judge_measure(row, by) for row in seen]
    before_keep = [bool(judge_keeps(row, threshold, by)) for row in seen]
    if after_values is None:
        after_values = held_out_scores(seen, method, by, folds, seed)
    before, after, change = compare(before_values, before_keep, list(after_values), truth, seed, resamples)
    return AlignmentReport(method, by, threshold, len(seen), sum(truth), folds, before, after, change, examples)


# --- the whole step: calibration, and with a judge also the examples ----------------------------------------

# judge(examples, rows) -> one judge result per row (score, expected_score, reason, status, ...), e.g. the rows run
# through a JudgeTask with those examples and a run store (FileSession.align; the app's session the same way).
Judge = Callable[[list[dict], list[dict]], list[dict]]


def _rejudged(row: dict, result: dict) -> dict:
    """The row as the judge with examples scored it (the first judge's columns kept under aligned_* names)."""
    ok = result.get("status") == "ok"
    return {**row, "score": result.get("score") if ok else None,
            "expected_score": result.get("expected_score") if ok else None,
            "aligned_reason": result.get("reason"), "aligned_status": result.get("status")}


def align_rows(rows: Iterable[dict], threshold: float, *, method: str = "isotonic", by: str = "expected_score",
               folds: int = 5, seed: int = 0, judge: Judge | None = None, examples: int = 6,
               resamples: int = 1000
               ) -> tuple[list[dict], AlignmentReport]:
    """Every row with `aligned_score` (and `final_keep` decided again), and the report on held-out reviewed rows.

    Without `judge`: calibration of the judge's own scores (no call). With `judge` (judge(examples, rows) ->
    results): the reviewers' overrulings become examples ahead of the template. Each reviewed row is judged again
    with the examples of the other folds only, so the report never scores a row with its own decision in the
    prompt; the calibration is then fitted on those held-out scores, and the unreviewed rows are judged with the
    examples of every fold. The first judge's columns stay as they were; the new judge's reason is
    `aligned_reason`.
    """
    rows = list(rows)
    by = check_measure(by)
    check_reviews(rows, by)
    if judge is None:
        calibration = fit(rows, method, by)
        return apply(rows, calibration), report(rows, threshold, method, by, folds, seed, resamples=resamples)

    seen = reviewed(rows, by)
    seen_ids = {id(row) for row in seen}
    folds = max(2, min(folds, sum(bool(human_keep(r)) for r in seen), sum(not human_keep(r) for r in seen)))
    assignment = folds_of(seen, folds, seed)
    again: list[dict | None] = [None] * len(seen)
    for fold in range(folds):
        train = [row for row, f in zip(seen, assignment, strict=True) if f != fold]
        held = [i for i, f in enumerate(assignment) if f == fold]
        results = judge(overruled(train, threshold, by, examples), [seen[i] for i in held])
        for i, result in zip(held, results, strict=True):
            again[i] = _rejudged(seen[i], result)
    judged_again = [row for row in again if row is not None and judge_measure(row, by) is not None]
    after_values = held_out_scores(judged_again, method, by, folds, seed)
    # The report compares on the reviewed rows both judges scored.
    kept_rows = [seen[i] for i, row in enumerate(again) if row is not None and judge_measure(row, by) is not None]
    base = report(kept_rows, threshold, method, by, folds, seed, after_values=after_values,
                  examples=len(overruled(seen, threshold, by, examples)), resamples=resamples)
    calibration = fit(judged_again, method, by)
    all_examples = overruled(seen, threshold, by, examples)
    unreviewed = [row for row in rows if id(row) not in seen_ids]
    by_row = {id(row): result for row, result in zip(unreviewed, judge(all_examples, unreviewed) if unreviewed
                                                      else [], strict=True)}
    rejudged_seen = {id(row): new for row, new in zip(seen, again, strict=True)}
    out = []
    for row in rows:
        new = rejudged_seen.get(id(row)) or (_rejudged(row, by_row[id(row)]) if id(row) in by_row else None)
        aligned = calibration.predict(new) if new is not None else None
        merged = {**row, "aligned_score": aligned, "aligned_reason": (new or {}).get("aligned_reason")}
        merged["final_keep"] = final_keep(merged, ALIGNED_THRESHOLD, "aligned_score", afresh=True)
        out.append(merged)
    return out, base
