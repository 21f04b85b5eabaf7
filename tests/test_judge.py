import dataclasses
import math

import pytest

from backtrans.judge import JudgeTask, expected_score, parse_score, tidy_reason
from backtrans.llm import LLMSettings
from backtrans.runner import run_one
from backtrans.templates import load_template

# (reply, expected score or None); the range is 1-5 unless the case says otherwise.
SHAPES = [
    ("The answer is complete.\nScore: 4", 4),
    ("Reasoning here.\n\nScore: 5", 5),
    ("Good.\n**Score:** 5", 5),
    ("Good.\n**Score: 3**", 3),
    ("Good.\nScore: **2**", 2),
    ("Good.\nscore: 4", 4),
    ("Good.\nSCORE: 1", 1),
    ("Good.\nScore: 4/5", 4),
    ("Good.\nScore: 4 / 5", 4),
    ("Good.\nScore: 3.", 3),
    ("Good.\nScore: 5.0", 5),
    ("Score: 4\nThe answer is clear and complete.", 4),
    ("Score: 2 - it misses the point.", 2),
    ("At first I thought Score: 2, but on reflection\nScore: 4", 4),
    ("Rating: 3", 3),
    ("I would give it a rating of 4 out of 5.", 4),
    ("The rating is 5", 5),
    ("Score (1-5): 4", 4),
    ("Reason: fine.\nScore - 3", 3),
    ("Score = 2", 2),
    ("Decent answer.\n4", 4),
    ("Decent answer.\n**4/5**", 4),
    ("Score:4", 4),
    ("  \n Score:   5  \n\n", 5),
    ("## Evaluation\nThe response is accurate.\n### Score: 5", 5),
    ("Score: 10", None),
    ("Score: 0", None),
    ("Score: 8/10", None),
    ("Score: 4.5", None),
    ("I cannot rate this.", None),
    ("", None),
    ("Score: ", None),
]


@pytest.mark.parametrize(("reply", "expected"), SHAPES)
def test_parse_score_shapes(reply, expected):
    parsed = parse_score(reply, 1, 5)
    assert parsed.score == expected
    assert parsed.status == ("ok" if expected is not None else "parse_error")
    if expected is None:
        assert parsed.error


# (reply, the reason the parser must keep): the reason is the reply without its score statement.
REASONS = [
    ("It is clear and correct.\nScore: 5", "It is clear and correct."),
    ("Score: 2\nIt misses the question.", "It misses the question."),
    ("The answer is correct and on-topic. Score: 5", "The answer is correct and on-topic."),
    ("Score: 4. It answers the question with a worked example.", "It answers the question with a worked example."),
    ("Score: 2 - it misses the point.", "it misses the point."),
    ("**Score: 3** Accurate but terse.", "Accurate but terse."),
    ("Reason: the code runs and explains itself (Score: 5)", "Reason: the code runs and explains itself"),
    ("The list is complete; Score: 4/5; tone is fine.", "The list is complete;\ntone is fine."),
    ("Good.\n**Score:** 5", "Good."),
    ("Decent answer.\n4", "Decent answer."),
    ("At first I thought Score: 2, but on reflection\nScore: 4", "At first I thought Score: 2, but on reflection"),
]


@pytest.mark.parametrize(("reply", "reason"), REASONS)
def test_parse_keeps_every_reason_wherever_the_score_sits(reply, reason):
    parsed = parse_score(reply)
    assert parsed.score is not None and parsed.reason == reason


def test_parse_respects_the_template_range():
    assert parse_score("Score: 0", 0, 5).score == 0
    assert parse_score("Score: 0", 1, 5).score is None
    assert "outside the range 1-5" in parse_score("Score: 7").error


def test_distilabel_pitfalls_are_avoided():
    # distilabel takes the first match and reads "Score: 10" as 1.
    assert parse_score("Score: 2 was my first guess.\nFinal.\nScore: 5").score == 5
    assert parse_score("Score: 10").score is None


def _tokens(text_tokens, digit_top):
    return [
        {"token": t, "logprob": -0.1, "top_logprobs": digit_top if t.strip().isdigit() else []}
        for t in text_tokens
    ]


