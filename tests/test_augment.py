"""Self-augmentation: segmenting, filtering, backward instruction generation, lineage, chat export."""

import json

import pytest

from backtrans import augment as A
from backtrans.cli import main
from backtrans.llm import LLMSettings
from backtrans.runner import run_one
from backtrans.templates import load_template
from tests.conftest import write_jsonl

PARAGRAPH = ("Sourdough needs only flour, water and salt. The starter is a culture of wild yeast and lactic acid "
             "bacteria that you feed daily. Mix the dough, let it rise slowly for several hours, shape it, proof "
             "it overnight in the fridge and bake it in a very hot covered pot. ")


def test_html_is_cut_after_each_header_and_chrome_is_skipped():
    html = ("<html><head><style>p{}</style><script>var x=1</script></head><body><nav>Home | About</nav>"
            "<p>Intro before any header.</p><h1>Baking bread</h1><p>First part.</p><p>More of it.</p>"
            "<h2>Storing &amp; freezing</h2><p>Second part.</p><footer>© 2024</footer></body></html>")
    segments = A.segment(html, "html", "doc")
    assert [(s.header, s.text) for s in segments] == [
        ("Baking bread", "First part.\n\nMore of it."), ("Storing & freezing", "Second part.")]


def test_markdown_headings_and_headerless_text():
    md = "preface\n# One\nalpha\n\n## Two ##\nbeta\n"
    assert [(s.header, s.text) for s in A.segment(md, "markdown", "m")] == [("One", "alpha"), ("Two", "beta")]
    assert [(s.header, s.text) for s in A.segment("just text\n\nmore", "text", "t")] == [("", "just text\n\nmore")]


def test_each_filter_removes_what_it_should_and_reports_it():
    segments = [
        A.Segment("a", "Good header", PARAGRAPH),
        A.Segment("b", "Short", "too short"),
        A.Segment("c", "Long", PARAGRAPH * 40),
        A.Segment("d", "CLICK HERE TO SUBSCRIBE", PARAGRAPH + " other"),
        A.Segment("e", "Copy", PARAGRAPH.upper().lower()),  # exact duplicate after normalising
        A.Segment("f", "Near copy", PARAGRAPH + "Share this recipe with your friends."),  # Jaccard ~0.88
        A.Segment("g", "Different", "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen. "
                  * 4),
    ]
    report = A.FilterReport()
    kept = list(A.filter_segments(segments, A.FilterSettings(min_chars=100, max_chars=3000), report))
    assert [s.doc_id for s in kept] == ["a", "g"]
    assert report.removed == {"too_short": 1, "too_long": 1, "header_caps": 1, "exact_duplicate": 1,
                              "near_duplicate": 1}
    assert report.kept == 2 and "near duplicate 1" in report.describe()
    assert A.caps_share("CLICK HERE") == 1.0 and A.caps_share("Baking Bread") == 2 / 11


@pytest.mark.parametrize("threshold", [0.95, 0.99, 1.0])
def test_a_strict_near_duplicate_similarity_still_filters(threshold):
    # datasketch cannot tune 128 permutations for thresholds above ~0.97; these once crashed augment.
    punctuated = PARAGRAPH.replace(",", ";")  # the same words: identical shingles, a different exact digest
    near = PARAGRAPH + "Share this recipe with your friends."  # Jaccard ~0.88
    segments = [A.Segment("a", "", PARAGRAPH), A.Segment("b", "", punctuated), A.Segment("c", "", near)]
    report = A.FilterReport()
    kept = [s.doc_id for s in A.filter_segments(segments, A.FilterSettings(min_chars=10,
                                                                           near_duplicate_threshold=threshold), report)]
    assert kept == ["a", "c"] and report.removed["near_duplicate"] == 1


def test_a_near_duplicate_similarity_out_of_range_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        A.FilterSettings(near_duplicate_threshold=1.5)
    docs = write_jsonl(tmp_path / "docs.jsonl", [{"text": PARAGRAPH}])
    assert main(["augment", str(docs), "-o", str(tmp_path / "o.jsonl"), "--near-duplicate", "0",
                 "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--no-progress"]) == 2
    assert "must be in (0, 1], not 0" in capsys.readouterr().err


