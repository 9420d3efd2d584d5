"""The Anthropic adapter over real HTTP against FakeAnthropicServer: translation, streams, errors, faults."""

from __future__ import annotations

import json
import logging

import pytest
from conftest import MakeProvider
from wire_helpers import ANTHROPIC_KEY, collect, req

import llmkit
from llmkit.testing import FakeAnthropicServer

pytestmark = pytest.mark.asyncio

CLAUDE = "claude-sonnet-4-5"


async def test_complete_normalises_usage_with_cache(make_provider: MakeProvider) -> None:
    with FakeAnthropicServer(reply="Paris.", model="claude-sonnet-4-5-20250929", cached_tokens=5,
                             cache_write_tokens=3) as server:
        resp = await make_provider("anthropic", server.url).complete(req("Capital of France?", model=CLAUDE))
    wire = resp.raw["usage"]
    assert resp.content == "Paris."
    assert resp.model == "claude-sonnet-4-5-20250929"
    assert resp.finish_reason == "stop"
    assert (wire["cache_read_input_tokens"], wire["cache_creation_input_tokens"]) == (5, 3)
    assert resp.usage.input_tokens == wire["input_tokens"] + 5 + 3
    assert (resp.usage.cache_read_tokens, resp.usage.cache_write_tokens) == (5, 3)
    assert resp.usage.output_tokens == wire["output_tokens"]
    assert resp.provider_request_id and resp.provider_request_id.startswith("req_")


