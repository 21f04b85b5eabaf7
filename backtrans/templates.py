"""Prompt templates: finding, reading and rendering `prompts/*.jinja2` in a Jinja2 sandbox.

A template is a Jinja2 file whose first block is a comment holding `key: value` settings
(name, kind, score_range, max_tokens, temperature, prefill, logprobs, output). The rest renders to
the user message. Dataset text and user templates are untrusted, so rendering always runs in an
immutable sandbox with undefined names as errors.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import jinja2.meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

PROMPTS_DIR = Path(os.environ.get("BACKTRANS_PROMPTS_DIR", Path(__file__).resolve().parent.parent / "prompts"))
DEFAULT_JUDGE_TEMPLATE = "humpback"

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
    output: str = "generation"
    description: str = ""
    variables: tuple[str, ...] = field(default=())

    @property
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


def _parse_header(text: str) -> dict[str, str]:
    match = _HEADER.match(text.lstrip("\ufeff"))
    if not match:
        return {}
    settings = {}
    for line in match.group(1).splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().isidentifier():
            settings[key.strip()] = value.strip().strip('"')
    return settings


def parse_template(text: str, name: str, path: str = "") -> Template:
    settings = _parse_header(text)
    try:
        ast = _environment().parse(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{path or name}:{exc.lineno}: {exc.message}") from None
    variables = tuple(sorted(jinja2.meta.find_undeclared_variables(ast)))
    lo, _, hi = settings.get("score_range", "1-5").partition("-")
    truthy = {"1", "true", "yes"}
    try:
        return Template(
            name=settings.get("name", name),
            source=text,
            path=path,
            kind=settings.get("kind", "judge"),
            score_min=int(lo),
            score_max=int(hi),
            max_tokens=int(settings.get("max_tokens", 512)),
            temperature=float(settings.get("temperature", 0.0)),
            prefill=settings.get("prefill", ""),
            logprobs=settings.get("logprobs", "").lower() in truthy,
            output=settings.get("output", "generation"),
            description=settings.get("description", ""),
            variables=variables,
        )
    except ValueError as exc:
        raise TemplateError(f"{path or name}: bad setting in the header comment: {exc}") from None


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

