"""What reviewers read at the top of a dataset: the task, the judge's rubric, and how the records were chosen."""

from __future__ import annotations

from backtrans.templates import Template

GUIDELINES_MAX = 10000  # argilla-server rejects longer guidelines
# Where the pair goes in the rubric; every other column a template uses shows as <its name>.
PAIR_PLACEHOLDERS = {"instruction": "<instruction>", "generation": "<answer>"}


def rubric(template: Template) -> str:
    """The judge's prompt with placeholders where each row's values go.

    The guidelines are one text for the whole dataset, so no row's own values belong in them. A template that
    needs a real value where a placeholder stands (a filter, arithmetic, a loop over a column) shows as its own
    text: the judge has already rendered it for every row, and the rubric must never be why a push fails."""
    values = {name: f"<{name}>" for name in template.variables} | PAIR_PLACEHOLDERS
    try:
        return template.render(**values)
    except Exception:  # TemplateError, or a TypeError from a placeholder where a number was wanted
        return template.source


def guidelines(template: Template, design: str | None = None) -> str:
    text = (
        "Decide whether each answer is a good example of how an AI Assistant should respond to the instruction.\n\n"
        "**keep** it if it would be a good training example, **discard** it if not. Rate it on the same scale "
        f"the LLM judge used ({template.score_min}-{template.score_max}). The judge's score and reason are "
        "pre-filled as suggestions: accept them or override them.\n\n"
        "The metadata **row** numbers the records in the order of the rows in backtrans. The link from backtrans "
        "opens them in that order; from elsewhere, choose Sort → Row in backtrans.\n\n"
        f"The judge's rubric (template `{template.name}`):\n\n```\n{rubric(template).strip()}\n```"
    )
    if design and design.strip():
        heading = "\n\n**How these records were chosen**\n\n"
        room = GUIDELINES_MAX - len(text) - len(heading)
        body = design.strip()
        if len(body) > room:  # the server refuses the whole dataset otherwise
            body = body[: max(0, room - 1)] + "…"
        text += heading + body
    return text


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