async def test_request_translation(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    provider = make_provider("anthropic", anthropic_server.url, headers={"anthropic-beta": "tools-2024"})
    messages = ({"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Use French."},
                {"role": "user", "content": "Hi", "name": "bob"})
    tools = [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}]
    await provider.complete(req(messages=messages, model=CLAUDE, temperature=0.5,
                                extra={"stop": "END", "top_k": 5, "tools": tools, "tool_choice": "required"}))
    sent = anthropic_server.last_request
    assert sent is not None and (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "tools-2024"
    assert "authorization" not in sent.headers
    assert sent.json == {
        "model": CLAUDE, "system": "Be brief.\n\nUse French.", "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4096, "temperature": 0.5, "stop_sequences": ["END"], "top_k": 5,
        "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
        "tool_choice": {"type": "any"},
    }


async def test_max_tokens_option_and_explicit_value(anthropic_server: FakeAnthropicServer,
                                                    make_provider: MakeProvider) -> None:
    provider = make_provider("anthropic", anthropic_server.url, options={"default_max_tokens": 256})
    await provider.complete(req())
    assert anthropic_server.last_request.json["max_tokens"] == 256
    await provider.complete(req(max_tokens=9))
    assert anthropic_server.last_request.json["max_tokens"] == 9


async def test_temperature_is_clamped_with_a_warning(anthropic_server: FakeAnthropicServer,
                                                     make_provider: MakeProvider,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="llmkit"):
        await make_provider("anthropic", anthropic_server.url).complete(req(temperature=1.7))
    assert anthropic_server.last_request.json["temperature"] == 1.0
    assert "clamped to 1.0" in caplog.text


async def test_tool_round_trip_messages(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    call = {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    messages = ({"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"})
    await make_provider("anthropic", anthropic_server.url).complete(req(messages=messages))
    assert anthropic_server.last_request.json["messages"][1:] == [
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "weather",
                                           "input": {"city": "Oslo"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]


async def test_tool_use_reply(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    anthropic_server.enqueue("Let me check.", tool_calls=[{"id": "toolu_9", "name": "weather",
                                                           "arguments": {"city": "Oslo"}}])
    resp = await make_provider("anthropic", anthropic_server.url).complete(req())
    assert resp.content == "Let me check."
    assert resp.finish_reason == "tool_calls"
    assert resp.tool_calls == [llmkit.ToolCall("toolu_9", "weather", {"city": "Oslo"})]


async def test_stream_text_usage_and_padding(make_provider: MakeProvider) -> None:
    with FakeAnthropicServer(reply="Hello big world", cached_tokens=2, pad=True) as server:
        texts, final = await collect(make_provider("anthropic", server.url), req(model=CLAUDE))
        assert server.last_request.json["stream"] is True
    assert "".join(texts) == "Hello big world"
    assert final.content == "Hello big world"
    assert final.finish_reason == "stop"
    assert final.usage.cache_read_tokens == 2
    assert final.usage.output_tokens == final.raw["usage"]["output_tokens"] > 1  # message_delta overrides start
    assert final.usage.input_tokens == final.raw["usage"]["input_tokens"] + 2


async def test_stream_tool_use(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    anthropic_server.enqueue(tool_calls=[{"id": "toolu_2", "name": "weather", "arguments": {"city": "Rome"}}])
    texts, final = await collect(make_provider("anthropic", anthropic_server.url), req())
    assert "".join(texts) == ""
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == [llmkit.ToolCall("toolu_2", "weather", {"city": "Rome"})]
    assert final.tool_calls[0].raw_arguments == '{"city": "Rome"}'


async def test_stream_usage_from_message_start_when_delta_has_only_output(
        anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
            "usage": {"input_tokens": 11, "cache_read_input_tokens": 4, "cache_creation_input_tokens": None,
                      "output_tokens": 1}}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi"}}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                           "usage": {"output_tokens": 6}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    body = "".join(f"event: {e}\r\ndata: {json.dumps(d)}\r\n\r\n" for e, d in events)
    anthropic_server.enqueue_raw(body, headers={"content-type": "text/event-stream"})
    _, final = await collect(make_provider("anthropic", anthropic_server.url), req())
    assert final.model == "claude-x"
    assert final.finish_reason == "length"
    assert (final.usage.input_tokens, final.usage.output_tokens, final.usage.cache_read_tokens) == (15, 6, 4)


@pytest.mark.parametrize(("status", "kwargs", "error", "retryable"), [
    (400, {}, llmkit.BadRequestError, False),
    (400, {"message": "prompt is too long: 208310 tokens > 200000 maximum"}, llmkit.ContextWindowExceededError, False),
    (401, {}, llmkit.AuthenticationError, False),
    (402, {}, llmkit.QuotaExceededError, False),
    (403, {}, llmkit.PermissionDeniedError, False),
    (404, {}, llmkit.NotFoundError, False),
    (409, {}, llmkit.ServerError, True),
    (413, {}, llmkit.BadRequestError, False),
    (429, {}, llmkit.RateLimitError, True),
    (429, {"code": "enforced_spend_limit_reached"}, llmkit.QuotaExceededError, False),
    (500, {}, llmkit.ServerError, True),
    (504, {}, llmkit.ServerError, True),
    (529, {}, llmkit.OverloadedError, True),
])
async def test_error_classes(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider, status: int,
                             kwargs: dict[str, str], error: type[Exception], retryable: bool) -> None:
    anthropic_server.enqueue_error(status, **kwargs)
    with pytest.raises(llmkit.ProviderError) as info:
        await make_provider("anthropic", anthropic_server.url).complete(req())
    err = info.value
    assert type(err) is error
    assert (err.status, err.retryable) == (status, retryable)
    assert err.code == err.body["error"]["type"]
    assert err.request_id and err.request_id.startswith("req_")


async def test_retry_after_and_should_retry(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider,
                                            ) -> None:
    provider = make_provider("anthropic", anthropic_server.url)
    anthropic_server.enqueue_error(429, retry_after=12, should_retry=True)
    with pytest.raises(llmkit.RateLimitError) as info:
        await provider.complete(req())
    assert (info.value.retry_after, info.value.retryable) == (12.0, True)
    anthropic_server.enqueue_error(529, should_retry=False)
    with pytest.raises(llmkit.OverloadedError) as info2:
        await provider.complete(req())
    assert info2.value.retryable is False


async def test_rate_limit_headers(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    anthropic_server.set_rate_limit(limit_requests=50, remaining_requests=49, reset_requests=30,
                                    limit_tokens=30000, remaining_tokens=28000, reset_tokens=60)
    resp = await make_provider("anthropic", anthropic_server.url).complete(req())
    info = resp.rate_limit
    assert info is not None
    assert (info.limit_requests, info.remaining_requests, info.limit_tokens, info.remaining_tokens) == (
        50, 49, 30000, 28000)
    assert 25 <= info.reset_requests_s <= 30 and 55 <= info.reset_tokens_s <= 60


async def test_exhausted_tokens_on_429_give_retry_after(anthropic_server: FakeAnthropicServer,
                                                        make_provider: MakeProvider) -> None:
    anthropic_server.set_rate_limit(remaining_tokens=0, reset_tokens=40)
    anthropic_server.enqueue_error(429)
    with pytest.raises(llmkit.RateLimitError) as info:
        await make_provider("anthropic", anthropic_server.url).complete(req())
    assert 35 <= info.value.retry_after <= 40


@pytest.mark.parametrize(("etype", "error"), [
    ("overloaded_error", llmkit.OverloadedError), ("rate_limit_error", llmkit.RateLimitError),
    ("api_error", llmkit.ServerError), ("invalid_request_error", llmkit.BadRequestError),
    ("timeout_error", llmkit.ServerError),
])
async def test_error_event_after_200(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider,
                                     etype: str, error: type[Exception]) -> None:
    anthropic_server.enqueue_stream_error(etype, "bad things", after=4)
    texts: list[str] = []
    with pytest.raises(llmkit.ProviderError) as info:
        async for chunk in make_provider("anthropic", anthropic_server.url).stream(req()):
            texts.append(chunk.text)
    assert type(info.value) is error
    assert (info.value.status, info.value.code) == (200, etype)
    assert texts == ["Echo:"]


@pytest.mark.parametrize("clean", [True, False])
async def test_stream_cut_before_message_stop(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider,
                                              clean: bool) -> None:
    anthropic_server.enqueue_truncated(after=5, clean=clean)
    with pytest.raises(llmkit.ProviderConnectionError):
        await collect(make_provider("anthropic", anthropic_server.url), req())


async def test_faults(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    provider = make_provider("anthropic", anthropic_server.url)
    for fault in (anthropic_server.enqueue_drop, anthropic_server.enqueue_reset, anthropic_server.enqueue_malformed):
        fault()
        with pytest.raises(llmkit.ProviderConnectionError):
            await provider.complete(req())
    anthropic_server.set_down(True)
    with pytest.raises(llmkit.ProviderConnectionError):
        await collect(provider, req())
    anthropic_server.set_down(False)
    assert (await provider.complete(req("ok"))).content == "Echo: ok"


async def test_timeout(make_provider: MakeProvider) -> None:
    with FakeAnthropicServer(latency=30.0) as server, pytest.raises(llmkit.ProviderTimeoutError):
        await make_provider("anthropic", server.url).complete(req(timeout=0.2))


async def test_health_check(anthropic_server: FakeAnthropicServer, make_provider: MakeProvider) -> None:
    provider = make_provider("anthropic", anthropic_server.url + "/v1")  # a trailing /v1 is tolerated
    await provider.health_check()
    sent = anthropic_server.last_request
    assert (sent.method, sent.path, sent.query) == ("GET", "/v1/models", "limit=1")
    assert sent.headers["x-api-key"] == ANTHROPIC_KEY
    anthropic_server.enqueue_error(401, path="/v1/models")
    with pytest.raises(llmkit.AuthenticationError):
        await provider.health_check()


async def test_key_is_scrubbed_from_a_401(make_provider: MakeProvider) -> None:
    secret = "sk-ant-wrong-secret-0042"
    with FakeAnthropicServer(api_key="sk-ant-right-one") as server:
        server.enqueue_error(401, message=f"invalid x-api-key {secret}")
        with pytest.raises(llmkit.AuthenticationError) as info:
            await make_provider("anthropic", server.url, api_key=secret).complete(req())
    assert secret not in str(info.value) and secret not in json.dumps(info.value.body)


async def test_missing_key_fails_without_a_request(anthropic_server: FakeAnthropicServer,
                                                   make_provider: MakeProvider) -> None:
    with pytest.raises(llmkit.AuthenticationError, match="ANTHROPIC_API_KEY"):
        await make_provider("anthropic", anthropic_server.url, api_key=None).complete(req())
    assert anthropic_server.requests == []
