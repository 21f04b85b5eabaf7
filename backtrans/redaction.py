"""Masking secrets in text that a user, a log or an export will see."""

from __future__ import annotations

import re

# Shorter keys (`x`, what local servers accept) are not secrets worth masking inside ordinary words.
MIN_SECRET_CHARS = 8
_KEY_LIKE = re.compile(r"\b(sk|hf|rk|pk|api|argilla\.apikey)[-_.][A-Za-z0-9_\-]{8,}")


def redact(text: str, *secrets: str | None) -> str:
    """Mask each secret's whole value, and anything shaped like a provider key.

    A secret of MIN_SECRET_CHARS or more is masked wherever it occurs; a shorter one only where it stands
    alone as a token, so `x` never turns "same text" into "same te***t".
    """
    for secret in secrets:
        if not secret:
            continue
        if len(secret) >= MIN_SECRET_CHARS:
            text = text.replace(secret, "***")
        else:
            text = re.sub(rf"(?<![\w.-]){re.escape(secret)}(?![\w.-])", "***", text)
    return _KEY_LIKE.sub(lambda m: m.group(1) + "-***", text)
