"""The OpenAI adapter over real HTTP against FakeOpenAIServer: bodies, streams, errors, faults."""

from __future__ import annotations

import json

import pytest
from conftest import MakeProvider
from wire_helpers import OPENAI_KEY, collect, req

import llmkit
from llmkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.asyncio


async def test_complete_content_usage_and_metadata(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(reply="The answer is 42.", model="gpt-4o-2024-08-06", cached_tokens=4) as server:
        server.set_rate_limit(limit_requests=500, remaining_requests=499, reset_requests=0.006)
        provider = make_provider("openai", server.url)
        resp = await provider.complete(req("What is six times seven?", model="gpt-4o"))
    assert resp.content == "The answer is 42."
    assert resp.model == "gpt-4o-2024-08-06"  # the served model, from the body
    assert resp.requested_model == "gpt-4o"
    assert resp.finish_reason == "stop"
    assert resp.provider == "test-openai"
    assert resp.usage.input_tokens == json.loads(json.dumps(resp.raw))["usage"]["prompt_tokens"]
    assert resp.usage.cache_read_tokens == 4
    assert resp.usage.output_tokens == resp.raw["usage"]["completion_tokens"] > 0
    assert not resp.usage.estimated
    assert resp.provider_request_id and resp.provider_request_id.startswith("req_")
    assert resp.rate_limit is not None
    assert (resp.rate_limit.limit_requests, resp.rate_limit.remaining_requests) == (500, 499)
    assert resp.rate_limit.reset_requests_s == pytest.approx(0.006)


async def test_request_body_and_headers(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    provider = make_provider("openai", openai_server.url, headers={"OpenAI-Project": "proj_1"})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    messages = ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"})
    await provider.complete(req(messages=messages, temperature=0.3, max_tokens=50,
                                extra={"tools": tools, "tool_choice": "auto", "stop": ["\n"], "seed": 7,
                                       "top_p": 0.9, "response_format": {"type": "text"}}))
    sent = openai_server.last_request
    assert sent is not None
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert sent.headers["openai-project"] == "proj_1"
    assert sent.json == {"model": "gpt-4o", "messages": list(messages), "temperature": 0.3,
                         "max_completion_tokens": 50, "tools": tools, "tool_choice": "auto", "stop": ["\n"],
                         "seed": 7, "top_p": 0.9, "response_format": {"type": "text"}}


async def test_stream_text_and_usage(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    openai_server.enqueue("Hello big world")
    provider = make_provider("openai", openai_server.url)
    texts, final = await collect(provider, req(max_tokens=20))
    assert "".join(texts) == "Hello big world"
    assert len([t for t in texts if t]) == 3
    assert final.content == "Hello big world"
    assert final.finish_reason == "stop"
    assert final.usage.output_tokens > 0 and not final.usage.estimated
    assert final.provider_request_id.startswith("req_")
    sent = openai_server.last_request.json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert sent["max_completion_tokens"] == 20


async def test_stream_tool_calls_are_concatenated(openai_server: FakeOpenAIServer, make_provider: MakeProvider,
                                                  ) -> None:
    openai_server.enqueue(tool_calls=[
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"name": "time", "arguments": {"tz": "UTC"}},
    ])
    texts, final = await collect(make_provider("openai", openai_server.url), req())
    assert "".join(texts) == ""
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == [llmkit.ToolCall("call_a", "weather", {"city": "Paris"}),
                                llmkit.ToolCall("call_0001", "time", {"tz": "UTC"})]
    assert final.raw["choices"][0]["message"]["tool_calls"] == [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
        {"id": "call_0001", "type": "function", "function": {"name": "time", "arguments": '{"tz": "UTC"}'}},
    ]
    assert [c.to_openai() for c in final.tool_calls] == final.raw["choices"][0]["message"]["tool_calls"]


async def test_non_streamed_tool_calls(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    openai_server.enqueue(tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}])
    resp = await make_provider("openai", openai_server.url).complete(req())
    assert resp.content == ""
    assert resp.finish_reason == "tool_calls"
    assert (resp.tool_calls[0].name, resp.tool_calls[0].arguments) == ("weather", {"city": "Oslo"})
    assert resp.tool_calls[0].to_openai()["function"] == {"name": "weather", "arguments": '{"city": "Oslo"}'}


@pytest.mark.parametrize(("status", "code", "etype", "error", "retryable"), [
    (400, None, None, llmkit.BadRequestError, False),
    (400, "context_length_exceeded", None, llmkit.ContextWindowExceededError, False),
    (422, None, None, llmkit.BadRequestError, False),
    (401, None, None, llmkit.AuthenticationError, False),
    (403, None, None, llmkit.PermissionDeniedError, False),
    (404, None, None, llmkit.NotFoundError, False),
    (408, None, None, llmkit.ServerError, True),
    (409, None, None, llmkit.ServerError, True),
    (429, None, None, llmkit.RateLimitError, True),
    (429, "insufficient_quota", None, llmkit.QuotaExceededError, False),
    (429, None, "insufficient_quota", llmkit.QuotaExceededError, False),
    (500, None, None, llmkit.ServerError, True),
    (502, None, None, llmkit.ServerError, True),
    (503, None, None, llmkit.ServerError, True),
    (529, None, None, llmkit.OverloadedError, True),
])
async def test_error_classes(openai_server: FakeOpenAIServer, make_provider: MakeProvider, status: int,
                             code: str | None, etype: str | None, error: type[Exception], retryable: bool) -> None:
    openai_server.enqueue_error(status, code=code, type=etype)
    provider = make_provider("openai", openai_server.url)
    with pytest.raises(llmkit.ProviderError) as info:
        await provider.complete(req())
    err = info.value
    assert type(err) is error
    assert err.status == status
    assert err.retryable is retryable
    assert err.provider == "test-openai"
    assert err.request_id and err.request_id.startswith("req_")
    assert isinstance(err.body, dict) and "error" in err.body
    assert err.code == (err.body["error"]["code"] or err.body["error"]["type"])
    assert f"HTTP {status}" in str(err)


async def test_context_window_from_message_only(openai_server: FakeOpenAIServer, make_provider: MakeProvider,
                                                ) -> None:
    openai_server.enqueue_error(400, message="This model's maximum context length is 8192 tokens.")
    with pytest.raises(llmkit.ContextWindowExceededError):
        await make_provider("openai", openai_server.url).complete(req())


async def test_retry_after_headers(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    provider = make_provider("openai", openai_server.url)
    openai_server.enqueue_error(429, retry_after=7)
    openai_server.enqueue_error(429, retry_after=7, retry_after_ms=1500)
    openai_server.enqueue_error(503, retry_after="Wed, 21 Oct 2015 07:28:00 GMT")  # in the past: 0
    expected = [7.0, 1.5, 0.0]
    for want in expected:
        with pytest.raises(llmkit.ProviderError) as info:
            await provider.complete(req())
        assert info.value.retry_after == want


async def test_exhausted_rate_limit_reset_becomes_retry_after(openai_server: FakeOpenAIServer,
                                                              make_provider: MakeProvider) -> None:
    openai_server.set_rate_limit(remaining_requests=0, reset_requests=6.5, remaining_tokens=10, reset_tokens=1.0)
    openai_server.enqueue_error(429)
    with pytest.raises(llmkit.RateLimitError) as info:
        await make_provider("openai", openai_server.url).complete(req())
    assert info.value.retry_after == pytest.approx(6.5)


async def test_x_should_retry_overrides_retryable(openai_server: FakeOpenAIServer, make_provider: MakeProvider,
                                                  ) -> None:
    provider = make_provider("openai", openai_server.url)
    openai_server.enqueue_error(500, should_retry=False)
    with pytest.raises(llmkit.ServerError) as info:
        await provider.complete(req())
    assert info.value.retryable is False
    openai_server.enqueue_error(400, should_retry=True)
    with pytest.raises(llmkit.BadRequestError) as info2:
        await provider.complete(req())
    assert info2.value.retryable is True


async def test_api_key_never_appears_in_errors(make_provider: MakeProvider) -> None:
    secret = "sk-wrong-but-secret-7f3a9c"
    with FakeOpenAIServer(api_key="sk-the-right-one") as server:
        provider = make_provider("openai", server.url, api_key=secret)
        with pytest.raises(llmkit.AuthenticationError) as info:
            await provider.complete(req())
        assert secret in json.dumps(server.last_request.headers)  # it was sent...
    err = info.value
    echoed = server_body = json.dumps(err.body)
    assert "Incorrect API key provided" in str(err)  # ...and the server echoed it back
    assert secret not in str(err) and secret not in repr(err) and secret not in echoed
    assert "***" in server_body


async def test_missing_key_fails_without_a_request(openai_server: FakeOpenAIServer, make_provider: MakeProvider,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = make_provider("openai", openai_server.url, api_key=None)
    with pytest.raises(llmkit.AuthenticationError, match="OPENAI_API_KEY"):
        await provider.complete(req())
    assert openai_server.requests == []


async def test_health_check(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    provider = make_provider("openai", openai_server.url)
    await provider.health_check()
    assert (openai_server.last_request.method, openai_server.last_request.path) == ("GET", "/v1/models")
    openai_server.enqueue_error(503, path="/v1/models")
    with pytest.raises(llmkit.ServerError):
        await provider.health_check()
    openai_server.set_down(True)
    with pytest.raises(llmkit.ProviderConnectionError):
        await provider.health_check()


async def test_connection_refused_then_back_on_the_same_port(openai_server: FakeOpenAIServer,
                                                             make_provider: MakeProvider) -> None:
    provider = make_provider("openai", openai_server.url)
    assert (await provider.complete(req("one"))).content == "Echo: one"
    port = openai_server.port
    openai_server.set_down(True)
    with pytest.raises(llmkit.ProviderConnectionError) as info:
        await provider.complete(req())
    assert info.value.retryable and info.value.status is None
    openai_server.set_down(False)
    assert openai_server.port == port
    assert (await provider.complete(req("two"))).content == "Echo: two"


@pytest.mark.parametrize("fault", ["enqueue_drop", "enqueue_reset"])
@pytest.mark.parametrize("stream", [False, True])
async def test_dropped_and_reset_connections(openai_server: FakeOpenAIServer, make_provider: MakeProvider,
                                             fault: str, stream: bool) -> None:
    getattr(openai_server, fault)()
    provider = make_provider("openai", openai_server.url)
    with pytest.raises(llmkit.ProviderConnectionError):
        if stream:
            await collect(provider, req())
        else:
            await provider.complete(req())
    assert (await provider.complete(req("after"))).content == "Echo: after"  # the pool recovers


async def test_malformed_json(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    provider = make_provider("openai", openai_server.url)
    openai_server.enqueue_malformed()
    with pytest.raises(llmkit.ProviderConnectionError, match="malformed response"):
        await provider.complete(req())
    openai_server.enqueue_malformed()
    with pytest.raises(llmkit.ProviderConnectionError, match="malformed stream chunk"):
        await collect(provider, req())


@pytest.mark.parametrize("clean", [True, False])
async def test_truncated_stream(openai_server: FakeOpenAIServer, make_provider: MakeProvider, clean: bool) -> None:
    openai_server.enqueue("one two three four", )
    openai_server.enqueue_truncated(after=3, clean=clean)
    provider = make_provider("openai", openai_server.url)
    await collect(provider, req())
    texts: list[str] = []
    with pytest.raises(llmkit.ProviderConnectionError):
        async for chunk in provider.stream(req("one two three four")):
            texts.append(chunk.text)
    assert texts == ["Echo:", " one"]  # what arrived before the cut was passed on


async def test_truncated_body(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    openai_server.enqueue_truncated()
    with pytest.raises(llmkit.ProviderConnectionError):
        await make_provider("openai", openai_server.url).complete(req())


@pytest.mark.parametrize(("code", "error"), [
    (None, llmkit.ServerError), ("rate_limit_exceeded", llmkit.RateLimitError),
    ("insufficient_quota", llmkit.QuotaExceededError), ("context_length_exceeded", llmkit.ContextWindowExceededError),
])
async def test_mid_stream_error(openai_server: FakeOpenAIServer, make_provider: MakeProvider, code: str | None,
                                error: type[Exception]) -> None:
    openai_server.enqueue_stream_error(code=code, message="boom", after=2)
    with pytest.raises(llmkit.ProviderError) as info:
        await collect(make_provider("openai", openai_server.url), req())
    assert type(info.value) is error
    assert info.value.status == 200
    assert "boom" in str(info.value)


async def test_error_object_in_a_200_body(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    openai_server.enqueue_stream_error(code="rate_limit_exceeded", message="slow down")
    with pytest.raises(llmkit.RateLimitError):
        await make_provider("openai", openai_server.url).complete(req())


@pytest.mark.parametrize("stream", [False, True])
async def test_per_call_timeout(make_provider: MakeProvider, stream: bool) -> None:
    with FakeOpenAIServer(latency=30.0) as server:
        provider = make_provider("openai", server.url, timeout=30.0)
        with pytest.raises(llmkit.ProviderTimeoutError) as info:
            if stream:
                await collect(provider, req(timeout=0.2))
            else:
                await provider.complete(req(timeout=0.2))
        assert info.value.retryable


async def test_config_timeout_applies_when_the_call_has_none(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer() as server:
        server.enqueue(latency=30.0)
        provider = make_provider("openai", server.url, timeout=0.2)
        with pytest.raises(llmkit.ProviderTimeoutError):
            await provider.complete(req())


async def test_slow_stream_between_chunks_times_out(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(chunk_delay=30.0) as server:
        provider = make_provider("openai", server.url, timeout=0.2)
        texts: list[str] = []
        with pytest.raises(llmkit.ProviderTimeoutError):
            async for chunk in provider.stream(req()):
                texts.append(chunk.text)
        assert texts == []  # the role chunk carries no text; the next one never comes
        assert server.last_request is not None


async def test_one_pooled_client_sized_by_max_concurrency(openai_server: FakeOpenAIServer,
                                                          make_provider: MakeProvider) -> None:
    provider = make_provider("openai", openai_server.url, max_concurrency=3)
    await provider.complete(req())
    client = provider.client  # type: ignore[attr-defined]
    await provider.complete(req())
    assert provider.client is client  # type: ignore[attr-defined]
    pool = client._transport._pool
    assert pool._max_connections == 3 and pool._max_keepalive_connections == 3
    await provider.aclose()
    assert client.is_closed


async def test_unknown_option_is_a_config_error(openai_server: FakeOpenAIServer, make_provider: MakeProvider) -> None:
    with pytest.raises(llmkit.ConfigError, match="unknown openai option 'colour'"):
        make_provider("openai", openai_server.url, options={"colour": "blue"})
