"""Keeping API keys out of reprs, errors and logs.

Every key that llmkit is given is registered here; ``redact`` replaces any registered key (and
anything shaped like a provider key, such as the partial keys OpenAI echoes in 401 bodies) with
``***``. Errors call it when they are built; ``SecretFilter`` does the same for log records.

A secret is also registered in the forms other code prints it in: escaped as ``repr`` of a str or of
bytes shows it (httpx's "Illegal header value b'Bearer sk-...\\t...'"), JSON-escaped, percent-encoded,
and (when it holds control characters) its long printable pieces. Credentials in a URL
(``https://user:password@host``), in a URL's query string (``?api_key=``, ``?key=``, ``?token=``,
``?sig=``...) and the values of custom headers that carry keys (``authorization``, ``api-key``,
``x-...-token``...) are registered too, and ``redact`` hides any URL's ``user:password@`` and the values
of its credential-named query parameters.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

_lock = threading.Lock()
_secrets: set[str] = set()
_forms: set[str] = set()  # the secrets and their escaped forms
_pattern: re.Pattern[str] | None = None

# Shapes of provider keys: sk-..., sk-ant-..., sk-proj-..., and OpenAI's masked echo "sk-abc***wxyz".
_KEY_SHAPES = re.compile(r"\b(?:sk|rk|pk)-[A-Za-z0-9_\-*]{6,}")
# The user[:password]@ of any URL in a text.
_URL_USERINFO = re.compile(r"(?<=://)[^\s/?#@'\"<>]+@")
# Header names whose values are credentials.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|passw|cookie|session|signature|credential", re.IGNORECASE)
# Query parameters whose values are credentials (api_key, key, token, sig, signature, access_token...).
_SECRET_PARAM = re.compile(r"key|token|sig|secret|passw|auth|credential|session|cookie", re.IGNORECASE)
# A URL query parameter (after ? & or ;) named like a credential, and its value.
_URL_QUERY_SECRET = re.compile(
    r"(?<=[?&;])([A-Za-z0-9_.\-]*(?:key|token|sig|secret|passw|auth|credential|session|cookie)[A-Za-z0-9_.\-]*=)"
    r"[^&#;\s'\"<>]+", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f\\'\"]+")


def _variants(value: str) -> set[str]:
    """``value`` and the forms it takes when printed escaped or encoded."""
    forms = {value, repr(value)[1:-1], json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
             quote(value, safe=""), repr(value.encode("utf-8", "surrogatepass"))[2:-1]}
    if _CONTROL.search(value):  # printed with its control characters escaped or cut: its long pieces
        forms.update(piece for piece in _CONTROL.split(value) if len(piece) >= 8)
    return {form for form in forms if len(form) >= 4}


def register_secret(value: str | None) -> None:
    """Remember a secret so that ``redact`` removes it wherever it shows up (escaped forms included)."""
    global _pattern
    if not value or len(value) < 4:
        return
    with _lock:
        if value in _secrets:
            return
        _secrets.add(value)
        _forms.update(_variants(value))
        alternatives = sorted(_forms, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in alternatives))


def register_header(name: str, value: str | None) -> None:
    """Register a custom header's value as a secret if its name says it carries one (and the token of
    ``"Bearer <token>"``-style values)."""
    if not isinstance(value, str) or not _SECRET_HEADER.search(str(name)):
        return
    register_secret(value)
    scheme, _, token = value.strip().partition(" ")
    if token and scheme.isalpha():
        register_secret(token.strip())


def register_url_credentials(url: str | None) -> None:
    """Register the ``user:password`` of ``url`` (as written, decoded, and as a Basic auth value), and the
    values of its credential-named query parameters (``?api_key=...``, ``?token=...``, ``?sig=...``)."""
    if not url:
        return
    try:
        query = urlsplit(url).query
    except ValueError:
        query = url.partition("?")[2]
    for name, value in parse_qsl(query, keep_blank_values=False):
        if _SECRET_PARAM.search(name):
            register_secret(value)
    for pair in re.split(r"[&;]", query):  # and each value as written (percent-encoded)
        name, _, value = pair.partition("=")
        if _SECRET_PARAM.search(name):
            register_secret(value)
    _, credentials = split_userinfo(url)
    if credentials is None:
        return
    user, password = credentials
    raw = url.split("://", 1)[-1].split("@", 1)[0]
    for secret in (raw, password, f"{user}:{password}",
                   base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogatepass")).decode("ascii")):
        register_secret(secret)
    if not password:  # https://TOKEN@host: the user name is the credential
        register_secret(user)


def split_userinfo(url: str) -> tuple[str, tuple[str, str] | None]:
    """``url`` without its ``user:password@``, and the (percent-decoded) user and password, if any."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return hide_userinfo(url), None
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, host = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=host)), (unquote(user), unquote(password))


def hide_userinfo(text: str) -> str:
    """``text`` with the ``user:password@`` of every URL in it replaced by ``***@``."""
    return _URL_USERINFO.sub("***@", text) if "@" in text else text


def hide_url_secrets(text: str) -> str:
    """``text`` with every URL's ``user:password@`` and credential-named query values replaced by ``***``."""
    if "=" in text:
        text = _URL_QUERY_SECRET.sub(r"\1***", text)
    return hide_userinfo(text)


def redact(text: str) -> str:
    """``text`` with every registered secret and key-shaped token replaced by ``***``."""
    if not text:
        return text
    pattern = _pattern
    if pattern is not None:
        text = pattern.sub("***", text)
    return hide_url_secrets(_KEY_SHAPES.sub("***", text))


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
# httpx and httpcore log requests and their failures (an illegal header value quotes the key): scrub
# those records too. A logger's filter sees only its own records, so each httpcore logger is named.
for _name in ("httpx", "httpcore", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
              "httpcore.socks"):
    logging.getLogger(_name).addFilter(SecretFilter())


def _reset_lock_in_child() -> None:
    """After ``os.fork()`` the lock may be held by a thread that does not exist in the child."""
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_in_child)
