"""Review budgets: which pairs are worth a reviewer's minute, and what their verdicts say about the rest.

A team can judge 100,000 pairs and review perhaps 300. This module spends that budget well and turns it
into numbers with honest intervals (docs/review.md has the method and why):

- `plan`: a stratified sample across bands of the judge's measure (expected score where there is one, else
  score), equal per band so every candidate threshold can be estimated, plus an optional share near the
  current threshold where a human label changes the most. Every row carries its band (`stratum`) and its
  inclusion probability. Deterministic for a seed.
- `estimate`: precision and recall of the kept set at a threshold, from the reviewed rows, post-stratified by
  band and by kept/discarded (both known for every row), with Wilson intervals at the design's effective
  sample size.
- `choose_threshold`: the threshold with the largest kept set whose precision's lower bound meets a target.
- `calibration_curve`, `precision_recall_curve`, and
  `reviewer_agreement` (Cohen's kappa on the overlap) for the faces.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import pandas as pd

from backtrans.decisions import check_measure, human_keep, judge_keeps, measure_in
from backtrans.records import missing

Z95 = 1.959963984540054
EXPECTED_BAND = 0.5  # width of an expected-score band
ALIGNED_BAND = 0.1  # ... and of an aligned-score (probability) band


# --- the measure and its bands ------------------------------------------------------------------------------


def _frame(rows: Iterable[dict] | pd.DataFrame) -> pd.DataFrame:
    frame = rows.copy() if isinstance(rows, pd.DataFrame) else pd.DataFrame(list(rows))
    return frame.reset_index(drop=True)


def measure_of(frame: pd.DataFrame, by: str | None = None) -> str:
    """`by` when given; else the measure the keep rule would choose for this table."""
    return check_measure(by) if by is not None else measure_in(frame)


def _values(frame: pd.DataFrame, by: str) -> pd.Series:
    """The measure per row; where a row lacks an expected score, its score stands in (as the keep rule does)."""
    score = pd.to_numeric(frame.get("score", pd.Series(index=frame.index, dtype=float)), errors="coerce")
    if by == "aligned_score":  # a probability, with no score to stand in for it
        return pd.to_numeric(frame.get("aligned_score", pd.Series(index=frame.index, dtype=float)),
                             errors="coerce").astype(float)
    if by == "expected_score":
        return pd.to_numeric(frame["expected_score"], errors="coerce").fillna(score).astype(float)
    return score.astype(float)


def band_of(value: float, by: str) -> str:
    if missing(value):
        return "unscored"
    if by == "score":
        return f"score {int(value)}"
    width = ALIGNED_BAND if by == "aligned_score" else EXPECTED_BAND
    low = math.floor(round(value / width, 9)) * width
    if by == "aligned_score":
        low = min(low, 1 - width)  # a probability of 1 sits in the top band
    return f"{low:.1f}-{low + width:.1f}"


def _band_low(band: str) -> float:
    return float(band.split()[-1].split("-")[0]) if band != "unscored" else float("-inf")


def strata(frame: pd.DataFrame, by: str) -> pd.Series:
    """Each row's band. A plan's own `stratum` column wins, so estimates follow the design that drew the sample."""
    if "stratum" in frame and frame["stratum"].notna().all():
        return frame["stratum"].astype(str)
    return _values(frame, by).map(lambda v: band_of(v, by))


# --- the plan ----------------------------------------------------------------------------------------------


@dataclass
class PlanSummary:
    by: str
    budget: int
    planned: int
    population: int
    near_threshold: float | None
    overlap: int
    bands: dict[str, dict[str, float]] = field(default_factory=dict)  # band -> {rows, planned, inclusion_prob}

    def describe(self) -> str:
        """The design in words, for the dataset's guidelines and for people."""
        lines = [f"Review plan: {self.planned} of {self.population} pairs, stratified by {self.by.replace('_', ' ')} "
                 f"band (equal share per band" + (f", extra share near the threshold {self.near_threshold:g}"
                                                   if self.near_threshold is not None else "") + ")."]
        lines += [f"- {band}: {int(info['planned'])} of {int(info['rows'])} (inclusion probability "
                  f"{info['inclusion_prob']:.3g})" for band, info in self.bands.items()]
        if self.overlap:
            lines.append(f"{self.overlap} of them go to two reviewers, to measure agreement between reviewers.")
        return "\n".join(lines)


