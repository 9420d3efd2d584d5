"""The cache key: what changes it (the answer could differ) and what never does."""

from __future__ import annotations

from typing import Any

import pytest

from llmkit._validate import build_request
from llmkit.cache import cache_key, key_document

MSG = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "S", "schema": {"type": "object",
          "properties": {"label": {"type": "string"}}}, "strict": True}}
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def key(**kw: Any) -> str:
    named = {k: kw.pop(k) for k in ("temperature", "max_tokens", "timeout", "priority", "metadata", "provider")
             if k in kw}
    model = kw.pop("model", "gpt-4o")
    messages = kw.pop("messages", MSG)
    return cache_key(build_request(model, messages, extra=kw, **named))


BASE = key()


@pytest.mark.parametrize("change", [
    {"model": "gpt-4o-mini"},
    {"messages": [{"role": "user", "content": "hi!"}]},
    {"messages": [{"role": "system", "content": "be brief"}, *MSG]},
    {"temperature": 0.7},
    {"max_tokens": 10},
    {"response_format": SCHEMA},
    {"response_format": {"type": "json_object"}},
    {"tools": [TOOL]},
    {"seed": 7},
    {"stop": ["\n"]},
    {"top_p": 0.5},
    {"logit_bias": {"50256": -100}},  # a provider-specific extra
    {"provider": "openai"},  # a pinned provider may answer differently
], ids=lambda c: next(iter(c)))
def test_a_change_that_can_change_the_answer_changes_the_key(change: dict[str, Any]) -> None:
    assert key(**change) != BASE


def test_a_tool_choice_change_changes_the_key() -> None:
    assert key(tools=[TOOL], tool_choice="auto") != key(tools=[TOOL], tool_choice="none")


def test_a_schema_change_changes_the_key() -> None:
    other = {**SCHEMA, "json_schema": {**SCHEMA["json_schema"], "schema": {"type": "object", "properties": {
        "label": {"type": "string"}, "confidence": {"type": "number"}}}}}
    assert key(response_format=SCHEMA) != key(response_format=other)


@pytest.mark.parametrize("change", [
    {"priority": 5}, {"metadata": {"experiment": "a"}}, {"timeout": 3.0},
], ids=lambda c: next(iter(c)))
def test_what_cannot_change_the_answer_is_not_in_the_key(change: dict[str, Any]) -> None:
    assert key(**change) == BASE


def test_the_request_id_and_streaming_are_not_in_the_key() -> None:
    a = build_request("gpt-4o", MSG)
    b = build_request("gpt-4o", MSG, stream=True)
    assert a.id != b.id and cache_key(a) == cache_key(b)


def test_the_key_is_canonical() -> None:
    assert key(temperature=1) == key(temperature=1.0)
    assert key(top_p=1, seed=3) == key(seed=3, top_p=1.0)  # argument order and int/float spelling agree
    assert key(response_format={"type": "json_object", "x": 1}) == key(response_format={"x": 1, "type": "json_object"})
    assert key(top_p=0.1) != key(top_p=0.10000000000000002)  # distinct floats stay distinct


def test_the_key_document_is_the_documented_shape() -> None:
    request = build_request("gpt-4o", MSG, temperature=0.5, max_tokens=20, metadata={"m": 1}, priority=3,
                            extra={"seed": 1})
    assert key_document(request) == (b'{"extra":{"seed":1},"max_tokens":20,"messages":[{"content":"hi","role":"user"}],'
                                      b'"model":"gpt-4o","temperature":0.5,"v":1}')
    assert len(cache_key(request)) == 64
