"""Keep credentials out of what sipops prints: DB URLs, passwords in configs and variables."""

from __future__ import annotations

import re
from typing import Any

MASK = "****"
# Greedy up to the last @ of the token: an unencoded @ inside the password stays hidden too.
_URL_PASSWORD = re.compile(r"(?P<pre>\b[a-z][a-z0-9+.-]*://[^:/@\s\"']*:)(?P<pw>[^\s\"']+)(?P<post>@)", re.I)
_KEY_VALUE = re.compile(
    r"(?P<pre>\b[\w.-]*(?:password|passwd|secret|token|api_key)[\w.-]*\b[\"']?\s*[:=]\s*)"
    r"(?:\"[^\"]*\"|'[^']*'|[^\s,;)]+)",
    re.I,
)
_SECRET_NAME = re.compile(r"password|passwd|secret|token|api_key", re.I)


def mask_text(text: str) -> str:
    """Replace passwords in URLs (`mysql://u:PASS@h`) and `password = X` style assignments."""
    text = _URL_PASSWORD.sub(lambda m: m["pre"] + MASK + m["post"], text)
    return _KEY_VALUE.sub(lambda m: m["pre"] + MASK, text)


def mask_value(name: str, value: Any) -> Any:
    """A variable's value as it may be shown: secret-named variables hidden, URLs' passwords masked."""
    if isinstance(value, str):
        return MASK if _SECRET_NAME.search(name) and value else mask_text(value)
    if isinstance(value, list):
        return [mask_value(name, v) for v in value]
    if isinstance(value, dict):
        return {k: mask_value(str(k), v) for k, v in value.items()}
    return value