def _allocate(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """An equal share per band, capped at each band's size; what a small band cannot take goes to the others."""
    take = {band: 0 for band in sizes}
    left = budget
    open_bands = [band for band in sizes if sizes[band] > 0]
    while left > 0 and open_bands:
        share = max(1, left // len(open_bands))
        for band in list(open_bands):
            extra = min(share, sizes[band] - take[band], left)
            take[band] += extra
            left -= extra
            if take[band] >= sizes[band]:
                open_bands.remove(band)
            if left <= 0:
                break
    return take


def plan(rows: Iterable[dict] | pd.DataFrame, budget: int, seed: int = 0, by: str | None = None,
         threshold: float | None = None, near_share: float = 0.2, overlap_share: float = 0.1
         ) -> tuple[pd.DataFrame, PlanSummary]:
    """At most `budget` rows to review, each once, with `stratum`, `inclusion_prob` and `overlap` columns.

    `threshold`: the current keep threshold; `near_share` of the budget then goes to the band(s) around it, where a
    human's label changes the most. Unscored rows are never kept by the judge and are not sampled.
    `overlap_share`: that share of the plan is marked for a second reviewer (`overlap`), for reviewer agreement.
    """
    if budget < 1:
        raise ValueError("the review budget must be at least 1")
    frame = _frame(rows)
    by = measure_of(frame, by)
    frame["stratum"] = strata(frame.drop(columns=["stratum"], errors="ignore"), by)
    population = frame[frame["stratum"] != "unscored"]
    sizes = population["stratum"].value_counts().to_dict()
    sizes = dict(sorted(sizes.items(), key=lambda item: _band_low(item[0])))
    near: dict[str, int] = {band: 0 for band in sizes}
    base_budget = budget
    if threshold is not None and near_share > 0 and sizes:
        # the band the threshold falls in and the one just below it: where kept meets discarded
        ordered = list(sizes)
        lows = [_band_low(band) for band in ordered]
        at = max([i for i, low in enumerate(lows) if low <= threshold] or [0])
        around = [ordered[i] for i in (at - 1, at) if 0 <= i < len(ordered)]
        near_budget = int(round(budget * near_share))
        base_budget = budget - near_budget
        for band, count in _allocate({band: sizes[band] for band in around}, near_budget).items():
            near[band] = count
    remaining = {band: sizes[band] - near[band] for band in sizes}
    base = _allocate(remaining, base_budget + (budget - base_budget - sum(near.values())))
    counts = {band: near[band] + base[band] for band in sizes}

    rng = pd.Series(range(len(population)), index=population.index)
    chosen = []
    for number, (band, count) in enumerate(counts.items()):
        members = rng[population["stratum"] == band]
        if count:
            chosen.append(members.sample(n=count, random_state=seed * 1009 + number).index)
    picked = frame.loc[[i for index in chosen for i in index]].copy() if chosen else frame.iloc[0:0].copy()
    picked["inclusion_prob"] = picked["stratum"].map(lambda band: counts[band] / sizes[band])
    picked = picked.sample(frac=1.0, random_state=seed) if len(picked) else picked  # mix bands for reviewers
    overlap = int(round(len(picked) * overlap_share))
    picked["overlap"] = [i < overlap for i in range(len(picked))]
    summary = PlanSummary(by, budget, len(picked), len(population), threshold if near_share > 0 else None, overlap,
                          {band: {"rows": sizes[band], "planned": counts[band],
                                  "inclusion_prob": counts[band] / sizes[band]} for band in sizes})
    return picked.reset_index(drop=True), summary


# --- estimates ---------------------------------------------------------------------------------------------


@dataclass
class Interval:
    estimate: float | None
    low: float | None
    high: float | None


@dataclass
class Report:
    threshold: float
    by: str
    kept: int  # pairs the judge keeps at this threshold (known exactly: every pair has its score)
    population: int
    reviewed: int
    precision: Interval
    recall: Interval
    good_kept: float | None  # the expected number of good pairs kept
    bad_kept: float | None  # ... and of bad pairs let through
    confidence: float | None = None  # with a target: how sure we are that precision meets it
    target_precision: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {k: (asdict(v) if isinstance(v, Interval) else v) for k, v in self.__dict__.items()}

    def describe(self) -> str:
        def pct(interval: Interval) -> str:
            if interval.estimate is None:
                return "n/a"
            return f"{interval.estimate:.1%} (95% interval {interval.low:.1%}-{interval.high:.1%})"

        lines = [f"Threshold {self.threshold:g} by {self.by.replace('_', ' ')}: keeps {self.kept:,} of "
                 f"{self.population:,} pairs; {self.reviewed} reviewed.",
                 f"  precision {pct(self.precision)}", f"  recall    {pct(self.recall)}"]
        if self.good_kept is not None:
            lines.append(f"  expected good pairs kept {self.good_kept:,.0f}, "
                         f"bad pairs let through {self.bad_kept:,.0f}")
        if self.target_precision is not None and self.confidence is not None:
            lines.append(f"  P(precision >= {self.target_precision:.0%}) ≈ {self.confidence:.0%}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def wilson(p: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion p seen over n (n may be an effective, fractional size)."""
    if n <= 0:
        return 0.0, 1.0
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _reviewed(frame: pd.DataFrame) -> pd.Series:
    if "human_keep" not in frame:
        return pd.Series(False, index=frame.index)
    return ~frame["human_keep"].map(missing).astype(bool)


def _total(cells: list[tuple[int, int, int]]) -> tuple[float, float, float, list[str]]:
    """Estimated good pairs over cells of (population size, reviewed, reviewed good): the total, its variance, and
    the total at smoothed rates.

    Each cell's variance uses a Laplace-smoothed rate, (good + 1) / (reviewed + 2): a cell whose reviews were all
    good (or all bad) is not certain, and an interval must not collapse to a point. A cell with no review at all
    takes the pooled rate and the widest variance.
    """
    reviewed_all = sum(n for _, n, _ in cells)
    pooled = (sum(x for _, _, x in cells) + 1) / (reviewed_all + 2)
    total = variance = smoothed_total = 0.0
    notes = []
    for size, n, good in cells:
        if size == 0:
            continue
        if n == 0:
            total += size * pooled
            smoothed_total += size * pooled
            variance += size * size * 0.25
            notes.append(f"{size} pairs in a band with no review: their rate is assumed, and the interval widened")
            continue
        smoothed = (good + 1) / (n + 2)
        fpc = max(0.0, 1 - n / size)
        total += size * good / n
        smoothed_total += size * smoothed
        variance += size * size * fpc * smoothed * (1 - smoothed) / n
    return total, variance, smoothed_total, notes


def _interval(estimate: float, variance: float, smoothed: float) -> Interval:
    """Wilson at the design's effective sample size p~(1-p~)/Var (Kish), with p~ the smoothed estimate the
    variance was computed at: for one simple random sample this is n (over the finite-population correction)."""
    if variance <= 0:
        return Interval(estimate, estimate, estimate)
    p = min(max(smoothed, 1e-9), 1 - 1e-9)
    low, high = wilson(estimate, p * (1 - p) / variance)
    return Interval(estimate, min(low, estimate), max(high, estimate))


class ReviewError(ValueError):
    """Data the estimates cannot be honest about. The message says what to give instead."""


def check_population(rows: Iterable[dict] | pd.DataFrame) -> None:
    """Estimates need every judged pair, reviewed or not: the reviewed sample alone over-weights the bands the
    plan over-sampled. A file of plan rows only, all reviewed, is refused."""
    frame = _frame(rows)
    if "inclusion_prob" in frame and len(frame) and _reviewed(frame).all():
        probabilities = pd.to_numeric(frame["inclusion_prob"], errors="coerce")
        if (probabilities < 1).any():
            raise ReviewError("every row here is a reviewed row of a review plan: give the whole scored file with "
                              "the decisions merged in (`argilla pull --scored SCORED`), so each band's size is known")


def estimate(rows: Iterable[dict] | pd.DataFrame, threshold: float, by: str | None = None) -> Report:
    """Precision and recall of the judge's kept set at `threshold`, from the reviewed rows (`human_keep`).

    Post-stratified by band and by kept/discarded: both are known for every row, so the estimate is unbiased for
    any threshold when reviews were drawn at random within bands, as `plan` draws them.
    """
    frame = _frame(rows)
    by = measure_of(frame, by)
    values = _values(frame, by)
    frame = frame[values.notna()].copy()
    values = values[values.notna()]
    frame["_band"] = strata(frame, by)
    frame["_kept"] = values >= threshold
    reviewed = _reviewed(frame)
    frame["_good"] = frame["human_keep"].where(reviewed, False).astype(bool) if "human_keep" in frame else False
    cells: dict[bool, list[tuple[int, int, int]]] = {True: [], False: []}
    for (_, kept), group in frame.groupby(["_band", "_kept"]):
        seen = group[reviewed.loc[group.index]]
        cells[bool(kept)].append((len(group), len(seen), int(seen["_good"].sum())))
    kept_count = int(frame["_kept"].sum())
    good_kept, var_kept, smooth_kept, notes = _total(cells[True])
    good_discarded, var_discarded, smooth_discarded, more = _total(cells[False])
    notes += more
    n_reviewed = int(reviewed.sum())
    if n_reviewed == 0:
        return Report(threshold, by, kept_count, len(frame), 0, Interval(None, None, None),
                      Interval(None, None, None), None, None, notes=["no reviewed rows"])
    precision = (_interval(good_kept / kept_count, var_kept / kept_count**2, smooth_kept / kept_count)
                 if kept_count else Interval(None, None, None))
    good = good_kept + good_discarded
    if good > 0:
        # the delta method for a ratio of two independent totals, at the smoothed rates
        smooth_good = smooth_kept + smooth_discarded
        variance = (smooth_discarded**2 * var_kept + smooth_kept**2 * var_discarded) / smooth_good**4
        recall = _interval(good_kept / good, variance, smooth_kept / smooth_good)
    else:
        recall = Interval(None, None, None)
    return Report(threshold, by, kept_count, len(frame), n_reviewed, precision, recall,
                  good_kept if kept_count else 0.0, (kept_count - good_kept) if kept_count else 0.0,
                  notes=sorted(set(notes)))


def candidate_thresholds(rows: Iterable[dict] | pd.DataFrame, by: str | None = None) -> list[float]:
    frame = _frame(rows)
    by = measure_of(frame, by)
    values = _values(frame, by).dropna()
    if values.empty:
        return []
    if by == "score":
        return sorted({float(v) for v in values.unique()})
    low, high = math.floor(values.min() * 10) / 10, math.ceil(values.max() * 10) / 10
    return [round(low + i / 10, 1) for i in range(int(round((high - low) * 10)) + 1)]


def _confidence(report: Report, target: float) -> float | None:
    interval = report.precision
    if interval.estimate is None:
        return None
    spread = (interval.high - interval.low) / (2 * Z95)
    if spread <= 0:
        return 1.0 if interval.estimate >= target else 0.0
    return 0.5 * (1 + math.erf((interval.estimate - target) / (spread * math.sqrt(2))))


def choose_threshold(rows: Iterable[dict] | pd.DataFrame, target_precision: float, by: str | None = None
                     ) -> Report | None:
    """The threshold that keeps the most pairs while the precision's 95% lower bound meets the target.

    Conservative on purpose: a threshold whose point estimate merely touches the target would miss it about half
    the time. Returns None when no threshold can be shown to meet it.
    """
    frame = _frame(rows)
    best = None
    for threshold in candidate_thresholds(frame, by):
        report = estimate(frame, threshold, by)
        if report.precision.low is None or report.precision.low < target_precision:
            continue
        if best is None or report.kept > best.kept:
            best = report
    if best is not None:
        best.target_precision = target_precision
        best.confidence = _confidence(best, target_precision)
    return best


# --- curves for the faces --------------------------------------------------------------------------------


def calibration_curve(rows: Iterable[dict] | pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Keep rate by band among reviewed rows, with Wilson intervals: how the judge's measure maps to human keeps."""
    frame = _frame(rows)
    by = measure_of(frame, by)
    frame = frame[_values(frame, by).notna()].copy()
    frame["_band"] = strata(frame, by)
    reviewed = _reviewed(frame)
    out = []
    for band, group in frame[reviewed].groupby("_band"):
        n, good = len(group), int(group["human_keep"].astype(bool).sum())
        low, high = wilson(good / n, n)
        out.append({"band": band, "low_edge": _band_low(band), "reviewed": n, "keep_rate": good / n,
                    "low": low, "high": high})
    return pd.DataFrame(out, columns=["band", "low_edge", "reviewed", "keep_rate", "low", "high"]).sort_values(
        "low_edge").reset_index(drop=True)


def precision_recall_curve(rows: Iterable[dict] | pd.DataFrame, by: str | None = None) -> pd.DataFrame:
    """Precision and recall (with 95% intervals) and the kept count at every candidate threshold, long-form:
    one row per (threshold, metric), ready for a line plot with an interval band."""
    frame = _frame(rows)
    out = []
    for threshold in candidate_thresholds(frame, by):
        report = estimate(frame, threshold, by)
        for metric, interval in (("precision", report.precision), ("recall", report.recall)):
            if interval.estimate is not None:
                out.append({"threshold": threshold, "metric": metric, "estimate": interval.estimate,
                            "low": interval.low, "high": interval.high, "kept": report.kept})
    return pd.DataFrame(out, columns=["threshold", "metric", "estimate", "low", "high", "kept"])


# --- more than one reviewer --------------------------------------------------------------------------------


def _votes(value: object) -> dict[str, bool]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    if not isinstance(value, dict):
        return {}
    out = {}
    for reviewer, vote in value.items():
        if isinstance(vote, bool):
            out[str(reviewer)] = vote
        elif str(vote).lower() in ("keep", "discard"):
            out[str(reviewer)] = str(vote).lower() == "keep"
    return out


def cohen_kappa(pairs: list[tuple[bool, bool]]) -> float | None:
    """Cohen's kappa of two raters' keep/discard over the same items; None for no items. Where chance agreement is
    certain (both raters gave every item one and the same label) agreement is perfect, and kappa is 1."""
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(a == b for a, b in pairs) / n
    first, second = sum(a for a, _ in pairs) / n, sum(b for _, b in pairs) / n
    chance = first * second + (1 - first) * (1 - second)
    return 1.0 if chance == 1 else (observed - chance) / (1 - chance)


@dataclass
class ReviewerAgreement:
    items: int  # records with two or more reviewers' votes
    agreement: float | None  # share of those on which the first two reviewers agree
    kappa: Interval
    per_reviewer: dict[str, int]  # decisions each reviewer submitted


def reviewer_agreement(rows: Iterable[dict] | pd.DataFrame, seed: int = 0, resamples: int = 1000
                       ) -> ReviewerAgreement:
    """Cohen's kappa between two reviewers on the records both reviewed (`human_votes`: reviewer -> vote),
    with a bootstrap 95% interval over those records."""
    frame = _frame(rows)
    column = "human_votes" if "human_votes" in frame else ("votes" if "votes" in frame else None)
    per_reviewer: dict[str, int] = {}
    pairs: list[tuple[bool, bool]] = []
    for value in frame[column] if column else ():
        votes = _votes(value)
        for reviewer in votes:
            per_reviewer[reviewer] = per_reviewer.get(reviewer, 0) + 1
        if len(votes) >= 2:
            first, second = sorted(votes)[:2]
            pairs.append((votes[first], votes[second]))
    kappa = cohen_kappa(pairs)
    low = high = None
    if pairs and kappa is not None:
        import random

        rng = random.Random(seed)
        draws = sorted(k for k in (cohen_kappa([rng.choice(pairs) for _ in pairs]) for _ in range(resamples))
                       if k is not None)
        low, high = draws[int(0.025 * len(draws))], draws[int(0.975 * len(draws)) - 1]
    agreement = sum(a == b for a, b in pairs) / len(pairs) if pairs else None
    return ReviewerAgreement(len(pairs), agreement, Interval(kappa, low, high), dict(sorted(per_reviewer.items())))


# --- the judge against the reviewers -----------------------------------------------------------------------


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (ties at their average rank); None under two pairs or for a constant side."""
    if len(xs) < 2:
        return None
    # Pearson's of the ranks: pandas' own method="spearman" needs scipy, which the core does not.
    value = pd.Series(xs, dtype=float).rank().corr(pd.Series(ys, dtype=float).rank())
    return None if math.isnan(value) else round(float(value), 4)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def judge_agreement(rows: Iterable[dict], threshold: float, by: str = "score",
                    key: Callable[[dict], object] | None = None) -> dict:
    """The judge's keep (its measure >= threshold) against the reviewers' (`human_keep`) over the rows both
    decided: precision, recall and F1 of the judge's keep, accuracy, Cohen's kappa, the confusion matrix, and
    Spearman's correlation of `score` with `human_score` where both are numbers. Plain data, None where a figure
    is undefined. `disagreements` names the rows where the two differ by `key(row)` (default: the row's position).
    """
    decided: list[tuple[bool, bool]] = []  # (judge keeps, reviewers keep)
    disagreements = []
    scores = []
    for position, row in enumerate(rows):
        human, judge = human_keep(row), judge_keeps(row, threshold, by)
        if human is None or judge is None:
            continue
        decided.append((judge, human))
        if judge != human:
            disagreements.append(key(row) if key else position)
        scores.append((row.get("score"), row.get("human_score")))
    cells = Counter(decided)
    tp, fp, fn, tn = cells[True, True], cells[True, False], cells[False, True], cells[False, False]
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    both = pd.DataFrame(scores, columns=["judge", "human"], dtype=object).apply(pd.to_numeric, errors="coerce")
    both = both.dropna()
    return {
        "threshold": threshold,
        "by": by,
        "reviewed": len(decided),
        "precision": _round(precision),
        "recall": _round(recall),
        "f1": _round(f1),
        "accuracy": _round((tp + tn) / len(decided) if decided else None),
        "cohen_kappa": _round(cohen_kappa(decided)),
        "confusion": {"llm_keep_human_keep": tp, "llm_keep_human_discard": fp,
                      "llm_discard_human_keep": fn, "llm_discard_human_discard": tn},
        "spearman": spearman(list(both["judge"]), list(both["human"])),
        "scored_by_both": len(both),
        "disagreements": disagreements,
    }