def test_expected_score_weights_digit_probabilities():
    top = [{"token": "4", "logprob": math.log(0.6)}, {"token": "5", "logprob": math.log(0.3)},
           {"token": "x", "logprob": math.log(0.1)}]
    text = "Fine.\nScore: 4"
    tokens = _tokens(["Fine", ".", "\n", "Score", ":", " ", "4"], top)
    parsed = parse_score(text)
    value = expected_score(tokens, parsed.start)
    assert value == pytest.approx((4 * 0.6 + 5 * 0.3) / 0.9, abs=1e-3)


def test_expected_score_ignores_out_of_range_digits_and_handles_absence():
    top = [{"token": "9", "logprob": math.log(0.5)}, {"token": "2", "logprob": math.log(0.5)}]
    tokens = _tokens(["Score", ": ", "2"], top)
    assert expected_score(tokens, parse_score("Score: 2").start) == 2.0
    assert expected_score(None, 5) is None
    assert expected_score(tokens, -1) is None


def test_judge_task_against_fake_server(fake_llm):
    template = load_template("humpback")
    settings = LLMSettings(base_url=fake_llm.url, model="fake-judge")
    task = JudgeTask(template, settings)
    row = {"instruction": "Say hi [[score=5]]", "generation": "Hi!"}

    result = run_one(task, row)
    assert result["score"] == 5 and result["status"] == "ok"
    assert result["model_name"] == "fake-judge"
    assert result["raw_output"].endswith("Score: 5")
    assert result["expected_score"] is None  # the paper template asks for no logprobs


def test_judge_task_logprob_template_gives_expected_score(fake_llm):
    template = load_template("humpback-short")
    settings = LLMSettings(base_url=fake_llm.url, model="fake-judge")
    task = JudgeTask(template, settings)
    row = {"instruction": "Say hi [[score=2]]", "generation": "Hi!"}

    result = run_one(task, row)
    assert result["score"] == 2
    assert 1.5 < result["expected_score"] < 2.6
    assert result["raw_output"].startswith("Score: 2")


def test_cache_key_depends_on_template_model_and_text():
    settings = LLMSettings(model="a")
    paper, short = load_template("humpback"), load_template("humpback-short")
    row = {"instruction": "q", "generation": "a"}
    key = JudgeTask(paper, settings).key(row)
    assert key == JudgeTask(paper, LLMSettings(model="a")).key(dict(row))
    assert key != JudgeTask(short, settings).key(row)
    assert key != JudgeTask(paper, LLMSettings(model="b")).key(row)
    assert key != JudgeTask(paper, settings).key({"instruction": "q", "generation": "b"})


# (reason as parsed, cut off at max_tokens?, the reason a reader gets)
TIDY = [
    ("Reason: It gives the formula F = C x 9/5 + 32.", False, "It gives the formula F = C x 9/5 + 32."),
    ("**Reason:** It names three tips.", False, "It names three tips."),
    ("reason: it is about basil, not eggs.", False, "it is about basil, not eggs."),
    ("Reason: It explains slicing. It also does not show the", True, "It explains slicing."),
    ("Reason: It explains slicing. It also does not show the", False,
     "It explains slicing. It also does not show the"),  # a reply that stopped by itself is left whole
    ("It covers blotting the stain, but it", True, "It covers blotting the stain, but it…"),
    ("It uses 3.5 cups (about 800 ml). Then", True, "It uses 3.5 cups (about 800 ml)."),
    ("The reason it fails: it is about photosynthesis.", False, "The reason it fails: it is about photosynthesis."),
    ("", True, ""),
]


@pytest.mark.parametrize(("reason", "cut_off", "tidy"), TIDY)
def test_tidy_reason_drops_the_label_and_a_cut_off_sentence(reason, cut_off, tidy):
    assert tidy_reason(reason, cut_off) == tidy


def test_judge_task_marks_a_reason_cut_off_by_max_tokens(fake_llm):
    # The fake answers "2\nBecause it fits." one token at a time; three tokens stop inside the reason.
    template = dataclasses.replace(load_template("humpback-short"), max_tokens=3)
    task = JudgeTask(template, LLMSettings(base_url=fake_llm.url, model="fake-judge"))
    result = run_one(task, {"instruction": "Say hi [[score=2]]", "generation": "Hi!"})
    assert result["raw_output"] == "Score: 2\nBecause"
    assert result["score"] == 2 and result["reason"] == "Because…"