def test_documents_from_a_folder_and_from_jsonl(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.md").write_text(f"# Bread\n{PARAGRAPH}\n")
    (folder / "b.html").write_text(f"<h1>Bread again</h1><p>{PARAGRAPH} Extra words to differ.</p>")
    (folder / "ignored.bin").write_bytes(b"\x00")
    assert [(d, k) for d, _, k in A.read_documents(folder)] == [("a.md", "markdown"), ("b.html", "html")]
    write_jsonl(tmp_path / "docs.jsonl", [{"id": "x1", "text": f"# T\n{PARAGRAPH}"}, {"text": "<h2>H</h2><p>p</p>"}])
    assert [(d, k) for d, _, k in A.read_documents(tmp_path / "docs.jsonl")] == [("x1", "markdown"),
                                                                                 ("doc-2", "html")]
    (tmp_path / "empty").mkdir()
    with pytest.raises(A.RecordsError, match="no .txt, .md or .html"):
        list(A.read_documents(tmp_path / "empty"))


def test_backward_prompt_holds_the_seed_examples_and_the_segment(fake_llm):
    examples = A.load_seed_examples(limit=2)
    assert len(examples) == 2 and {"instruction", "output"} == set(examples[0])
    settings = LLMSettings(base_url=fake_llm.url, model="fake")
    task = A.BackwardTask(load_template("backward-instruction"), settings, examples)
    row = {"generation": PARAGRAPH, "source": "doc-1"}

    result = run_one(task, row)
    prompt = fake_llm.recent_prompts[-1]
    assert examples[0]["instruction"] in prompt and examples[1]["output"] in prompt
    assert prompt.rstrip().endswith(f"{PARAGRAPH}\n\n### Instruction")
    assert result["instruction"].startswith("A response to") and result["augment_status"] == "ok"
    assert task.parse(row, type("C", (), {"text": "Instruction: How do I bake sourdough?", "model": "m"})())[
        "instruction"] == "How do I bake sourdough?"


def test_documents_to_curated_chat_file_with_lineage(fake_llm, tmp_path, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "bread.md").write_text(f"# Bread\n{PARAGRAPH}\n## NAVIGATION MENU\n{PARAGRAPH} menu\n")
    (folder / "plants.html").write_text("<h1>Plants</h1><p>" + "Leaves turn sunlight into sugar. " * 10 + "</p>")
    store = str(tmp_path / "s.sqlite")
    common = ["--base-url", fake_llm.url, "--model", "fake", "--store", store, "--no-progress"]
    assert main(["augment", str(folder), "-o", str(tmp_path / "candidates.jsonl"), "--min-chars", "100",
                 *common]) == 0
    err = capsys.readouterr().err
    assert "header caps 1" in err and "2 kept" in err
    candidates = [json.loads(line) for line in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert [c["source"] for c in candidates] == ["bread.md", "plants.html"]
    assert all(c["instruction"] and c["origin"] == "augmented" for c in candidates)
    assert candidates[0]["generation"] == PARAGRAPH.strip()

    assert main(["score", str(tmp_path / "candidates.jsonl"), "-o", str(tmp_path / "r1.jsonl"), *common]) == 0
    round1 = capsys.readouterr().err.split("run ")[1].split(":")[0]
    assert main(["score", str(tmp_path / "r1.jsonl"), "-o", str(tmp_path / "r2.jsonl"), "--template", "additive",
                 "--parent", round1, *common]) == 0
    round2 = capsys.readouterr().err.split("run ")[1].split(":")[0]
    both = [json.loads(line) for line in (tmp_path / "r2.jsonl").read_text().splitlines()]
    assert all({"score_r1", "reason_r1", "score", "reason"} <= set(row) for row in both)
    assert main(["runs", "--store", store, "--lineage", round2]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"round 1: {round1}") and lines[1].startswith(f"round 2: {round2}")
    assert all("rows 2" in line and "A4" in line for line in lines)

    assert main(["export", str(tmp_path / "r2.jsonl"), "-o", str(tmp_path / "train.jsonl"), "--format", "chat"]) == 0
    chat = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    assert chat[0] == {"messages": [
        {"role": "system", "content": "Answer with knowledge from web search."},
        {"role": "user", "content": both[0]["instruction"]},
        {"role": "assistant", "content": both[0]["generation"]}]}


def test_real_local_model_writes_instructions_for_three_documents(local_llm, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "tea.md").write_text("# Brewing green tea\nUse water at about 80 °C, not boiling. Steep the leaves for "
                                 "two to three minutes, then remove them so the tea does not turn bitter.\n")
    (docs / "bikes.md").write_text("# Fixing a flat tyre\nRemove the wheel, lever the tyre off, find the hole, "
                                   "patch the tube or replace it, then refit the tyre and pump it up.\n")
    (docs / "sleep.txt").write_text("Adults need seven to nine hours of sleep. A regular schedule and a dark, "
                                    "cool room help you fall asleep faster and wake up rested.\n")
    out = tmp_path / "instructions.jsonl"
    assert main(["augment", str(docs), "-o", str(out), "--base-url", local_llm.base_url, "--model", local_llm.model,
                 "--store", str(tmp_path / "s.sqlite"), "--min-chars", "50", "--examples", "1", "--concurrency", "1",
                 "--no-progress"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert all(row["augment_status"] in ("ok", "parse_error") for row in rows)
    assert sum(bool(row["instruction"]) for row in rows) >= 2


def test_a_segment_repeated_across_files_is_caught(tmp_path):
    (tmp_path / "a.md").write_text(f"# Bread\n{PARAGRAPH}\n")
    (tmp_path / "b.md").write_text(f"# Bread, again\n{PARAGRAPH}\n")
    report = A.FilterReport()
    rows = list(A.candidate_rows([tmp_path / "a.md", tmp_path / "b.md"], A.FilterSettings(min_chars=50), report))
    assert [row["source"] for row in rows] == ["a.md"] and report.removed["exact_duplicate"] == 1


@pytest.mark.parametrize("flags", [[], ["--drop-duplicates"]])
def test_a_document_repeated_in_jsonl_is_filtered_and_counted(fake_llm, tmp_path, capsys, flags):
    # Repeated documents are what augment's own duplicate filters are for: not a records error.
    bread = f"# Bread\n{PARAGRAPH}"
    plants = "# Plants\n" + "Leaves turn sunlight into sugar. " * 10
    src = write_jsonl(tmp_path / "docs.jsonl", [{"text": bread}, {"text": plants}, {"text": bread}])
    out = tmp_path / "candidates.jsonl"
    assert main(["augment", str(src), "-o", str(out), "--min-chars", "100", "--base-url", fake_llm.url,
                 "--model", "fake", "--store", str(tmp_path / "s.sqlite"), "--no-progress", *flags]) == 0
    err = capsys.readouterr().err
    assert "exact duplicate 1" in err and "2 kept" in err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["source"] for row in rows] == ["doc-1", "doc-2"]
