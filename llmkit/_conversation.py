"""Checking a tool-call conversation before anything is sent, the same for every adapter.

An assistant message's ``tool_calls`` must each be ``{"id": ..., "type": "function", "function": {"name": ...,
"arguments": <a JSON object, as a string or a dict>}}`` (a dict is sent as the JSON string); a ``tool``
message must carry the ``tool_call_id`` of a call made by an earlier assistant message;
``parallel_tool_calls`` is True or False. Anything else is an ``InvalidRequestError`` raised here, so no
adapter ever has to guess (Gemini's ``functionCall.args`` and Anthropic's ``tool_use.input`` need the
decoded object) and no breaker ever counts a caller's mistake.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ._errors import InvalidRequestError


def check(messages: tuple[dict[str, Any], ...], extra: Mapping[str, Any]) -> tuple[dict[str, Any], ...]:
    """Raise ``InvalidRequestError`` for a malformed tool-call exchange in ``messages`` or ``extra``.

    Returns ``messages`` with any call's arguments given as a dict made the JSON string of the OpenAI shape
    (the caller's messages are not changed)."""
    if "parallel_tool_calls" in extra and not isinstance(extra["parallel_tool_calls"], bool):
        raise InvalidRequestError(f"parallel_tool_calls: expected True or False, "
                                  f"got {extra['parallel_tool_calls']!r}")
    called: set[str] = set()
    for i, message in enumerate(messages):
        role = message.get("role")
        calls = message.get("tool_calls")
        if calls is not None and role != "assistant":
            raise InvalidRequestError(f"messages[{i}].tool_calls: only an assistant message makes tool calls")
        if calls is not None:
            called |= _calls(i, calls)
            if any(isinstance((c.get("function") or {}).get("arguments"), Mapping) for c in calls):
                messages = (*messages[:i], {**message, "tool_calls": [_as_string(c) for c in calls]},
                            *messages[i + 1:])
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidRequestError(f"messages[{i}]: a tool message needs the 'tool_call_id' of the call "
                                          f"it answers, got {call_id!r}")
            if call_id not in called:
                raise InvalidRequestError(f"messages[{i}].tool_call_id: {call_id!r} matches no tool call of an "
                                          f"earlier assistant message")
    return messages


def _as_string(call: Mapping[str, Any]) -> dict[str, Any]:
    fn = call["function"]
    if not isinstance(fn.get("arguments"), Mapping):
        return dict(call)
    return {**call, "function": {**fn, "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}}


def _calls(i: int, calls: Any) -> set[str]:
    if isinstance(calls, (str, bytes)) or not isinstance(calls, Sequence):
        raise InvalidRequestError(f"messages[{i}].tool_calls: expected a list, got {type(calls).__name__}")
    ids: set[str] = set()
    for j, call in enumerate(calls):
        where = f"messages[{i}].tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            raise InvalidRequestError(f"{where}: expected {{'id': ..., 'type': 'function', 'function': "
                                      f"{{'name': ..., 'arguments': '<JSON object>'}}}}")
        call_id = call.get("id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequestError(f"{where}.id: expected a non-empty string, got {call_id!r}")
        if not isinstance(fn.get("name"), str) or not fn["name"]:
            raise InvalidRequestError(f"{where}.function.name: expected a non-empty string, "
                                      f"got {fn.get('name')!r}")
        _arguments(f"{where}.function.arguments", fn.get("arguments"))
        ids.add(call_id)
    return ids


def _arguments(where: str, raw: Any) -> None:
    if isinstance(raw, Mapping):
        return
    if not isinstance(raw, str):
        raise InvalidRequestError(f"{where}: expected a JSON object as a string, got {type(raw).__name__}")
    try:
        value = json.loads(raw) if raw.strip() else {}
    except ValueError as exc:
        raise InvalidRequestError(f"{where}: not valid JSON ({exc}): {raw[:80]!r}") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{where}: expected a JSON object, got {type(value).__name__}")


def arguments(raw: Any) -> dict[str, Any]:
    """A checked call's arguments (a JSON string, see ``check``) as a dict; an empty string is ``{}``."""
    value = json.loads(raw) if isinstance(raw, str) and raw.strip() else {}
    return value if isinstance(value, dict) else {}