def test_short_template_asks_for_a_reason_after_the_score_within_its_token_budget():
    template = load_template("humpback-short")
    prompt = template.render(instruction="How do I boil an egg?", generation="Boil it for 10 minutes.")
    assert template.prefill == "Score: " and template.logprobs
    assert 'write "Reason: "' in prompt and "names what this answer says" in prompt
    assert prompt.rstrip().endswith("Boil it for 10 minutes.")  # the pair last: the rubric is a cached prefix
    assert template.max_tokens >= 36  # room for "N\nReason: " and a 20-word sentence


PAIRS = [
    {"instruction": "How do I boil an egg so that the yolk is fully firm?",
     "generation": "Cover the egg with cold water, bring it to a boil, then leave it covered off the heat for "
                   "10 to 12 minutes and cool it in cold water."},
    {"instruction": "What is the capital of Australia?",
     "generation": "Treat basil like cut flowers: trim the stems and stand them in a glass of water."},
]


@pytest.mark.parametrize("row", PAIRS, ids=["matched", "mismatched"])
def test_short_template_replies_from_the_real_model_give_a_score_and_a_reason(local_llm, row):
    settings = LLMSettings(base_url=local_llm.base_url, model=local_llm.model, timeout_s=120)
    result = run_one(JudgeTask(load_template("humpback-short"), settings), row)
    assert result["raw_output"].startswith("Score: ")
    assert 1.0 <= result["expected_score"] <= 5.0  # the score: the digit probabilities right after the prefill
    assert result["reason"].strip(), result["raw_output"]
    assert not result["reason"].lower().startswith("reason:")


# --- re-ask: a reply with no score is asked again -------------------------------------------------------------


def _judge_rows(fake, rows, store, reask=None, **settings):
    import asyncio

    from backtrans.llm import LLMClient
    from backtrans.runner import Progress, run_rows

    llm = LLMSettings(base_url=fake.url, model="fake-judge", backoff_base_s=0.01, backoff_max_s=0.05, **settings)
    task = JudgeTask(load_template("humpback-short"), llm, reask=reask)
    progress = Progress(total=len(rows))

    async def go():
        client = LLMClient(llm)
        run_id = store.start_run("judge", {})
        try:
            return [result async for _, result in run_rows(rows, task, client, store, run_id, progress)], client
        finally:
            await client.close()

    results, client = asyncio.run(go())
    return results, progress, client, task


def test_a_reply_with_no_score_is_asked_again_and_the_second_parses(fake_llm, tmp_path):
    from backtrans.store import RunStore

    store = RunStore(tmp_path / "s.sqlite")
    row = {"instruction": "Say hi [[score=4]] [[no-score=1]]", "generation": "Hi!"}
    [result], progress, _, task = _judge_rows(fake_llm, [row], store)
    assert task.reask == 1  # the template's default
    assert result["status"] == "ok" and result["score"] == 4 and 3.5 < result["expected_score"] < 4.5
    assert result["asks"] == 2 and len(result["raw_outputs"]) == 2
    assert "~~" in result["raw_outputs"][0] and result["raw_outputs"][1] == result["raw_output"]
    assert (progress.reasks, progress.reask_ok, progress.ok) == (1, 1, 1)
    assert fake_llm.requests == 2
    logged = store.replies(task.key(row))
    assert [(c["ask"], c["status"]) for c in logged] == [(1, "parse_error"), (2, "ok")]
    assert logged[0]["raw_output"] == result["raw_outputs"][0] and "no 'Score: N'" in logged[0]["error"]


def test_a_row_that_never_parses_stays_a_parse_error_with_every_reply(fake_llm, tmp_path):
    from backtrans.store import RunStore

    store = RunStore(tmp_path / "s.sqlite")
    row = {"instruction": "Say hi [[no-score=9]]", "generation": "Hi!"}
    [result], progress, _, task = _judge_rows(fake_llm, [row], store, reask=2)
    assert result["status"] == "parse_error"
    assert result["score"] is None and result["expected_score"] is None  # never a guessed number
    assert result["asks"] == 3 and all("~~" in reply for reply in result["raw_outputs"])
    assert "asked 3 times" in result["error"]
    assert (progress.reasks, progress.reask_ok, progress.parse_error) == (2, 0, 1)
    assert [c["ask"] for c in store.replies(task.key(row))] == [1, 2, 3]
    assert store.get(task.key(row))["raw_outputs"] == result["raw_outputs"]  # the store keeps them all


