"""Structured output and tools on the wire: OpenAI, Anthropic, Gemini and OpenAI-compatible servers (loopback fakes).
Each test checks the request body sent and the reply parsed, through the whole client (routing, ledger)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pydantic
import pytest
from wire_helpers import ANTHROPIC_KEY, OPENAI_KEY

import llmkit
from llmkit import OutputValidationError, ToolCall
from llmkit.testing import FakeAnthropicServer, FakeGeminiServer, FakeOpenAIServer

WIRE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "wire"
PRICE = {"input": 1.0, "output": 2.0}  # USD per million tokens: costs are exact sums of tokens
MSG = [{"role": "user", "content": "Loved it. Would buy again."}]


class Sentiment(pydantic.BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = pydantic.Field(ge=0, le=1)


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Person(pydantic.BaseModel):
    name: str
    home: Address


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
GOOD = '{"label": "positive", "confidence": 0.9}'
BAD = '{"label": "great", "confidence": 0.9}'


def client_for(server: FakeOpenAIServer | FakeAnthropicServer | FakeGeminiServer, adapter: str,
               **entry: Any) -> llmkit.Client:
    key = {"openai": OPENAI_KEY, "anthropic": ANTHROPIC_KEY}.get(adapter)
    client_options = entry.pop("client", {})
    provider = {"name": "p", "adapter": adapter, "base_url": server.url, "api_key": key, "max_retries": 0,
                "breaker": {"fail_max": 1}, "pricing": {"*": PRICE}, **entry}
    return llmkit.Client([provider], ledger=None, health_interval=None, **client_options)


def sent(server: FakeOpenAIServer | FakeAnthropicServer) -> list[dict[str, Any]]:
    return [r.json for r in server.requests if r.path == server.completion_path]


@pytest.fixture
def openai() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def anthropic() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as server:
        yield server


# ----------------------------------------------------------------------------------------------
# OpenAI

def test_openai_response_model_sends_a_strict_schema_and_parses_the_reply(openai: FakeOpenAIServer) -> None:
    with client_for(openai, "openai") as client:
        resp = client.completion("gpt-4o", MSG, response_model=Person)
    [body] = sent(openai)
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "Person"
    assert fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    assert schema["required"] == ["name", "home"] and schema["additionalProperties"] is False
    assert schema["$defs"]["Address"]["required"] == ["city", "zip"]  # strict: every property required
    assert schema["$defs"]["Address"]["additionalProperties"] is False
    assert body["messages"] == MSG and "response_model" not in body
    assert isinstance(resp.parsed, Person) and resp.parsed == Person.model_validate_json(resp.content)


def test_openai_plain_schema_parses_to_a_dict(openai: FakeOpenAIServer) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "Item", "schema": {
        "type": "object", "properties": {"sku": {"type": "string"}}, "required": ["sku"]}}}
    openai.enqueue('{"sku": "A-1"}')
    with client_for(openai, "openai") as client:
        resp = client.completion("gpt-4o", MSG, response_format=fmt)
    assert sent(openai)[0]["response_format"] == fmt  # not strict: sent as given
    assert resp.parsed == {"sku": "A-1"}


def test_openai_validation_retry_adds_the_errors_and_sums_the_cost(openai: FakeOpenAIServer) -> None:
    openai.enqueue(BAD, usage={"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110})
    openai.enqueue(GOOD, usage={"prompt_tokens": 200, "completion_tokens": 20, "total_tokens": 220})
    with client_for(openai, "openai") as client:
        resp = client.completion("gpt-4o", MSG, response_model=Sentiment)
        usage = client.usage()
        events = client.events("validation_retry")
    first, second = sent(openai)
    assert first["messages"] == MSG
    assert second["messages"][:2] == [*MSG, {"role": "assistant", "content": BAD}]
    correction = second["messages"][2]
    assert correction["role"] == "user" and "label" in correction["content"] and "'great'" in correction["content"]
    assert second["response_format"] == first["response_format"]
    assert resp.parsed == Sentiment(label="positive", confidence=0.9)
    assert [(a.outcome, a.error) for a in resp.attempts] == [("error", "OutputValidationError"), ("ok", None)]
    assert (resp.usage.input_tokens, resp.usage.output_tokens) == (300, 30)
    assert resp.cost_usd == pytest.approx((300 * 1.0 + 30 * 2.0) / 1e6)
    [row] = usage.to_dict("records")
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == ("ok", 300, 30)
    assert row["cost_usd"] == pytest.approx(resp.cost_usd) and row["attempts"] == 2
    assert len(events) == 1


@pytest.mark.parametrize(("per_call", "config", "requests"), [(None, None, 3), (0, None, 1), (None, 1, 2),
                                                               (4, 0, 5)])
def test_openai_validation_failure_after_the_retries(openai: FakeOpenAIServer, per_call: int | None,
                                                     config: int | None, requests: int) -> None:
    for i in range(requests):
        openai.enqueue(f'{{"label": "bad{i}"}}', usage={"prompt_tokens": 10, "completion_tokens": 5,
                                                        "total_tokens": 15})
    openai.enqueue(GOOD)  # never reached
    kwargs = {} if per_call is None else {"max_validation_retries": per_call}
    entry = {} if config is None else {"client": {"max_validation_retries": config}}
    with client_for(openai, "openai", **entry) as client:
        with pytest.raises(OutputValidationError) as info:
            client.completion("gpt-4o", MSG, response_model=Sentiment, **kwargs)
        [row] = client.usage().to_dict("records")
        breaker = client._service.router.by_name["p"].breaker
        assert (breaker.state, breaker.fail_count) == ("closed", 0)  # the provider answered: not its failure
        assert client.completion("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=0).parsed
    assert len(sent(openai)) == requests + 1
    err = info.value
    assert err.raw == f'{{"label": "bad{requests - 1}"}}'
    assert {e["loc"][0] for e in err.errors} == {"label", "confidence"}
    assert err.response is not None and err.response.usage.input_tokens == 10 * requests
    assert (row["status"], row["error_type"]) == ("error", "OutputValidationError")
    assert (row["input_tokens"], row["output_tokens"]) == (10 * requests, 5 * requests)  # every try paid for
    assert row["cost_usd"] == pytest.approx(requests * (10 * 1.0 + 5 * 2.0) / 1e6)


def test_openai_tool_round_trip(openai: FakeOpenAIServer) -> None:
    openai.enqueue(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
                               {"id": "call_2", "name": "get_weather", "arguments": {"city": "Rome"}}])
    openai.enqueue("Oslo is cold, Rome is warm.")
    choice = {"type": "function", "function": {"name": "get_weather"}}
    with client_for(openai, "openai") as client:
        resp = client.completion("gpt-4o", MSG, tools=[WEATHER], tool_choice=choice, parallel_tool_calls=True)
        assert resp.finish_reason == "tool_calls" and resp.content == ""
        assert resp.tool_calls == [ToolCall("call_1", "get_weather", {"city": "Oslo"}),
                                   ToolCall("call_2", "get_weather", {"city": "Rome"})]
        turn = [*MSG, {"role": "assistant", "content": None, "tool_calls": resp.tool_calls},
                *({"role": "tool", "tool_call_id": c.id, "content": f"{c.arguments['city']}: 20C"}
                  for c in resp.tool_calls)]
        final = client.completion("gpt-4o", turn, tools=[WEATHER])
    first, second = sent(openai)
    assert first["tools"] == [WEATHER] and first["tool_choice"] == choice and first["parallel_tool_calls"] is True
    assert second["messages"][1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}]}
    assert second["messages"][2:] == [{"role": "tool", "tool_call_id": "call_1", "content": "Oslo: 20C"},
                                      {"role": "tool", "tool_call_id": "call_2", "content": "Rome: 20C"}]
    assert final.content == "Oslo is cold, Rome is warm." and final.tool_calls == []


def test_openai_strict_tools_get_strict_parameters(openai: FakeOpenAIServer) -> None:
    strict_tool = {"type": "function", "function": {**WEATHER["function"], "strict": True}}
    openai.enqueue(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}}])
    with client_for(openai, "openai") as client:
        client.completion("gpt-4o", MSG, tools=[strict_tool])
    [sent_tool] = sent(openai)[0]["tools"]
    assert sent_tool["function"]["strict"] is True
    assert sent_tool["function"]["parameters"] == {"type": "object", "properties": {"city": {"type": "string"}},
                                                   "required": ["city"], "additionalProperties": False}


def test_openai_malformed_tool_arguments_are_asked_again_then_fail_with_the_raw_string(
        openai: FakeOpenAIServer) -> None:
    broken = '{"city": "Os'
    openai.enqueue(tool_calls=[{"id": "call_1", "name": "get_weather", "arguments": broken}])
    openai.enqueue(tool_calls=[{"id": "call_2", "name": "get_weather", "arguments": {"city": "Oslo"}}])
    openai.enqueue(tool_calls=[{"id": "call_3", "name": "get_weather", "arguments": broken}])
    with client_for(openai, "openai") as client:
        resp = client.completion("gpt-4o", MSG, tools=[WEATHER])
        assert resp.tool_calls == [ToolCall("call_2", "get_weather", {"city": "Oslo"})]
        assert broken in sent(openai)[1]["messages"][-1]["content"]
        with pytest.raises(OutputValidationError) as info:
            client.completion("gpt-4o", MSG, tools=[WEATHER], max_validation_retries=0)
    assert info.value.raw == broken and "not valid JSON" in str(info.value)
    assert len(sent(openai)) == 3


def test_openai_stream_parses_at_the_end(openai: FakeOpenAIServer) -> None:
    openai.enqueue(GOOD)
    openai.enqueue(BAD)
    with client_for(openai, "openai") as client:
        stream = client.stream("gpt-4o", MSG, response_model=Sentiment)
        assert "".join(c.text for c in stream) == GOOD
        assert stream.response is not None and stream.response.parsed == Sentiment(label="positive", confidence=0.9)
        bad = client.stream("gpt-4o", MSG, response_model=Sentiment)
        with pytest.raises(OutputValidationError) as info:
            list(bad)
        rows = client.usage().to_dict("records")
    assert info.value.raw == BAD
    assert [r["status"] for r in rows] == ["ok", "error"] and rows[1]["output_tokens"] > 0
    assert sent(openai)[0]["response_format"]["json_schema"]["name"] == "Sentiment"


@pytest.mark.skipif(not WIRE.is_dir(), reason="shared wire fixtures are absent")
def test_openai_stream_assembles_recorded_tool_call_deltas(openai: FakeOpenAIServer) -> None:
    openai.enqueue_raw((WIRE / "openai_chat_stream_tool_calls_with_usage.sse").read_bytes(),
                       headers={"content-type": "text/event-stream"})
    with client_for(openai, "openai") as client:
        stream = client.stream("gpt-4o", MSG, tools=[WEATHER])
        assert "".join(c.text for c in stream) == ""
    final = stream.response
    assert final is not None and final.finish_reason == "tool_calls"
    assert final.tool_calls == [ToolCall("call_4XzlGBLtUe9dy3GVNV4jhq7h", "get_weather", {"city": "New York City"})]


# ----------------------------------------------------------------------------------------------
# Anthropic

def test_anthropic_response_model_is_a_forced_tool(anthropic: FakeAnthropicServer) -> None:
    with client_for(anthropic, "anthropic") as client:
        resp = client.completion("claude-sonnet-4-5", MSG, response_model=Person)
    [body] = sent(anthropic)
    assert "response_format" not in body
    [tool] = body["tools"]
    assert tool["name"] == "Person" and tool["input_schema"] == Person.model_json_schema()
    assert body["tool_choice"] == {"type": "tool", "name": "Person"}
    assert isinstance(resp.parsed, Person)
    assert resp.tool_calls == [] and resp.finish_reason == "stop"  # the forced tool is the answer, not a call
    assert Person.model_validate_json(resp.content) == resp.parsed


def test_anthropic_validation_retry(anthropic: FakeAnthropicServer) -> None:
    anthropic.enqueue(tool_calls=[{"id": "toolu_1", "name": "Sentiment",
                                   "arguments": {"label": "great", "confidence": 2}}])
    with client_for(anthropic, "anthropic") as client:
        resp = client.completion("claude-sonnet-4-5", MSG, response_model=Sentiment)
    first, second = sent(anthropic)
    assert second["messages"][0] == first["messages"][0] == {"role": "user", "content": MSG[0]["content"]}
    assert second["messages"][1] == {"role": "assistant", "content": '{"label": "great", "confidence": 2}'}
    assert second["messages"][2]["role"] == "user" and "confidence" in second["messages"][2]["content"]
    assert second["tool_choice"] == {"type": "tool", "name": "Sentiment"}
    assert isinstance(resp.parsed, Sentiment) and len(resp.attempts) == 2


def test_anthropic_stream_of_a_forced_tool_is_the_answer_text(anthropic: FakeAnthropicServer) -> None:
    anthropic.enqueue(tool_calls=[{"id": "toolu_1", "name": "Sentiment",
                                   "arguments": {"label": "neutral", "confidence": 0.5}}])
    with client_for(anthropic, "anthropic") as client:
        stream = client.stream("claude-sonnet-4-5", MSG, response_model=Sentiment)
        text = "".join(c.text for c in stream)
    assert text == '{"label": "neutral", "confidence": 0.5}'
    assert stream.response is not None and stream.response.parsed == Sentiment(label="neutral", confidence=0.5)
    assert stream.response.finish_reason == "stop" and stream.response.tool_calls == []


def test_anthropic_json_object_is_a_system_instruction(anthropic: FakeAnthropicServer) -> None:
    anthropic.enqueue('```json\n{"a": 1}\n```')
    with client_for(anthropic, "anthropic") as client:
        resp = client.completion("claude-sonnet-4-5", [{"role": "system", "content": "Be terse."}, *MSG],
                                 response_format={"type": "json_object"})
    [body] = sent(anthropic)
    assert body["system"].startswith("Be terse.\n\n") and "JSON object" in body["system"]
    assert "response_format" not in body and "tools" not in body
    assert resp.parsed == {"a": 1}


def test_anthropic_tool_round_trip(anthropic: FakeAnthropicServer) -> None:
    anthropic.enqueue("Checking both.", tool_calls=[
        {"id": "toolu_1", "name": "get_weather", "arguments": {"city": "Oslo"}},
        {"id": "toolu_2", "name": "get_weather", "arguments": {"city": "Rome"}}])
    anthropic.enqueue("Oslo is cold, Rome is warm.")
    with client_for(anthropic, "anthropic") as client:
        resp = client.completion("claude-sonnet-4-5", MSG, tools=[WEATHER], tool_choice="auto",
                                 parallel_tool_calls=False)
        assert (resp.content, resp.finish_reason) == ("Checking both.", "tool_calls")
        assert [c.id for c in resp.tool_calls] == ["toolu_1", "toolu_2"]
        turn = [*MSG, {"role": "assistant", "content": resp.content, "tool_calls": resp.tool_calls},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "Oslo: 2C"},
                {"role": "tool", "tool_call_id": "toolu_2", "content": "Rome: 24C"}]
        final = client.completion("claude-sonnet-4-5", turn, tools=[WEATHER], tool_choice="none")
    first, second = sent(anthropic)
    assert first["tools"] == [{"name": "get_weather", "description": "Weather in a city",
                               "input_schema": WEATHER["function"]["parameters"]}]
    assert first["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    assert "parallel_tool_calls" not in first
    assert second["tool_choice"] == {"type": "none"}
    assert second["messages"][1:] == [
        {"role": "assistant", "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
            {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Rome"}}]},
        {"role": "user", "content": [  # both results in one user message, ids kept
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Oslo: 2C"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "Rome: 24C"}]},
    ]
    assert final.content == "Oslo is cold, Rome is warm."


def test_anthropic_named_and_required_tool_choice(anthropic: FakeAnthropicServer) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    with client_for(anthropic, "anthropic") as client:
        for choice in (named, "required"):
            anthropic.enqueue(tool_calls=[{"id": "toolu_9", "name": "get_weather", "arguments": {"city": "Oslo"}}])
            client.completion("claude-sonnet-4-5", MSG, tools=[WEATHER], tool_choice=choice)
    assert [b["tool_choice"] for b in sent(anthropic)] == [{"type": "tool", "name": "get_weather"}, {"type": "any"}]


@pytest.mark.skipif(not WIRE.is_dir(), reason="shared wire fixtures are absent")
def test_anthropic_stream_assembles_recorded_input_json_deltas(anthropic: FakeAnthropicServer) -> None:
    anthropic.enqueue_raw((WIRE / "anthropic_stream_tool_use.sse").read_bytes(),
                          headers={"content-type": "text/event-stream"})
    with client_for(anthropic, "anthropic") as client:
        stream = client.stream("claude-haiku-4-5", MSG, tools=[WEATHER | {"function": {
            "name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}])
        assert "".join(c.text for c in stream) == ""
    final = stream.response
    assert final is not None and final.finish_reason == "tool_calls"
    assert final.tool_calls == [ToolCall("toolu_018acGYLtfR52q9yDbWaEdQZ", "get_weather",
                                         {"location": "San Francisco, CA", "units": "f"})]


# ----------------------------------------------------------------------------------------------
# Gemini

@pytest.mark.parametrize("stream", [False, True])
def test_gemini_response_model_end_to_end(stream: bool) -> None:
    with FakeGeminiServer() as server, client_for(server, "gemini", api_key="AIza-test") as client:
        if stream:
            chunks = client.stream("gemini-2.5-flash", MSG, response_model=Person)
            list(chunks)
            resp = chunks.response
        else:
            resp = client.completion("gemini-2.5-flash", MSG, response_model=Person)
        [body] = [r.json for r in server.requests]
    config = body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"]["required"] == ["name", "home"]
    assert resp is not None and isinstance(resp.parsed, Person)  # the fake answers with a valid instance
    assert Person.model_validate_json(resp.content) == resp.parsed


def test_gemini_validation_retry_then_parses() -> None:
    with FakeGeminiServer() as server, client_for(server, "gemini", api_key="AIza-test") as client:
        server.enqueue(BAD)
        resp = client.completion("gemini-2.5-flash", MSG, response_model=Sentiment)
        _, second = [r.json for r in server.requests]
    assert isinstance(resp.parsed, Sentiment)
    assert second["contents"][1] == {"role": "model", "parts": [{"text": BAD}]}  # the bad answer, then the errors
    assert "label" in second["contents"][2]["parts"][0]["text"]


def test_gemini_fake_answers_an_openapi_response_schema_and_plain_json() -> None:
    schema = {"type": "OBJECT", "properties": {"sku": {"type": "STRING"}, "n": {"type": "INTEGER", "nullable": True}},
              "required": ["sku", "n"]}
    with FakeGeminiServer() as server, client_for(server, "gemini", api_key="AIza-test") as client:
        native = client.completion("gemini-2.5-flash", MSG, generationConfig={
            "responseMimeType": "application/json", "responseSchema": schema})
        plain = client.completion("gemini-2.5-flash", MSG, response_format={"type": "json_object"})
    value = json.loads(native.content)
    assert isinstance(value["sku"], str) and (value["n"] is None or isinstance(value["n"], int))
    assert json.loads(plain.content) == {"echo": MSG[0]["content"]}


def test_openai_fake_answers_json_object_with_json(openai: FakeOpenAIServer) -> None:
    with client_for(openai, "openai") as client:
        resp = client.completion("gpt-4o", MSG, response_format={"type": "json_object"})
    assert json.loads(resp.content) == {"echo": MSG[0]["content"]}


# ----------------------------------------------------------------------------------------------
# OpenAI-compatible servers

@pytest.mark.parametrize("flavor", ["ollama", "vllm", "llamacpp"])
def test_compatible_sends_response_format_json_schema(flavor: str) -> None:
    with FakeOpenAIServer(flavor=flavor) as server, client_for(server, "openai_compatible") as client:
        resp = client.completion("llama3.1:8b", MSG, response_model=Person)
        [body] = sent(server)
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "Person", "schema": Person.model_json_schema(), "strict": True}}
    assert body["messages"] == MSG
    assert isinstance(resp.parsed, Person)


def test_compatible_json_object_fallback_puts_the_schema_in_the_prompt() -> None:
    with FakeOpenAIServer(flavor="ollama") as server, client_for(
            server, "openai_compatible", options={"structured_output": "json_object"}) as client:
        server.enqueue(BAD)
        server.enqueue('Here you go:\n```json\n{"label": "negative", "confidence": 0.2}\n```')
        resp = client.completion("llama3.1:8b", MSG, response_model=Sentiment)
        first, second = sent(server)
    assert first["response_format"] == {"type": "json_object"}
    system = first["messages"][0]
    assert system["role"] == "system" and '"enum":["positive","negative","neutral"]' in system["content"]
    assert first["messages"][1:] == MSG
    assert second["messages"][0] == system and second["messages"][2] == {"role": "assistant", "content": BAD}
    assert resp.parsed == Sentiment(label="negative", confidence=0.2)


def test_compatible_prompt_mode_sends_no_response_format() -> None:
    with FakeOpenAIServer(flavor="llamacpp") as server, client_for(
            server, "openai_compatible", options={"structured_output": "prompt"}) as client:
        server.enqueue(GOOD)
        resp = client.completion("local", MSG, response_model=Sentiment)
        [body] = sent(server)
    assert "response_format" not in body and "JSON schema" in body["messages"][0]["content"]
    assert resp.parsed.label == "positive"


def test_compatible_bad_structured_output_option() -> None:
    with pytest.raises(llmkit.ConfigError, match="structured_output"):
        llmkit.Client([{"name": "l", "adapter": "openai_compatible", "options": {"structured_output": "xml"}}],
                      ledger=None, health_interval=None)
