"""Checking a call's arguments before anything is sent, and building the ``Request``; and checking the
token counts a server sends back (``sane_usage``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from . import _conversation, structured
from ._errors import InvalidRequestError
from ._types import ROLES, Request, Usage

_KNOWN = {"model", "messages", "temperature", "max_tokens", "timeout", "priority", "metadata", "provider"}
_NOT_EXTRA = frozenset({"stream", "stream_options", "messages", "model"} | _KNOWN)


def build_request(model: Any, messages: Any, *, temperature: Any = None, max_tokens: Any = None,
                  timeout: Any = None, priority: Any = 0, metadata: Any = None, provider: Any = None,
                  stream: bool = False, extra: Mapping[str, Any] | None = None) -> Request:
    """Validate every argument and return a frozen ``Request``; raises ``InvalidRequestError``."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequestError(f"model: expected a non-empty model name, got {model!r}")
    checked, tool_turns = _messages(structured.tool_call_dicts(messages))
    if temperature is not None and (
        not isinstance(temperature, (int, float)) or isinstance(temperature, bool)
        or not math.isfinite(temperature) or not 0.0 <= temperature <= 2.0
    ):
        raise InvalidRequestError(f"temperature: expected a number from 0 to 2, got {temperature!r}")
    if max_tokens is not None and (not _is_int64(max_tokens) or max_tokens < 1):
        raise InvalidRequestError(f"max_tokens: expected a positive integer below 2**63, got {max_tokens!r}")
    if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                or not timeout > 0):
        raise InvalidRequestError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    if not _is_int64(priority):
        raise InvalidRequestError(f"priority: expected a 64-bit integer (lower runs first), got {priority!r}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise InvalidRequestError(f"metadata: expected a dict, got {type(metadata).__name__}")
    if metadata:  # an empty mapping is always encodable
        encodable("metadata", metadata)
    if provider is not None and (not isinstance(provider, str) or not provider):
        raise InvalidRequestError(f"provider: expected a provider name, got {provider!r}")
    extra = dict(extra or {})
    wait_for_breaker = extra.pop("wait_for_breaker", False)
    if not isinstance(wait_for_breaker, bool):
        raise InvalidRequestError(f"wait_for_breaker: expected True or False, got {wait_for_breaker!r}")
    response_model = max_validation_retries = None
    if extra:  # (none: nothing below has anything to check)
        if "stream" in extra:
            raise InvalidRequestError("stream: not an argument here; use client.stream(...) or client.astream(...)")
        clash = _NOT_EXTRA.intersection(extra)
        if clash:
            raise InvalidRequestError(f"{sorted(clash)[0]}: not accepted as an extra argument")
        response_model, max_validation_retries = structured.take_arguments(extra)
    if tool_turns or "parallel_tool_calls" in extra:  # (plain turns only: the exchange check finds nothing)
        checked = _conversation.check(checked, extra)
    for key, value in extra.items():
        if isinstance(value, int) and not isinstance(value, bool) and not _is_int64(value):
            raise InvalidRequestError(f"{key}: expected a 64-bit integer, got {value!r}")
        encodable(str(key), value)
    return Request(model=model, messages=checked, temperature=None if temperature is None else float(temperature),
                   max_tokens=max_tokens, timeout=None if timeout is None else float(timeout), priority=priority,
                   metadata=dict(metadata), stream=stream, provider=provider, extra=extra,
                   response_model=response_model, max_validation_retries=max_validation_retries,
                   wait_for_breaker=wait_for_breaker)


def _messages(messages: Any) -> tuple[tuple[dict[str, Any], ...], bool]:
    """The checked messages (copies), and whether any is a tool call or a tool result."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise InvalidRequestError(
            "messages: expected a list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    if not messages:
        raise InvalidRequestError("messages: expected at least one message, got an empty list")
    out = []
    tool_turns = False
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidRequestError(f"messages[{i}]: expected a dict with 'role' and 'content', "
                                      f"got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(f"messages[{i}].role: expected one of {sorted(ROLES)}, got {role!r}")
        if "content" not in message:
            raise InvalidRequestError(f"messages[{i}]: missing 'content'")
        content = message["content"]
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise InvalidRequestError(f"messages[{i}].content: expected a string, got None")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(f"messages[{i}].content: expected a string (or a list of content parts), "
                                      f"got {type(content).__name__}")
        if type(message) is dict and len(message) == 2 and type(content) is str:  # {"role", "content": text}
            if not content.isascii():  # (text encodes as JSON unless it holds a lone surrogate)
                _utf8(f"messages[{i}]", content)
        else:
            encodable(f"messages[{i}]", message)
        out.append(dict(message))
        tool_turns = tool_turns or role == "tool" or "tool_calls" in message
    return tuple(out), tool_turns


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _is_int64(value: Any) -> bool:
    """An ``int`` (not a bool) that fits a signed 64-bit column and every provider's JSON parser."""
    return isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX


#: ``json.dumps(value, ensure_ascii=False, allow_nan=False)`` made once: ``dumps`` with any option builds a new
#: encoder on every call, which cost more than the encoding of a short message (~3 µs a call).
_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def _utf8(name: str, text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _lone_surrogate(name) from None


def _lone_surrogate(name: str) -> InvalidRequestError:
    return InvalidRequestError(f"{name}: contains a lone surrogate (not valid UTF-8 text)")


def encodable(name: str, value: Any) -> bytes:
    """``value`` as strict UTF-8 JSON (no NaN, no lone surrogates, no objects), or ``InvalidRequestError``.

    The same bytes the wire and the ledger need, so nothing that passes here fails after it was sent.
    """
    try:
        return _STRICT.encode(value).encode("utf-8")
    except UnicodeEncodeError:
        raise _lone_surrogate(name) from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(f"{name}: expected JSON-serialisable values ({exc})") from None


#: The largest token count believed: above it (or below 0) a server's count is clamped and flagged.
MAX_TOKENS = 2**53
_COUNTS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


def sane_usage(usage: Usage) -> Usage:
    """Clamp each count into ``0..MAX_TOKENS`` (non-integers count as 0) and set ``suspect`` if any moved.

    A broken server must never make a negative cost, overflow a ledger column or break the frames.
    """
    counts = i, o, cr, cw, r = (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens,
                                usage.cache_write_tokens, usage.reasoning_tokens)
    if type(i) is type(o) is type(cr) is type(cw) is type(r) is int and min(counts) >= 0 and max(counts) <= MAX_TOKENS:
        return usage  # the usual case: nothing to clamp
    suspect = usage.suspect
    for name in _COUNTS:
        value = getattr(usage, name)
        ok = isinstance(value, int) and not isinstance(value, bool)
        fixed = min(max(value, 0), MAX_TOKENS) if ok else 0
        if not ok or fixed != value:
            setattr(usage, name, fixed)
            suspect = True
    usage.suspect = suspect
    return usage
