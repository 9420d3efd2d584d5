"""Keeping API keys out of reprs, errors and logs.

Every key that llmkit is given is registered here; ``redact`` replaces any registered key (and
anything shaped like a provider key, such as the partial keys OpenAI echoes in 401 bodies) with
``***``. Errors call it when they are built; ``SecretFilter`` does the same for log records.
"""

from __future__ import annotations

import logging
import re
import threading

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

# Shapes of provider keys: sk-..., sk-ant-..., sk-proj-..., and OpenAI's masked echo "sk-abc***wxyz".
_KEY_SHAPES = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``redact`` removes it wherever it shows up."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        alternatives = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def redact(text: str) -> str:
    """``text`` with every registered secret and key-shaped token replaced by ``***``."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub("***", text)
    return _KEY_SHAPES.sub("***", text)


def mask(value: str | None) -> str | None:
    """How a secret shows in a repr: set or not, never its characters."""
    return None if value is None else "***"


class SecretFilter(logging.Filter):
    """A logging filter that scrubs secrets from messages and their arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return True
        clean = redact(message)
        if clean != message or record.args:
            record.msg = clean
            record.args = None
        return True


logger = logging.getLogger("llmkit")
logger.addFilter(SecretFilter())
logger.addHandler(logging.NullHandler())
