"""Self-augmentation, the first half of instruction backtranslation: unlabelled documents are cut into
segments ("portions of text following an HTML header"), filtered, and a model writes the instruction
each segment answers. Also response generation for instruction-only data, as the seed pipeline's
TextGeneration step does.

The paper finetunes a backward model on (output -> instruction) seed pairs; here a prompted model
plays that role, with a few of the user's seed pairs as examples in the prompt.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

# The tasks live in their own modules; they stay importable from here, where app.py and cli.py find them.
from backtrans.backward import BackwardTask  # noqa: F401
from backtrans.generate import GENERATE_COLUMNS, ResponseTask  # noqa: F401
from backtrans.records import RecordsError, iter_rows

SEED_PATH = Path(__file__).resolve().parent / "data" / "seed_examples.jsonl"
DOCUMENT_SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html"}
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


@dataclass
class Segment:
    doc_id: str
    header: str
    text: str

    @property
    def segment_id(self) -> str:
        return hashlib.sha256(f"{self.doc_id}\x00{self.header}\x00{self.text}".encode()).hexdigest()[:16]


# --- documents in -----------------------------------------------------------------------------------------


class _HTMLSegmenter(HTMLParser):
    """Text split at h1-h6; script, style and navigation chrome are skipped."""

    SKIP = {"script", "style", "nav", "footer", "noscript", "template"}
    BLOCK = {"p", "div", "li", "br", "tr", "section", "article", "pre", "blockquote"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[str]]] = [("", [])]
        self.skipping = 0
        self.in_header = False
        self.header_parts: list[str] = []

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif re.fullmatch(r"h[1-6]", tag):
            self.in_header, self.header_parts = True, []
        elif tag in self.BLOCK:
            self.sections[-1][1].append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif re.fullmatch(r"h[1-6]", tag) and self.in_header:
            self.in_header = False
            self.sections.append((" ".join("".join(self.header_parts).split()), []))
        elif tag in self.BLOCK:
            self.sections[-1][1].append("\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        (self.header_parts if self.in_header else self.sections[-1][1]).append(data)


def _tidy(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def segment(text: str, kind: str, doc_id: str) -> list[Segment]:
    """Portions of text following a header (HTML h1-h6, Markdown #). A document with no header is
    one segment; text before the first header is kept only then."""
    if kind == "html":
        parser = _HTMLSegmenter()
        parser.feed(text)
        parser.close()
        sections = [(header, _tidy("".join(parts))) for header, parts in parser.sections]
    elif kind == "markdown":
        sections, current, body = [], "", []
        for line in text.splitlines():
            heading = _MARKDOWN_HEADING.match(line)
            if heading:
                sections.append((current, _tidy("\n".join(body))))
                current, body = heading.group(2).strip(), []
            else:
                body.append(line)
        sections.append((current, _tidy("\n".join(body))))
    else:
        sections = [("", _tidy(text))]
    has_headers = any(header for header, _ in sections)
    return [Segment(doc_id, header, body) for header, body in sections
            if body and (header or not has_headers)]


def _guess_kind(text: str, hint: str = "") -> str:
    if hint in ("html", "markdown", "text"):
        return hint
    if re.search(r"<(h[1-6]|p|div|html|body)[\s>]", text, re.IGNORECASE):
        return "html"
    if re.search(r"^#{1,6}\s+\S", text, re.MULTILINE):
        return "markdown"
    return "text"


def read_documents(source: str | Path, config: str | None = None, split: str | None = None,
                   mapping: dict | None = None) -> Iterator[tuple[str, str, str]]:
    """(doc_id, text, kind) from a folder or file of .txt/.md/.html, or JSONL/Parquet/Hub data with `text`."""
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DOCUMENT_SUFFIXES) if path.is_dir() else []
    if path.is_dir() and not files and not any(path.glob("*.json*")) and not any(path.glob("*.parquet")):
        raise RecordsError(f"{path}: no .txt, .md or .html documents in this folder")
    if path.is_file() and path.suffix.lower() in DOCUMENT_SUFFIXES:
        files = [path]
    if files:
        for file in files:
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise RecordsError(f"{file.name}: not valid UTF-8 (byte {exc.start}); save it as UTF-8") from None
            yield str(file.relative_to(path) if path.is_dir() else file.name), text, DOCUMENT_SUFFIXES[
                file.suffix.lower()]
        return
    # Repeated documents are not an input error here: the exact and near-duplicate filters drop them and
    # count them in the report, which the records-level check would stop before they are seen.
    rows = iter_rows(source, mapping, ("text",), config=config, split=split, check_duplicates=False)
    for index, located in enumerate(rows, start=1):
        row = located.row
        doc_id = str(row.get("id") or row.get("doc_id") or row.get("url") or f"doc-{index}")
        yield doc_id, row["text"], _guess_kind(row["text"], str(row.get("format") or ""))


# --- filters --------------------------------------------------------------------------------------------


@dataclass
class FilterSettings:
    min_chars: int = 200
    max_chars: int = 6000
    max_header_caps: float = 0.5  # share of capital letters in a header above which it is boilerplate
    near_duplicate_threshold: float = 0.8  # Jaccard similarity (MinHash) at which segments are the same
    num_perm: int = 128

    def __post_init__(self) -> None:
        if not 0 < self.near_duplicate_threshold <= 1:
            raise ValueError(f"the near-duplicate similarity must be in (0, 1], not {self.near_duplicate_threshold:g}")


@dataclass
class FilterReport:
    segments: int = 0
    removed: dict[str, int] = field(default_factory=lambda: {
        "too_short": 0, "too_long": 0, "header_caps": 0, "exact_duplicate": 0, "near_duplicate": 0})

    @property
    def kept(self) -> int:
        return self.segments - sum(self.removed.values())

    def reset(self) -> None:
        """Count afresh: a file job reads its input twice (validate, then run), and says what the last pass did."""
        self.segments = 0
        self.removed = dict.fromkeys(self.removed, 0)

    def describe(self) -> str:
        parts = ", ".join(f"{name.replace('_', ' ')} {count}" for name, count in self.removed.items())
        return f"{self.segments} segments, {self.kept} kept; removed: {parts}"


def caps_share(header: str) -> float:
    letters = [c for c in header if c.isalpha()]
    return sum(c.isupper() for c in letters) / len(letters) if letters else 0.0


def _shingles(text: str, size: int = 5) -> set[str]:
    words = re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())
    return {" ".join(words[i : i + size]) for i in range(max(1, len(words) - size + 1))}


def filter_segments(segments: Iterable[Segment], settings: FilterSettings | None = None,
                    report: FilterReport | None = None) -> Iterator[Segment]:
    """Length bounds, the capital-letters-in-header heuristic, exact and near-duplicate removal."""
    from datasketch import MinHash, MinHashLSH

    settings = settings or FilterSettings()
    report = report if report is not None else FilterReport()
    try:
        lsh = MinHashLSH(threshold=settings.near_duplicate_threshold, num_perm=settings.num_perm)
    except ValueError:
        # Above ~0.97, 128 permutations cannot be split into the bands datasketch's tuning wants (it needs two or
        # more): the tightest index it allows, two bands of 64, finds pairs that near-identical and few others.
        lsh = MinHashLSH(num_perm=settings.num_perm, params=(2, settings.num_perm // 2))
    exact: set[bytes] = set()
    for item in segments:
        report.segments += 1
        if len(item.text) < settings.min_chars:
            report.removed["too_short"] += 1
            continue
        if len(item.text) > settings.max_chars:
            report.removed["too_long"] += 1
            continue
        if caps_share(item.header) > settings.max_header_caps:
            report.removed["header_caps"] += 1
            continue
        normalised = " ".join(unicodedata.normalize("NFKC", item.text).lower().split())
        digest = hashlib.blake2b(normalised.encode(), digest_size=16).digest()
        if digest in exact:
            report.removed["exact_duplicate"] += 1
            continue
        exact.add(digest)
        signature = MinHash(num_perm=settings.num_perm)
        for shingle in _shingles(item.text):
            signature.update(shingle.encode())
        if lsh.query(signature):
            report.removed["near_duplicate"] += 1
            continue
        lsh.insert(item.segment_id, signature)
        yield item


def segments_to_rows(segments: Iterable[Segment]) -> Iterator[dict]:
    """The candidates for backward generation: the segment becomes the `generation`."""
    for item in segments:
        yield {"generation": item.text, "source": item.doc_id, "header": item.header,
               "segment_id": item.segment_id, "origin": "augmented"}


def load_seed_examples(path: str | Path | None = None, limit: int = 3) -> list[dict]:
    """(instruction, output) pairs shown to the model as examples; our bundled ones by default."""
    examples = []
    for located in iter_rows(path or SEED_PATH):  # `output` maps to `generation` like any alias
        examples.append({"instruction": located.row["instruction"], "output": located.row["generation"]})
        if len(examples) >= limit:
            break
    return examples


def candidate_rows(sources: str | Path | Iterable[str | Path], settings: FilterSettings | None = None,
                   report: FilterReport | None = None, **read_options) -> Iterator[dict]:
    """Documents -> segments -> filters -> rows waiting for their instruction. Several sources (files,
    folders, datasets) go through one filter, so a segment repeated across them is caught too."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    segments = (item for source in sources for doc_id, text, kind in read_documents(source, **read_options)
                for item in segment(text, kind, doc_id))
    return segments_to_rows(filter_segments(segments, settings, report))
