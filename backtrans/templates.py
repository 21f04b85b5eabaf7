"""Prompt templates: finding, reading and rendering `prompts/*.jinja2` in a Jinja2 sandbox.

A template is a Jinja2 file whose first block is a comment holding `key: value` settings
(name, kind, score_range, max_tokens, temperature, prefill, logprobs, reask, reason_stems, output, description),
each read
with its type; an unknown key or a bad value is refused with file:line:column. The rest renders to
the user message. Dataset text and user templates are untrusted, so rendering always runs in an
immutable sandbox with undefined names as errors.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backtrans.run_config import KINDS


def _bundled_prompts() -> Path:
    """Where the bundled templates are: installed as package data (backtrans/prompts, mapped in from the
    top-level prompts/ folder by pyproject.toml), or that top-level folder itself in a source checkout."""
    installed = importlib.resources.files("backtrans") / "prompts"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parent.parent / "prompts"


PROMPTS_DIR = Path(os.environ.get("BACKTRANS_PROMPTS_DIR") or _bundled_prompts())
# The bundled template each kind of job starts with; BACKTRANS_TEMPLATE names another for the judge.
DEFAULT_TEMPLATES = {"judge": "humpback", "generate": "generate-response", "augment": "backward-instruction"}
DEFAULT_JUDGE_TEMPLATE = DEFAULT_TEMPLATES["judge"]


def default_template(kind: str = "judge") -> str:
    """The template a job of this kind uses when none is named: the one place BACKTRANS_TEMPLATE is read
    (`local env` sets it to the template the packaged judge was chosen with)."""
    stated = os.environ.get("BACKTRANS_TEMPLATE", "").strip() if kind == "judge" else ""
    return stated or DEFAULT_TEMPLATES[kind]

_HEADER = re.compile(r"\A\{#-?(.*?)-?#\}", re.DOTALL)


class TemplateError(ValueError):
    """A template that cannot be read or rendered; the message says which and why."""


@dataclass(frozen=True)
class Template:
    name: str
    source: str
    path: str = ""
    kind: str = "judge"
    score_min: int = 1
    score_max: int = 5
    max_tokens: int = 512
    temperature: float = 0.0
    prefill: str = ""
    logprobs: bool = False
    reask: int = 1  # asks more of the same prompt when a reply has no usable answer (no score)
    # A judge's score pass, then its reason pass: "low|mid|high" openings of the reason for a score in the bottom
    # half, the next quarter and the top quarter of the scale (backtrans.judge.JudgeTask).
    reason_stems: tuple[str, ...] = ()
    output: str = "generation"
    description: str = ""
    variables: tuple[str, ...] = field(default=())

    @functools.cached_property  # read for every row's cache key
    def digest(self) -> str:
        """Content hash: a cached result is reused only for the very same template text."""
        return hashlib.sha256(self.source.encode()).hexdigest()[:16]

    def render(self, **values: object) -> str:
        return render_source(self.source, self.name, values)

    def require_kind(self, kind: str) -> Template:
        """A task refuses a template written for another task (a judge prompt cannot write instructions)."""
        if self.kind != kind:
            raise TemplateError(f"template {self.name!r} is a {self.kind} template, not a {kind} template")
        return self

    def generation_params(self) -> dict:
        return {
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "prefill": self.prefill,
            "logprobs": self.logprobs,
        }


def _environment() -> ImmutableSandboxedEnvironment:
    return ImmutableSandboxedEnvironment(
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False
    )


@functools.lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    # Compiling costs far more than rendering; a run renders one template for every row.
    return _environment().from_string(source)


def render_source(source: str, name: str, values: dict) -> str:
    try:
        return _compiled(source).render(**values)
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"template {name!r} was refused by the sandbox: {exc}") from None
    except jinja2.exceptions.UndefinedError as exc:
        raise TemplateError(
            f"template {name!r} uses a variable the row does not have: {exc.message}"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"template {name!r} line {exc.lineno}: {exc.message}") from None
    except jinja2.TemplateError as exc:
        raise TemplateError(f"template {name!r}: {exc}") from None


# The header's settings and how each is read; anything else is refused, so a typo ("temprature") is an
# error instead of a silently ignored setting.
_TRUTHY, _FALSY = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_KINDS = KINDS
_OLDER_KIND_WORDS = {"backward": "augment"}  # templates written before the kinds had one word each


def _boolean(value: str) -> bool:
    if value.lower() in _TRUTHY | _FALSY:
        return value.lower() in _TRUTHY
    raise ValueError(f"expected true or false, got {value!r}")


def _kind(value: str) -> str:
    value = _OLDER_KIND_WORDS.get(value, value)
    if value not in _KINDS:
        raise ValueError(f"expected one of {', '.join(_KINDS)}, got {value!r}")
    return value


def _score_range(value: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(-?\d+)\s*-\s*(-?\d+)\s*", value)
    if not match or int(match.group(1)) >= int(match.group(2)):
        raise ValueError(f"expected LOW-HIGH with LOW < HIGH, like 1-5, got {value!r}")
    return int(match.group(1)), int(match.group(2))


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(f"expected a positive whole number, got {value!r}")
    return number


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(f"expected a whole number of 0 or more, got {value!r}")
    return number


def _stems(value: str) -> tuple[str, ...]:
    stems = tuple(part.strip() for part in value.split("|"))
    if len(stems) != 3 or not all(stems):
        raise ValueError(f"expected three reason openings, low|mid|high, got {value!r}")
    return stems


def _temperature(value: str) -> float:
    number = float(value)
    if not 0 <= number <= 2:
        raise ValueError(f"expected a number from 0 to 2, got {value!r}")
    return number


HEADER_KEYS: dict[str, object] = {
    "name": str,
    "kind": _kind,
    "score_range": _score_range,
    "description": str,
    "prefill": str,
    "max_tokens": _positive_int,
    "temperature": _temperature,
    "logprobs": _boolean,
    "reask": _count,
    "reason_stems": _stems,
    "output": str,
}
_SETTING = re.compile(r"^(\s*)([A-Za-z_][\w-]*)\s*:(\s*)(.*?)\s*$")


def _parse_header(text: str, where: str) -> dict[str, object]:
    """The typed settings of the first `{# ... #}` block when it holds `key: value` lines.

    A leading comment with no such line is an ordinary comment, not a header. Errors name
    `where:line:column` of the offending key or value.
    """
    text = text.lstrip("\ufeff")
    match = _HEADER.match(text)
    if not match:
        return {}
    body = match.group(1)
    first_line = text[: match.start(1)].count("\n") + 1
    first_column = match.start(1) - (text.rfind("\n", 0, match.start(1)) + 1) + 1
    lines = body.splitlines()
    if not any(_SETTING.match(line) for line in lines):
        return {}
    settings: dict[str, object] = {}
    for offset, line in enumerate(lines):
        if not line.strip():
            continue
        lineno = first_line + offset
        base = first_column if offset == 0 else 1
        found = _SETTING.match(line)
        if not found:
            column = base + len(line) - len(line.lstrip())
            raise TemplateError(f"{where}:{lineno}:{column}: the header comment holds `key: value` lines only, "
                                f"got {line.strip()!r}")
        indent, key, gap, value = found.groups()
        key_column = base + len(indent)
        if key not in HEADER_KEYS:
            raise TemplateError(f"{where}:{lineno}:{key_column}: unknown setting {key!r} in the header "
                                f"(known: {', '.join(HEADER_KEYS)})")
        if key in settings:
            raise TemplateError(f"{where}:{lineno}:{key_column}: setting {key!r} is given twice")
        value_column = base + found.start(4)
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]  # quotes keep a value's edge spaces, as in prefill: "Score: "
        try:
            settings[key] = HEADER_KEYS[key](value)  # type: ignore[operator]
        except ValueError as exc:
            message = str(exc) if str(exc).startswith("expected") else f"{value!r} is not valid here"
            raise TemplateError(f"{where}:{lineno}:{value_column}: bad value for {key!r}: {message}") from None
    return settings


def parse_template(text: str, name: str, path: str = "") -> Template:
    return _parsed(text, name, path)


@functools.lru_cache(maxsize=128)
def _parsed(text: str, name: str, path: str) -> Template:
    # Every judge start parses its template; a Template is frozen, so the same text can share one.
    where = path or name
    settings = _parse_header(text, where)
    try:
        ast = _environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{where}:{exc.lineno}: {exc.message}") from None
    variables = tuple(sorted(jinja2.meta.find_undeclared_variables(ast)))
    lo, hi = settings.get("score_range", (1, 5))  # type: ignore[misc]
    return Template(
        name=str(settings.get("name", name)),
        source=text,
        path=path,
        kind=str(settings.get("kind", "judge")),
        score_min=lo,
        score_max=hi,
        max_tokens=int(settings.get("max_tokens", 512)),  # type: ignore[arg-type]
        temperature=float(settings.get("temperature", 0.0)),  # type: ignore[arg-type]
        prefill=str(settings.get("prefill", "")),
        logprobs=bool(settings.get("logprobs", False)),
        reask=int(settings.get("reask", 1)),  # type: ignore[arg-type]
        reason_stems=tuple(settings.get("reason_stems", ())),  # type: ignore[arg-type]
        output=str(settings.get("output", "generation")),
        description=str(settings.get("description", "")),
        variables=variables,
    )


def list_templates(kind: str | None = None) -> list[Template]:
    templates = [load_template(p.stem) for p in sorted(PROMPTS_DIR.glob("*.jinja2"))]
    return [t for t in templates if kind is None or t.kind == kind]


def load_template(name_or_path: str) -> Template:
    """A bundled template by name (`humpback`), or any `.jinja2` file by path."""
    candidate = PROMPTS_DIR / f"{name_or_path}.jinja2"
    path = candidate if candidate.is_file() else Path(name_or_path)
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(PROMPTS_DIR.glob("*.jinja2")))
        raise TemplateError(f"no template named {name_or_path!r} (bundled: {known}) and no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise TemplateError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    return parse_template(text, name=path.stem, path=str(path))