def test_reask_zero_asks_once(fake_llm, tmp_path):
    from backtrans.store import RunStore

    row = {"instruction": "Say hi [[no-score=1]]", "generation": "Hi!"}
    [result], progress, _, _ = _judge_rows(fake_llm, [row], RunStore(tmp_path / "s.sqlite"), reask=0)
    assert result["status"] == "parse_error" and result["asks"] == 1 and fake_llm.requests == 1
    assert progress.reasks == 0


def test_reasks_leave_the_cache_key_alone_and_a_rerun_asks_only_what_a_stored_row_lacks(fake_llm, tmp_path):
    from backtrans.store import RunStore

    template, settings = load_template("humpback-short"), LLMSettings(model="m")
    row = {"instruction": "q", "generation": "a"}
    assert JudgeTask(template, settings, reask=0).key(row) == JudgeTask(template, settings, reask=3).key(row)

    store = RunStore(tmp_path / "s.sqlite")
    rows = [{"instruction": "fine [[score=5]]", "generation": "a"},
            {"instruction": "late [[score=2]] [[no-score=1]]", "generation": "a"}]
    first, _, _, _ = _judge_rows(fake_llm, rows, store, reask=0)
    assert [r["status"] for r in first] == ["ok", "parse_error"] and fake_llm.requests == 2
    # With re-asks allowed now, only the stored parse_error is asked, once more, and it keeps its first reply.
    second, progress, _, _ = _judge_rows(fake_llm, rows, store, reask=1)
    assert fake_llm.requests == 3 and progress.cached == 1 and progress.reasks == 1
    assert second[0] == first[0]
    assert second[1]["status"] == "ok" and second[1]["asks"] == 2
    assert second[1]["raw_outputs"][0] == first[1]["raw_output"]
    # A third pass has nothing left to ask.
    third, progress, _, _ = _judge_rows(fake_llm, rows, store, reask=1)
    assert fake_llm.requests == 3 and progress.cached == 2 and third == second


def test_reasks_are_counted_apart_from_transport_retries(fake_llm, tmp_path):
    from backtrans.store import RunStore

    fake_llm.config.rate_429 = 0.3
    fake_llm.config.retry_after_s = 0.0
    store = RunStore(tmp_path / "s.sqlite")
    rows = [{"instruction": f"q{i} [[no-score=1]]", "generation": "a"} for i in range(30)]
    results, progress, client, _ = _judge_rows(fake_llm, rows, store, max_retries=20)
    assert all(r["status"] == "ok" and r["asks"] == 2 for r in results)
    assert progress.reasks == 30 and client.retries > 0  # every row re-asked once; 429s retried apart
    logged = store.db.execute("SELECT ask, attempts FROM calls").fetchall()
    assert sorted(ask for ask, _ in logged) == [1] * 30 + [2] * 30
    assert sum(attempts - 1 for _, attempts in logged) == client.retries
    assert fake_llm.requests == 60 + client.retries


def test_a_reask_of_a_greedy_template_samples():
    import asyncio

    from backtrans.tasks import REASK_TEMPERATURE

    class Recorder:
        def __init__(self):
            self.temperatures = []

        async def chat(self, prompt, **params):
            self.temperatures.append(params["temperature"])

    recorder = Recorder()
    task = JudgeTask(load_template("humpback-short"), LLMSettings(model="m"))
    row = {"instruction": "q", "generation": "a"}
    asyncio.run(task.call(recorder, row))
    asyncio.run(task.call(recorder, row, reask=True))
    warm = JudgeTask(dataclasses.replace(load_template("humpback-short"), temperature=0.3), LLMSettings(model="m"))
    asyncio.run(warm.call(recorder, row, reask=True))
    # At temperature 0 the same prompt would only bring the same unparsable reply back.
    assert recorder.temperatures == [0.0, REASK_TEMPERATURE, 0.3]


