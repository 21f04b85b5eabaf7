"""Self-curation: turn a judge model's reply into a score, a reason and a status.

distilabel takes the FIRST `Score: (\\d)` match, so `**Score:** 5`, `score: 5`, a score written first, an
earlier "Score: 2" inside the reasoning, or `Score: 10` (read as 1) all go wrong there. Here the LAST
score statement wins, markdown and case do not matter, `N/5` and `N out of 5` are understood, and a
value outside the template's range is a parse error rather than a silent wrong number.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from backtrans.llm import Completion, LLMClient, LLMSettings
from backtrans.tasks import REASK_TEMPERATURE, PromptTask
from backtrans.templates import Template

# "Score: 4", "**Score:** **4**", "score - 4/5", "Rating: 4 out of 5", "Score (1-5): 4", "the rating is 4"
_SCORE_STATEMENT = re.compile(
    r"\b(?:score|rating)\b(?:\s*\([^)\n]{0,12}\))?[\s*_:=\-]*(?:is|of|was)?[\s*_:=\-]*"
    r"(?P<value>\d+(?:\.\d+)?)(?!\.\d)(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+))?",
    re.IGNORECASE,
)
# A reply whose last line is only a number: "4", "**4/5**", "4 out of 5."
_BARE_LAST_LINE = re.compile(
    r"[\s*_#>\[\]]*(?P<value>\d+(?:\.\d+)?)(?:\s*(?:/|out\s+of)\s*(?P<scale>\d+))?[\s*_.\]]*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ParsedScore:
    score: int | None
    reason: str
    error: str
    start: int = -1  # character offset of the score's digits in the raw reply, for logprobs

    @property
    def status(self) -> str:
        return "ok" if self.score is not None else "parse_error"


def _check(value: str, scale: str | None, lo: int, hi: int) -> tuple[int | None, str]:
    if scale is not None and int(scale) != hi:
        return None, f"score {value}/{scale} is on another scale than {lo}-{hi}"
    if "." in value:
        number = float(value)
        if not number.is_integer():
            return None, f"score {value} is not a whole number"
    score = int(float(value))
    if not lo <= score <= hi:
        return None, f"score {score} is outside the range {lo}-{hi}"
    return score, ""


def _reason_without(text: str, start: int, end: int) -> str:
    """The reply without its score statement, wherever it sits: before the reason, after it, or on its line."""
    before = text[:start].rstrip(" \t*_#>-:=([")
    after = text[end:].lstrip(" \t*_.:;,-=)]")
    return "\n".join(part.strip() for part in (before, after) if part.strip())


def parse_score(raw: str | None, lo: int = 1, hi: int = 5) -> ParsedScore:
    text = (raw or "").strip()
    if not text:
        return ParsedScore(None, "", "empty reply")
    matches = list(_SCORE_STATEMENT.finditer(text))
    if matches:
        m = matches[-1]
        score, error = _check(m.group("value"), m.group("scale"), lo, hi)
        return ParsedScore(score, _reason_without(text, m.start(), m.end()), error, m.start("value"))
    last_line_start = text.rfind("\n") + 1
    m = _BARE_LAST_LINE.match(text, last_line_start)
    if m:
        score, error = _check(m.group("value"), m.group("scale"), lo, hi)
        return ParsedScore(score, text[:last_line_start].strip(), error, m.start("value"))
    return ParsedScore(None, text, f"no 'Score: N' ({lo}-{hi}) found in the reply")


def expected_score(
    token_logprobs: list[dict] | None, digit_offset: int, lo: int = 1, hi: int = 5
) -> float | None:
    """The probability-weighted score at the token that carries the score's first digit.

    `token_logprobs` is the OpenAI `choices[0].logprobs.content` list ({token, logprob, top_logprobs}).
    Only the alternatives that are digits within the range count; they are renormalised.
    """
    if not token_logprobs or digit_offset < 0:
        return None
    position = 0
    for entry in token_logprobs:
        token = entry.get("token", "")
        if position + len(token) > digit_offset:
            return _digit_expectation(entry, lo, hi)
        position += len(token)
    return None


def _digit_expectation(entry: dict, lo: int, hi: int) -> float | None:
    alternatives = entry.get("top_logprobs") or [entry]
    weights: dict[int, float] = {}
    for alt in alternatives:
        token = str(alt.get("token", "")).strip()
        if token.isdigit() and lo <= int(token) <= hi and alt.get("logprob") is not None:
            weights[int(token)] = weights.get(int(token), 0.0) + math.exp(alt["logprob"])
    total = sum(weights.values())
    if total <= 0:
        return None
    return round(sum(digit * w for digit, w in weights.items()) / total, 4)


_REASON_LABEL = re.compile(r"\A[\s*_#]*(?:reason|explanation)[\s*_]*:[\s*_]*", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*(?=\s|$)")


def tidy_reason(reason: str, cut_off: bool) -> str:
    """The reason as a reader sees it: without a leading "Reason:" label and, where the reply ran into
    max_tokens, without the sentence it was cut off in (marked with an ellipsis when nothing else is left)."""
    reason = _REASON_LABEL.sub("", reason, count=1).strip()
    if cut_off and reason and not _SENTENCE_END.search(reason[-3:] + " "):
        ends = list(_SENTENCE_END.finditer(reason))
        reason = reason[: ends[-1].end()] if ends else reason.rstrip(" ,;:-") + "…"
    return reason


RESULT_COLUMNS = ("score", "reason", "model_name", "expected_score", "raw_output", "status", "error")


def examples_prefix(examples: list[dict]) -> str:
    """Reviewed pairs as a block of examples ahead of the template's own text: the same block for every row, so a
    server's prompt cache (llama.cpp's `cache_prompt`) reads it once. Each example is {instruction, generation,
    keep, note}; the note is the reviewer's, where one was given."""
    if not examples:
        return ""
    lines = ["Reviewers of this data set decided these pairs themselves. Judge the new pair the way they would.", ""]
    for number, example in enumerate(examples, start=1):
        verdict = "KEPT (a good example of an AI Assistant's reply)" if example["keep"] else \
            "DISCARDED (not a good example of an AI Assistant's reply)"
        lines += [f"## Reviewed example {number}", "### Instruction", str(example["instruction"]).strip(),
                  "### Answer", str(example["generation"]).strip(), f"### Reviewers: {verdict}"]
        if str(example.get("note") or "").strip():
            lines.append(f"Reviewer's note: {str(example['note']).strip()}")
        lines.append("")
    lines += ["## The new pair", ""]
    return "\n".join(lines)


