"""Structured output and tools at the client: argument checks (bad input fails before anything is sent),
the strict-schema transform, reading answers, and the mock answering response_model, schemas and tools."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, Literal

import pydantic
import pydantic.v1
import pytest

import llmkit
from llmkit import InvalidRequestError, OutputValidationError, ToolCall
from llmkit import structured as st
from llmkit._types import Request, Response

MSG = [{"role": "user", "content": "The service was great, five stars."}]


class Sentiment(pydantic.BaseModel):
    label: Literal["positive", "negative", "neutral"]
    confidence: float = pydantic.Field(ge=0, le=1)


class Address(pydantic.BaseModel):
    city: str
    zip: str | None = None


class Person(pydantic.BaseModel):
    name: str
    age: int = pydantic.Field(ge=0, le=130)
    home: Address
    others: list[Address] = []


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "units": {"enum": ["c", "f"]}}, "required": ["city"]}}}
SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "Item", "strict": True, "schema": {
    "type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
    "required": ["sku", "qty"]}}}


@pytest.fixture
def client() -> Iterator[llmkit.Client]:
    with llmkit.Client([{"name": "m", "adapter": "mock", "breaker": {"fail_max": 1}}], ledger=None,
                       health_interval=None) as c:
        yield c


# ----------------------------------------------------------------------------------------------
# bad input: InvalidRequestError before anything is sent, breaker untouched

class NotAModel:
    label: str


class V1Style(pydantic.v1.BaseModel):
    label: str


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("response_model a plain class", {"response_model": NotAModel}, "not a pydantic BaseModel subclass"),
    ("response_model an instance", {"response_model": Sentiment(label="positive", confidence=1)},
     "pass the class itself"),
    ("response_model a dict", {"response_model": {"type": "object"}}, "pydantic v2 BaseModel subclass"),
    ("response_model pydantic v1", {"response_model": V1Style}, "pydantic v1 model"),
    ("response_model and response_format", {"response_model": Sentiment, "response_format": SCHEMA_FORMAT},
     "not both"),
    ("response_format a string", {"response_format": "json"}, "response_format"),
    ("response_format unknown type", {"response_format": {"type": "xml"}}, "response_format.type"),
    ("json_schema without spec", {"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ("json_schema bad name", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "has spaces", "schema": {"type": "object"}}}}, "json_schema.name"),
    ("schema not an object", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "array", "items": {}}}}}, "root must be"),
    ("schema invalid type", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strnig"}}}}}},
     "not a valid JSON Schema"),
    ("schema required not a list", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "required": "a"}}}}, "not a valid JSON Schema"),
    ("schema dangling ref", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}}}}},
     "points to nothing"),
    ("schema remote ref", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "http://x/s.json"}}}}}},
     "only local $refs"),
    ("strict not a bool", {"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}, "strict": "yes"}}}, "strict"),
    ("tools a dict", {"tools": WEATHER}, "tools: expected a list"),
    ("tools empty", {"tools": []}, "at least one tool"),
    ("tool without wrapper", {"tools": [{"name": "f", "parameters": {"type": "object"}}]}, "tools[0]"),
    ("tool a function object", {"tools": [print]}, "tools[0]"),
    ("tool function not a dict", {"tools": [{"type": "function", "function": "f"}]}, "tools[0].function"),
    ("tool bad name", {"tools": [{"type": "function", "function": {"name": "get weather"}}]},
     "tools[0].function.name"),
    ("tool duplicate name", {"tools": [WEATHER, WEATHER]}, "listed twice"),
    ("tool parameters invalid", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object", "properties": {"a": {"minimum": "zero"}}}}}]},
     "tools[0].function.parameters: not a valid JSON Schema"),
    ("tool parameters not an object", {"tools": [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "string"}}}]}, "root must be"),
    ("tool_choice without tools", {"tool_choice": "auto"}, "only allowed together with tools"),
    ("tool_choice unknown word", {"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
    ("tool_choice unknown tool", {"tools": [WEATHER], "tool_choice": {
        "type": "function", "function": {"name": "nope"}}}, "not in tools"),
    ("structured output with tools", {"response_model": Sentiment, "tools": [WEATHER]}, "not supported"),
    ("max_validation_retries negative", {"response_model": Sentiment, "max_validation_retries": -1},
     "max_validation_retries"),
    ("max_validation_retries a float", {"response_model": Sentiment, "max_validation_retries": 1.5},
     "max_validation_retries"),
]


@pytest.mark.parametrize(("case", "kwargs", "fragment"), BAD, ids=[c[0] for c in BAD])
def test_bad_structured_input_fails_before_sending(client: llmkit.Client, case: str, kwargs: dict[str, Any],
                                                   fragment: str) -> None:
    for call in (client.completion, client.stream, client.completion_async):
        with pytest.raises(InvalidRequestError) as info:
            call("gpt-4o", MSG, **kwargs)
        assert fragment in str(info.value)
    assert client.provider("m").calls == 0  # type: ignore[attr-defined]
    assert len(client._service.ledger) == 0
    breaker = client._service.router.by_name["m"].breaker
    assert (breaker.state, breaker.fail_count) == ("closed", 0)


def test_bad_mock_reply_entry_is_a_config_error() -> None:
    with pytest.raises(llmkit.ConfigError, match="field 'reply'"):
        llmkit.Client([{"name": "m", "adapter": "mock", "reply": "not callable"}], ledger=None)
    with pytest.raises(llmkit.ConfigError, match="on a mock entry"):
        llmkit.Client([{"name": "o", "adapter": "openai", "api_key": "sk-x", "reply": lambda r: "x"}], ledger=None)
    with pytest.raises(llmkit.ConfigError, match="max_validation_retries"):
        llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, max_validation_retries=-1)


def test_import_llmkit_imports_neither_pydantic_nor_jsonschema() -> None:
    code = "import sys, llmkit; print([m for m in ('pydantic', 'jsonschema') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_public_names() -> None:
    assert {"ToolCall", "OutputValidationError"} <= set(llmkit.__all__)
    assert issubclass(OutputValidationError, llmkit.LLMError)
    assert not issubclass(OutputValidationError, ValueError)  # not a bad-input error: the answer was bad


# ----------------------------------------------------------------------------------------------
# what build_request makes of the arguments (the cache key hashes Request.extra)

def test_response_model_becomes_an_openai_shaped_response_format() -> None:
    from llmkit._validate import build_request

    request = build_request("gpt-4o", MSG, extra={"response_model": Sentiment})
    fmt = request.extra["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Sentiment" and fmt["json_schema"]["strict"] is True
    assert fmt["json_schema"]["schema"] == Sentiment.model_json_schema()
    assert request.response_model is Sentiment
    assert "response_model" not in request.extra
    same = build_request("gpt-4o", MSG, extra={"response_format": Sentiment})  # openai-python's parse() style
    assert same.extra == request.extra and same.response_model is Sentiment
    assert "response_model" not in repr(request)  # the class is not in the repr (nor in equality)
    assert request == dataclasses.replace(request, response_model=None)


def test_tool_calls_replay_as_messages() -> None:
    from llmkit._validate import build_request

    call = ToolCall("call_1", "get_weather", {"city": "Oslo"})
    request = build_request("gpt-4o", [*MSG, {"role": "assistant", "content": None, "tool_calls": [call]},
                                       {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}],
                            extra={"tools": [WEATHER]})
    assert request.messages[1]["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]


# ----------------------------------------------------------------------------------------------
# the strict-schema transform

def test_strict_schema_requires_everything_and_forbids_extras() -> None:
    strict = st.strict_schema(Person.model_json_schema())
    assert strict["required"] == ["name", "age", "home", "others"]
    assert strict["additionalProperties"] is False
    address = strict["$defs"]["Address"]
    assert address["required"] == ["city", "zip"] and address["additionalProperties"] is False
    assert "default" not in address["properties"]["zip"]  # default: null dropped, as openai-python does
    assert strict["properties"]["others"]["items"] == {"$ref": "#/$defs/Address"}
    assert Person.model_json_schema()["required"] == ["name", "age", "home"]  # the input is not modified


def test_strict_schema_inlines_refs_with_siblings_and_merges_single_allof() -> None:
    schema = {"type": "object", "$defs": {"A": {"type": "object", "properties": {"x": {"type": "integer"}}}},
              "properties": {"a": {"$ref": "#/$defs/A", "description": "an A"},
                             "b": {"allOf": [{"$ref": "#/$defs/A"}]},
                             "c": {"oneOf": [{"type": "string"}, {"type": "null"}]}}}
    strict = st.strict_schema(schema)
    a = strict["properties"]["a"]
    assert "$ref" not in a and a["description"] == "an A" and a["required"] == ["x"]
    assert a["additionalProperties"] is False
    assert strict["properties"]["b"] == {"$ref": "#/$defs/A"}
    assert strict["properties"]["c"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


def test_openai_format_falls_back_to_non_strict_for_free_form_dicts() -> None:
    class Tagged(pydantic.BaseModel):
        tags: dict[str, int]

    fmt = st.format_for_model(Tagged)
    sent = st.openai_format(fmt)
    assert sent["json_schema"]["strict"] is False
    assert sent["json_schema"]["schema"] == Tagged.model_json_schema()
    strict = st.openai_format(st.format_for_model(Person))
    assert strict["json_schema"]["strict"] is True and strict["json_schema"]["schema"]["additionalProperties"] is False
    assert st.openai_format({"type": "json_object"}) == {"type": "json_object"}


# ----------------------------------------------------------------------------------------------
# reading answers

def _answer(content: str, calls: list[ToolCall] | None = None) -> Response:
    return Response(id="r", content=content, provider="p", model="m", tool_calls=calls or [])


@pytest.mark.parametrize(("text", "ok"), [
    ('{"label": "positive", "confidence": 0.9}', True),
    ('```json\n{"label": "negative", "confidence": 0.1}\n```', True),
    ('Sure! Here it is: {"label": "neutral", "confidence": 0.5} Hope that helps.', True),
    ('{"label": "great", "confidence": 0.9}', False),
    ('{"label": "positive", "confidence": 1.5}', False),
    ('{"label": "positive"', False),
    ("", False),
])
def test_check_validates_with_the_model(text: str, ok: bool) -> None:
    request = Request(model="m", messages=tuple(MSG), extra={"response_format": st.format_for_model(Sentiment)},
                      response_model=Sentiment)
    value, errors, raw = st.check(request, _answer(text))
    assert raw == text
    if ok:
        assert isinstance(value, Sentiment) and errors is None
    else:
        assert value is None and errors


def test_check_validates_a_plain_schema_to_a_dict() -> None:
    request = Request(model="m", messages=tuple(MSG), extra={"response_format": SCHEMA_FORMAT})
    assert st.check(request, _answer('{"sku": "A1", "qty": 2}'))[:2] == ({"sku": "A1", "qty": 2}, None)
    value, errors, _ = st.check(request, _answer('{"sku": "A1", "qty": 0}'))
    assert value is None and errors == [{"loc": ["qty"], "msg": "0 is less than the minimum of 1"}]
    json_object = Request(model="m", messages=tuple(MSG), extra={"response_format": {"type": "json_object"}})
    assert st.check(json_object, _answer('{"any": [1]}'))[0] == {"any": [1]}
    assert st.check(json_object, _answer("[1, 2]"))[1] == [{"loc": [], "msg": "expected a JSON object, got list"}]


def test_malformed_tool_arguments_keep_the_raw_string() -> None:
    call = ToolCall.from_json("call_1", "get_weather", '{"city": "Os')
    assert call.arguments == {} and call.raw_arguments == '{"city": "Os' and "not valid JSON" in (call.error or "")
    assert ToolCall.from_json("c", "f", "[1]").error == "arguments are not a JSON object (got list)"
    assert ToolCall.from_json("c", "f", "").arguments == {}
    request = Request(model="m", messages=tuple(MSG), extra={"tools": [WEATHER]})
    value, errors, raw = st.check(request, _answer("", [call]))
    assert value is None and raw == '{"city": "Os' and errors and "not valid JSON" in errors[0]["msg"]
    unknown = ToolCall.from_json("c", "launch_rockets", "{}")
    assert "no tool named 'launch_rockets'" in st.check(request, _answer("", [unknown]))[1][0]["msg"]


# ----------------------------------------------------------------------------------------------
# the mock honours it all

def test_mock_answers_a_response_model_with_a_valid_deterministic_instance(client: llmkit.Client) -> None:
    first = client.completion("gpt-4o", MSG, response_model=Person)
    again = client.completion("gpt-4o", MSG, response_model=Person)
    assert isinstance(first.parsed, Person) and first.parsed == again.parsed
    assert first.parsed == Person.model_validate_json(first.content)
    assert first.finish_reason == "stop" and first.tool_calls == []
    other = client.completion("gpt-4o", [{"role": "user", "content": "another text"}], response_model=Person)
    assert other.parsed != first.parsed  # seeded by the request: different prompts, different answers


def test_mock_seed_changes_the_answers() -> None:
    def parsed(seed: int) -> Any:
        with llmkit.Client([{"name": "m", "adapter": "mock", "options": {"seed": seed}}], ledger=None,
                           health_interval=None) as c:
            return [c.completion("m", [{"role": "user", "content": str(i)}], response_model=Person).parsed
                    for i in range(3)]

    assert parsed(1) == parsed(1) != parsed(2)


def test_mock_answers_a_plain_schema_and_json_object(client: llmkit.Client) -> None:
    resp = client.completion("gpt-4o", MSG, response_format=SCHEMA_FORMAT)
    assert isinstance(resp.parsed, dict) and set(resp.parsed) >= {"sku", "qty"} and resp.parsed["qty"] >= 1
    resp = client.completion("gpt-4o", MSG, response_format={"type": "json_object"})
    assert isinstance(resp.parsed, dict)


def test_mock_calls_the_chosen_tool_then_answers_its_result(client: llmkit.Client) -> None:
    other = {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}
    named = {"type": "function", "function": {"name": "get_time"}}
    resp = client.completion("gpt-4o", MSG, tools=[WEATHER, other], tool_choice=named)
    assert resp.finish_reason == "tool_calls" and resp.content == ""
    [call] = resp.tool_calls
    assert call.name == "get_time" and isinstance(call.arguments["tz"], str) and call.id.startswith("call_")
    resp = client.completion("gpt-4o", MSG, tools=[WEATHER], tool_choice="required")
    assert resp.tool_calls[0].name == "get_weather" and "city" in resp.tool_calls[0].arguments
    assert resp.tool_calls[0].arguments.get("units", "c") in ("c", "f")
    assert client.completion("gpt-4o", MSG, tools=[WEATHER], tool_choice="none").tool_calls == []
    turn = [*MSG, {"role": "assistant", "content": None, "tool_calls": resp.tool_calls},
            {"role": "tool", "tool_call_id": resp.tool_calls[0].id, "content": "12 C and sunny"}]
    final = client.completion("gpt-4o", turn, tools=[WEATHER])
    assert final.tool_calls == [] and final.finish_reason == "stop" and "12 C and sunny" in final.content


def test_mock_reply_callable_scripts_text_dicts_and_tool_calls() -> None:
    seen: list[Request] = []

    def reply(request: Request) -> Any:
        seen.append(request)
        if request.extra.get("tools"):
            return [ToolCall("call_7", "get_weather", {"city": "Rome"})]
        if request.response_model is Sentiment:
            return {"label": "negative", "confidence": 0.25}
        return "scripted"

    with llmkit.Client([{"name": "m", "adapter": "mock", "reply": reply}], ledger=None, health_interval=None) as c:
        assert c.completion("m", MSG).content == "scripted"
        assert c.completion("m", MSG, response_model=Sentiment).parsed == Sentiment(label="negative", confidence=0.25)
        resp = c.completion("m", MSG, tools=[WEATHER])
        assert resp.tool_calls == [ToolCall("call_7", "get_weather", {"city": "Rome"})]
        stream = c.stream("m", MSG, response_model=Sentiment)
        assert "".join(ch.text for ch in stream) == '{"label": "negative", "confidence": 0.25}'
        assert stream.response is not None and stream.response.parsed.label == "negative"
    assert len(seen) == 4 and all(isinstance(r, Request) for r in seen)


def test_mock_reply_of_the_wrong_type_is_a_clear_error() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock", "reply": lambda r: 42, "max_retries": 0}], ledger=None,
                       health_interval=None) as c, pytest.raises(llmkit.ProviderError, match="returned int"):
        c.completion("m", MSG)


async def test_every_call_style_parses(client: llmkit.Client) -> None:
    resp = await client.acompletion("gpt-4o", MSG, response_model=Sentiment)
    assert isinstance(resp.parsed, Sentiment)
    rid = client.completion_async("gpt-4o", MSG, response_model=Sentiment)
    assert (await client.aget_result(rid, timeout=30)).parsed == resp.parsed  # same request, same mock answer
    stream = client.astream("gpt-4o", MSG, response_model=Sentiment)
    text = "".join([chunk.text async for chunk in stream])
    assert stream.response is not None and stream.response.parsed == Sentiment.model_validate_json(text)
    assert stream.response.parsed == resp.parsed


def test_validation_retries_with_the_mock_and_scripted_replies() -> None:
    replies = ['{"label": "meh", "confidence": 0.5}', "not json at all", '{"label": "neutral", "confidence": 0.5}']
    with llmkit.Client([{"name": "m", "adapter": "mock", "options": {"replies": replies}}], ledger=None,
                       health_interval=None) as c:
        resp = c.completion("gpt-4o", MSG, response_model=Sentiment)
        assert resp.parsed == Sentiment(label="neutral", confidence=0.5)
        assert c.provider("m").calls == 3  # type: ignore[attr-defined]
        assert [a.error for a in resp.attempts] == ["OutputValidationError", "OutputValidationError", None]
        with pytest.raises(OutputValidationError) as info:
            c.completion("gpt-4o", MSG, response_model=Sentiment, max_validation_retries=1)
        assert info.value.raw == "not json at all" and "Invalid JSON" in str(info.value)
        assert c.provider("m").calls == 5  # type: ignore[attr-defined]
