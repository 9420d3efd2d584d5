"""Malformed tool-call conversations are refused before sending, the same on every adapter (llmkit._conversation):
nothing reaches the server, the breaker is untouched, and the error says which message is wrong."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import llmkit
from llmkit.testing import FakeAnthropicServer, FakeGeminiServer, FakeLLMServer, FakeOpenAIServer

USER = {"role": "user", "content": "Weather in Oslo?"}
WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def call(arguments: Any = '{"city": "Oslo"}', id: Any = "call_1", name: Any = "get_weather") -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}


def asked(*calls: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": list(calls)}


def result(id: Any = "call_1") -> dict[str, Any]:
    message = {"role": "tool", "content": "12C"}
    if id is not None:
        message["tool_call_id"] = id
    return message


BAD: list[tuple[str, list[dict[str, Any]], dict[str, Any], str]] = [
    ("non-JSON arguments", [USER, asked(call("{city: Oslo")), result()], {}, r"tool_calls\[0\].function.arguments"),
    ("arguments not an object", [USER, asked(call('["Oslo"]')), result()], {}, "expected a JSON object"),
    ("arguments null", [USER, asked(call("null")), result()], {}, "expected a JSON object"),
    ("arguments a number", [USER, asked(call(3)), result()], {}, "arguments"),
    ("call without id", [USER, asked(call(id=None))], {}, r"tool_calls\[0\].id"),
    ("call without function", [USER, {"role": "assistant", "content": None, "tool_calls": [{"id": "x"}]}], {},
     r"tool_calls\[0\]"),
    ("call without name", [USER, asked(call(name="")), result()], {}, "function.name"),
    ("tool_calls not a list", [USER, {"role": "assistant", "content": None, "tool_calls": "x"}], {}, "a list"),
    ("tool message without tool_call_id", [USER, asked(call()), result(None)], {}, "tool_call_id"),
    ("orphan tool message", [USER, asked(call()), result("call_9")], {}, "'call_9' matches no tool call"),
    ("tool message before any call", [USER, result()], {}, "matches no tool call"),
    ("tool_calls on a user message", [{**USER, "tool_calls": [call()]}], {}, "only an assistant"),
    ("parallel_tool_calls not a bool", [USER], {"tools": WEATHER, "parallel_tool_calls": "yes"},
     "parallel_tool_calls"),
]


@pytest.fixture(params=["openai", "anthropic", "gemini", "openai_compatible"])
def served(request: pytest.FixtureRequest) -> Iterator[tuple[str, FakeLLMServer]]:
    fake = {"openai": FakeOpenAIServer, "anthropic": FakeAnthropicServer, "gemini": FakeGeminiServer,
            "openai_compatible": FakeOpenAIServer}[request.param]
    with fake() as server:
        yield request.param, server


@pytest.mark.parametrize(("case", "messages", "extra", "match"), BAD, ids=[b[0] for b in BAD])
def test_malformed_tool_conversation_is_refused_before_sending(
        served: tuple[str, FakeLLMServer], case: str, messages: list[dict[str, Any]], extra: dict[str, Any],
        match: str) -> None:
    adapter, server = served
    provider = {"name": "p", "adapter": adapter, "base_url": server.url, "api_key": "k", "models": ["*"],
                "max_retries": 0, "breaker": {"fail_max": 1}}
    with llmkit.Client([provider], ledger=None, health_interval=None) as client:
        for _ in range(2):  # a breaker counting it would be open (fail_max 1) the second time
            with pytest.raises(llmkit.InvalidRequestError, match=match):
                client.completion(model="m", messages=messages, **extra)
            with pytest.raises(llmkit.InvalidRequestError, match=match):
                list(client.stream(model="m", messages=messages, **extra))
        assert client.health().loc[0, "breaker_state"] == "closed"
    assert server.requests == []


def test_good_tool_conversation_is_sent(served: tuple[str, FakeLLMServer]) -> None:
    adapter, server = served
    provider = {"name": "p", "adapter": adapter, "base_url": server.url, "api_key": "k", "models": ["*"]}
    messages = [USER, asked(call(), call('{"city": "Rome"}', id="call_2"), call("", id="call_3")),
                result("call_2"), result("call_1"), result("call_3")]
    with llmkit.Client([provider], ledger=None, health_interval=None) as client:
        client.completion(model="m", messages=messages, tools=WEATHER, parallel_tool_calls=True)
        client.completion(model="m", messages=[USER, asked(call({"city": "Oslo"})), result()], tools=WEATHER)
    assert len(server.requests) == 2
    if adapter in ("openai", "openai_compatible"):  # a dict's arguments go out as the JSON string OpenAI wants
        assert server.requests[1].json["messages"][1]["tool_calls"][0]["function"]["arguments"] == \
            '{"city": "Oslo"}'
    if adapter == "anthropic":  # the decoded arguments, never a silent {}
        blocks = server.requests[1].json["messages"][1]["content"]
        assert blocks[-1]["input"] == {"city": "Oslo"}