class JudgeTask(PromptTask):
    """Render the judge template for a pair, ask the model, parse its verdict.

    `examples`: reviewed pairs (backtrans.align) put ahead of the template as one fixed block; they are part of the
    cache key, so a judge with other examples asks again while a rerun with the same ones costs nothing."""

    kind = "judge"
    output_columns = RESULT_COLUMNS
    model_column = "model_name"

    def __init__(self, template: Template, settings: LLMSettings, *, reask: int | None = None,
                 examples: list[dict] | None = None):
        super().__init__(template, settings, reask=reask)
        # None, not [], without examples: a run's recorded settings (RunConfig.seeds) stay what they were.
        self.examples = list(examples) if examples else None
        self.prefix = examples_prefix(self.examples or [])

    def key_fields(self, row: dict) -> tuple[str, ...]:
        if self.prefix:
            return row["instruction"], row["generation"], self.prefix
        return row["instruction"], row["generation"]  # as before examples existed: stored rows stay found

    def prompt(self, row: dict) -> str:
        return self.prefix + super().prompt(row)

    async def call(self, client: LLMClient, row: dict, reask: bool = False) -> Completion:
        """With `reason_stems` in the template: a score pass (one token, its digit probabilities), then a reason
        pass that continues "Score: N\nReason: <the opening for N's level>", so that the reason starts from the
        score's side of the rubric instead of arguing against it. The second pass repeats the first one's prompt,
        so a server's prompt cache reads only the few tokens added. One reply comes back: the reason pass's
        text with the score pass's logprobs (what expected_score reads)."""
        stems = self.template.reason_stems
        if not stems:
            return await super().call(client, row, reask)
        params = dict(self.params)
        if reask and not params["temperature"]:
            params["temperature"] = REASK_TEMPERATURE
        prompt = self.prompt(row)
        scored = await client.chat(prompt, **{**params, "max_tokens": 1, "logprobs": True})
        lo, hi = self.template.score_min, self.template.score_max
        parsed = parse_score(scored.text, lo, hi)
        if parsed.score is None:
            return scored  # no score to give a reason for: a parse error (and a re-ask)
        share = (parsed.score - lo) / (hi - lo)
        stem = stems[0] if share < 0.5 else stems[1] if share < 0.75 else stems[2]
        reasoned = await client.chat(prompt, **{**params, "prefill": f"{scored.text.rstrip()}\nReason: {stem}",
                                                "logprobs": False})
        return Completion(text=reasoned.text, prompt_tokens=scored.prompt_tokens + reasoned.prompt_tokens,
                          completion_tokens=scored.completion_tokens + reasoned.completion_tokens,
                          latency_s=scored.latency_s + reasoned.latency_s,
                          attempts=scored.attempts + reasoned.attempts - 1, logprobs=scored.logprobs,
                          model=reasoned.model, hedged=scored.hedged or reasoned.hedged)

    def parse(self, row: dict, completion: Completion) -> dict:
        lo, hi = self.template.score_min, self.template.score_max
        parsed = parse_score(completion.text, lo, hi)
        cut_off = completion.completion_tokens >= self.params["max_tokens"] + bool(self.template.reason_stems)
        outputs = {
            "score": parsed.score,
            "reason": tidy_reason(parsed.reason, cut_off),
            "expected_score": expected_score(completion.logprobs, self._digit_offset(parsed), lo, hi),
            "raw_output": completion.text,
        }
        return self.result(outputs, parsed.status, parsed.error, completion.model)

    def _digit_offset(self, parsed: ParsedScore) -> int:
        # With a "Score: " prefill the first generated token is the score, whatever the text became.
        if parsed.start < 0 and self.template.prefill:
            return len(self.template.prefill)
        return parsed.start

    def failure(self, row: dict, error: str) -> dict:
        return self.result({"reason": ""}, "llm_error", error)
