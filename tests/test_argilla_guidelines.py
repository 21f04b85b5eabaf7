"""What reviewers read at the top of a dataset: the task, the judge's rubric, how the records were chosen."""

from backtrans.argilla.guidelines import GUIDELINES_MAX, guidelines, plan_design
from backtrans.templates import load_template, parse_template

# Bug 1 of issue 17: a judge template that uses one of the dataset's own columns beside the pair.
WITH_ID = ("{#- name: mine\nkind: judge\nscore_range: 1-5 -#}\n"
           "Row {{ id }}.\nInstruction: {{ instruction }}\nAnswer: {{ generation }}\nScore: <1-5>\n")


def test_the_bundled_rubric_shows_where_the_pair_goes():
    text = guidelines(load_template("humpback"))
    assert "template `humpback`" in text and "(1-5)" in text
    assert "<instruction>\n<answer>" in text and "Score: <rating>" in text
    assert "choose Sort → Row in backtrans" in text  # without a sort Argilla shuffles records per reviewer


def test_guidelines_render_a_template_that_uses_a_dataset_column():
    text = guidelines(parse_template(WITH_ID, "mine"))
    assert "Row <id>." in text and "Instruction: <instruction>" in text and "Answer: <answer>" in text


def test_a_template_a_placeholder_cannot_fill_shows_as_its_own_text():
    source = "{#- name: sums\nkind: judge -#}\nRow {{ id + 1 }}: {{ instruction }} / {{ generation }}\n"
    text = guidelines(parse_template(source, "sums"))
    assert "Row {{ id + 1 }}: {{ instruction }} / {{ generation }}" in text


def test_design_is_appended_to_the_guidelines_within_the_servers_limit():
    template = load_template("humpback")
    assert guidelines(template, "stratified by score band").endswith("stratified by score band")
    long = guidelines(template, "x" * 50_000)
    assert len(long) <= GUIDELINES_MAX and long.endswith("x…")


def test_a_plans_design_in_words_and_none_for_other_rows():
    rows = [{"stratum": "score 4", "inclusion_prob": 0.5}] * 3 + [{"stratum": "score 2", "inclusion_prob": 0.25}]
    assert plan_design(rows) == ("Review plan: 4 pairs sampled at random within bands of the judge's measure; "
                                 "score 2: 1 (inclusion probability 0.25); score 4: 3 (inclusion probability 0.5)")
    assert plan_design([{"instruction": "q"}]) is None and plan_design([]) is None