def test_the_cli_reask_flag_and_the_template_header(fake_llm, tmp_path):
    import json

    from backtrans.cli import main
    from tests.conftest import write_jsonl

    src = write_jsonl(tmp_path / "in.jsonl", [{"instruction": f"q{i} [[score=3]] [[no-score=1]]",
                                               "generation": "a"} for i in range(5)])
    source = load_template("humpback-short").source
    no_reask = tmp_path / "no-reask.jinja2"
    no_reask.write_text(source.replace("logprobs: true", "logprobs: true\nreask: 0"))

    runs = iter(range(10))

    def statuses(*extra: str) -> list[str]:
        fake_llm.reset()  # the fake forgets which prompts it answered; each run has its own store
        out = tmp_path / "out.jsonl"
        args = ["score", str(src), "-o", str(out), "--base-url", fake_llm.url, "--model", "m", "--no-progress",
                "--store", str(tmp_path / f"s{next(runs)}.sqlite"), *extra]
        assert main(args) == 0
        return [json.loads(line)["status"] for line in out.read_text().splitlines()]

    assert statuses("--template", "humpback-short") == ["ok"] * 5  # default: one re-ask
    assert statuses("--template", "humpback-short", "--reask", "0") == ["parse_error"] * 5
    assert statuses("--template", str(no_reask)) == ["parse_error"] * 5  # the header says 0
    assert statuses("--template", str(no_reask), "--reask", "1") == ["ok"] * 5  # the flag wins
    with pytest.raises(SystemExit) as refused:
        main(["score", str(src), "-o", str(tmp_path / "x.jsonl"), "--reask", "-1"])
    assert refused.value.code == 2


def test_the_reask_header_is_typed_and_checked():
    from backtrans.templates import TemplateError, parse_template

    assert parse_template("{#-\nkind: judge\nreask: 3\n-#}\nx", "t").reask == 3
    assert parse_template("{#-\nkind: judge\n-#}\nx", "t").reask == 1
    with pytest.raises(TemplateError, match=r"t:3:8: bad value for 'reask'"):
        parse_template("{#-\nkind: judge\nreask: -2\n-#}\nx", "t")
    with pytest.raises(TemplateError, match=r"t:3:15: bad value for 'reason_stems': expected three"):
        parse_template("{#-\nkind: judge\nreason_stems: a|b\n-#}\nx", "t")


def test_reason_stems_score_first_then_a_reason_that_starts_on_the_scores_side(fake_llm):
    source = load_template("humpback-short").source.replace(
        "logprobs: true", 'logprobs: true\nreason_stems: "Low opening: it|Mid opening: it|High opening: it"')
    from backtrans.templates import parse_template

    template = parse_template(source, "stems")
    assert template.reason_stems == ("Low opening: it", "Mid opening: it", "High opening: it")
    task = JudgeTask(template, LLMSettings(base_url=fake_llm.url, model="fake-judge"))
    high = run_one(task, {"instruction": "Say hi [[score=5]]", "generation": "Hi!"})
    low = run_one(task, {"instruction": "Say hi [[score=1]]", "generation": "Hi!"})
    assert fake_llm.requests == 4  # a score pass and a reason pass per row
    assert len(set(list(fake_llm.recent_prompts)[:2])) == 1  # the reason pass repeats the prompt: a cached prefix
    assert high["score"] == 5 and high["expected_score"] > 4.5 and high["reason"].startswith("High opening: it")
    assert low["score"] == 1 and low["expected_score"] < 1.5 and low["reason"].startswith("Low opening: it")
    assert high["raw_output"].startswith("Score: 5\nReason: High opening: it")


@pytest.mark.parametrize("row", PAIRS[:1], ids=["matched"])
def test_two_pass_template_on_the_real_model_gives_a_reason_that_opens_on_the_scores_side(local_llm, row):
    template = load_template("humpback-two-pass")
    settings = LLMSettings(base_url=local_llm.base_url, model=local_llm.model, timeout_s=120)
    result = run_one(JudgeTask(template, settings), row)
    if result["status"] == "ok":  # the 135M test model does not always write a digit in range
        assert 1.0 <= result["expected_score"] <= 5.0
        low, mid, high = template.reason_stems
        share = (result["score"] - 1) / 4
        assert result["reason"].startswith(low if share < 0.5 else mid if share < 0.75 else high), result
        assert result["raw_output"].startswith(f"Score: {result['score']}\nReason: ")
    else:
        assert result["status"] == "parse_error" and result["asks"] == 2 and result["score"] is None
