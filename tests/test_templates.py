import pytest

from backtrans.templates import TemplateError, list_templates, load_template, parse_template

# distilabel 1.5.3's InstructionBacktranslation renders exactly this for {"instruction": "instruction",
# "generation": "generation"} (its own unit test); the paper template must match it byte for byte.
DISTILABEL_HEAD = (
    "Below is an instruction from an user and a candidate answer. Evaluate whether or not the answer is a good "
    "example of how AI Assistant should respond to the user’s instruction. Please assign a score using the "
    "following 5-point scale:\n1: It means the answer is incomplete"
)
DISTILABEL_TAIL = (
    "Please first provide a brief reasoning you used to derive the rating score, and then write "
    "\"Score: <rating>\" in the last line.\n\ninstruction\ngeneration\n"
)


def test_paper_template_matches_distilabel_rendering():
    text = load_template("humpback").render(instruction="instruction", generation="generation")
    assert text.startswith(DISTILABEL_HEAD)
    assert text.endswith(DISTILABEL_TAIL)
    assert text.count("\n") == 10  # the intro, five levels, the ask, a blank line, the pair


def test_bundled_templates_declare_their_ranges_and_kinds():
    by_name = {t.name: t for t in list_templates()}
    assert {"humpback", "additive", "humpback-short", "generate-response"} <= set(by_name)
    assert (by_name["humpback"].score_min, by_name["humpback"].score_max) == (1, 5)
    assert (by_name["additive"].score_min, by_name["additive"].score_max) == (0, 5)
    assert by_name["humpback-short"].prefill == "Score: " and by_name["humpback-short"].logprobs
    assert by_name["generate-response"].kind == "generate"
    assert {"instruction", "generation"} == set(by_name["humpback"].variables)
    assert sorted(t.name for t in list_templates("judge")) == ["additive", "humpback", "humpback-short",
                                                               "humpback-two-pass"]


def test_default_max_tokens_leave_room_for_reasoning():
    assert load_template("humpback").max_tokens >= 256
    assert load_template("additive").max_tokens >= 256


def test_user_template_by_path(tmp_path):
    path = tmp_path / "mine.jinja2"
    path.write_text("{#-\nkind: judge\nscore_range: 1-10\n-#}\nQ: {{ instruction }}\nA: {{ generation }}\n")
    template = load_template(str(path))
    assert (template.name, template.score_max) == ("mine", 10)
    assert template.render(instruction="x", generation="y") == "Q: x\nA: y\n"


def test_dataset_text_is_not_evaluated_as_template():
    text = load_template("humpback").render(instruction="{{ 7*7 }}", generation="{% raw %}")
    assert "{{ 7*7 }}" in text and "49" not in text


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ instruction.__class__.__init__.__globals__ }}",
        "{{ cycler.__init__.__globals__.os }}",
        "{% set x = [].append(1) %}{{ x }}",
    ],
)
def test_sandbox_refuses_escapes(source):
    template = parse_template(source, "evil")
    with pytest.raises(TemplateError) as info:
        template.render(instruction="a", generation="b")
    assert "evil" in str(info.value)


def test_missing_variable_and_bad_syntax_are_clear(tmp_path):
    with pytest.raises(TemplateError, match="variable the row does not have"):
        parse_template("{{ missing }}", "t").render(instruction="a")
    bad = tmp_path / "bad.jinja2"
    bad.write_text("line one\n{% if %}\n")
    with pytest.raises(TemplateError, match=r"bad.jinja2:2"):
        load_template(str(bad))
    with pytest.raises(TemplateError, match="no template named"):
        load_template("does-not-exist")


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("{#-\nkind: judge\ntemprature: 0.2\n-#}\n", r"mine.jinja2:3:1: unknown setting 'temprature'.*known: name"),
        ("{#-\nkind: judge\n  max_tokens: many\n-#}\n", r"mine.jinja2:3:15: bad value for 'max_tokens'"),
        ("{#- kind: grader\n-#}\n", r"mine.jinja2:1:11: bad value for 'kind': expected one of judge"),
        ("{#-\nscore_range: 5-1\n-#}\n", r"mine.jinja2:2:14: bad value for 'score_range': expected LOW-HIGH"),
        ("{#-\nlogprobs: maybe\n-#}\n", r"mine.jinja2:2:11: bad value for 'logprobs': expected true or false"),
        ("{#-\nkind: judge\nkind: generate\n-#}\n", r"mine.jinja2:3:1: setting 'kind' is given twice"),
        ("{#-\nkind: judge\nscore first\n-#}\n", r"mine.jinja2:3:1: the header comment holds `key: value` lines"),
    ],
)
def test_header_refuses_unknown_keys_and_bad_values_naming_line_and_column(tmp_path, header, message):
    path = tmp_path / "mine.jinja2"
    path.write_text(header + "Q: {{ instruction }}\nA: {{ generation }}\n")
    with pytest.raises(TemplateError, match=message):
        load_template(str(path))


def test_header_values_are_typed_and_a_plain_comment_is_not_a_header():
    template = parse_template('{#-\nprefill: " Score: "\nlogprobs: yes\ntemperature: 0.7\n-#}\n{{ x }}', "t")
    assert (template.prefill, template.logprobs, template.temperature) == (" Score: ", True, 0.7)
    plain = parse_template("{# Written for the 2025 audit. #}{{ instruction }}", "t")
    assert (plain.kind, plain.score_min, plain.score_max) == ("judge", 1, 5)


def test_bundled_templates_are_found_as_package_data_or_in_the_source_tree():
    from backtrans import templates

    # In a source checkout the top-level prompts/ folder is the only copy; an installed package carries it
    # as backtrans/prompts (see the slow packaging test in tests/test_package.py).
    assert (templates.PROMPTS_DIR / "humpback.jinja2").is_file()
    assert {p.stem for p in templates.PROMPTS_DIR.glob("*.jinja2")} == {t.name for t in list_templates()}
