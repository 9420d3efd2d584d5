"""The Gemini adapter against FakeGeminiServer: translation, usage, safety blocks, error statuses."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from conftest import MakeProvider
from wire_helpers import collect, req

import llmkit
from llmkit.providers.gemini import gemini_usage
from llmkit.testing import FakeGeminiServer, FakeOpenAIServer

KEY = "AIza-test-gemini-0123456789"
PATH = "/v1beta/models/gemini-2.5-flash:generateContent"


@pytest.fixture
def server() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer(reply="Hi there", api_key=KEY) as srv:
        yield srv


def gemini(make_provider: MakeProvider, server: FakeGeminiServer, **fields: object) -> object:
    fields.setdefault("api_key", KEY)
    return make_provider("gemini", server.url, **fields)


async def test_request_translation(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
        {"role": "user", "content": "And tomorrow?"},
    ]
    await gemini(make_provider, server).complete(req(
        model="gemini-2.5-flash", messages=messages, temperature=0.3, max_tokens=64,
        extra={"top_p": 0.9, "stop": "END", "seed": 7,
               "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
               "tools": [{"type": "function", "function": {"name": "weather", "description": "w",
                                                           "parameters": {"type": "object"}}}],
               "tool_choice": "required", "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT",
                                                               "threshold": "BLOCK_NONE"}]}))
    sent = server.last_request
    assert sent.path == PATH and sent.headers["x-goog-api-key"] == KEY and "authorization" not in sent.headers
    body = sent.json
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]  # tool result merged into the user turn
    assert body["contents"][1]["parts"] == [{"functionCall": {"name": "weather", "args": {"city": "Paris"}}}]
    assert body["contents"][2]["parts"][0] == {"functionResponse": {"name": "weather", "response": {"temp_c": 21}}}
    assert body["generationConfig"] == {"temperature": 0.3, "maxOutputTokens": 64, "topP": 0.9, "seed": 7,
                                        "stopSequences": ["END"], "responseMimeType": "application/json",
                                        "responseJsonSchema": {"type": "object"}}
    assert body["tools"] == [{"functionDeclarations": [{"name": "weather", "description": "w",
                                                        "parametersJsonSchema": {"type": "object"}}]}]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}
    assert body["safetySettings"][0]["threshold"] == "BLOCK_NONE"


async def test_unknown_argument_is_refused_before_sending(server: FakeGeminiServer,
                                                          make_provider: MakeProvider) -> None:
    with pytest.raises(llmkit.InvalidRequestError, match="logit_bias"):
        await gemini(make_provider, server).complete(req(model="gemini-2.5-flash", extra={"logit_bias": {}}))
    assert server.requests == []


async def test_usage_normalised_thoughts_and_cache() -> None:
    with FakeGeminiServer(reply="four words of answer", thoughts_tokens=30, cached_tokens=5) as server:
        from llmkit import ProviderConfig
        from llmkit.providers import create_provider

        provider = create_provider(ProviderConfig(name="g", adapter="gemini", api_key="k", base_url=server.url))
        try:
            resp = await provider.complete(req(model="gemini-2.5-flash"))
            texts, final = await collect(provider, req(model="gemini-2.5-flash"))
        finally:
            await provider.aclose()
    raw = resp.raw["usageMetadata"]
    assert resp.content == "four words of answer"  # the thought part is not content
    assert resp.usage.input_tokens == raw["promptTokenCount"]  # cached content included, as on the wire
    assert resp.usage.cache_read_tokens == 5
    assert resp.usage.reasoning_tokens == 30
    assert resp.usage.output_tokens == raw["candidatesTokenCount"] + 30
    assert "".join(texts) == "four words of answer" and "Thinking" not in "".join(texts)
    assert final.usage.reasoning_tokens == 30 and final.usage.output_tokens == resp.usage.output_tokens


def test_usage_tool_prompt_counts_as_input() -> None:
    usage = gemini_usage({"promptTokenCount": 10, "toolUsePromptTokenCount": 4, "candidatesTokenCount": 3})
    assert usage is not None and (usage.input_tokens, usage.output_tokens) == (14, 3)
    assert gemini_usage({}) is None and gemini_usage(None) is None


@pytest.mark.parametrize("stream", [False, True])
async def test_safety_stop_is_a_content_filter_error(server: FakeGeminiServer, make_provider: MakeProvider,
                                                     stream: bool) -> None:
    server.enqueue("", finish_reason="SAFETY")
    provider = gemini(make_provider, server)
    with pytest.raises(llmkit.ContentFilterError, match="SAFETY") as info:
        if stream:
            await collect(provider, req(model="gemini-2.5-flash"))
        else:
            await provider.complete(req(model="gemini-2.5-flash"))
    assert isinstance(info.value, llmkit.BadRequestError) and info.value.code == "SAFETY"


async def test_blocked_prompt(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    server.enqueue_blocked("PROHIBITED_CONTENT")
    with pytest.raises(llmkit.ContentFilterError, match="blockReason PROHIBITED_CONTENT"):
        await gemini(make_provider, server).complete(req(model="gemini-2.5-flash"))


async def test_max_tokens_finish_and_tool_calls(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    provider = gemini(make_provider, server)
    server.enqueue("cut", finish_reason="MAX_TOKENS")
    assert (await provider.complete(req(model="gemini-2.5-flash"))).finish_reason == "length"
    server.enqueue(tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}])
    resp = await provider.complete(req(model="gemini-2.5-flash"))
    assert resp.finish_reason == "tool_calls"
    assert resp.tool_calls == [llmkit.ToolCall("call_0", "weather", {"city": "Oslo"})]
    assert json.loads(resp.tool_calls[0].raw_arguments) == {"city": "Oslo"}


def _sse(*chunks: dict[str, object]) -> bytes:
    return b"".join(b"data: " + json.dumps(c).encode() + b"\r\n\r\n" for c in chunks)


def _call_chunk(name: str, finish: str | None = None) -> dict[str, object]:
    candidate: dict[str, object] = {"content": {"role": "model", "parts": [
        {"functionCall": {"name": name, "args": {"city": name.upper()}}}]}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], "modelVersion": "gemini-2.5-flash",
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 3, "totalTokenCount": 8}}


async def test_streamed_function_calls_in_separate_chunks_get_unique_ids(
        server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    server.enqueue_raw(_sse(_call_chunk("a"), _call_chunk("b"), _call_chunk("c", "STOP")),
                       headers={"content-type": "text/event-stream"})
    _, final = await collect(gemini(make_provider, server), req(model="gemini-2.5-flash"))
    assert [(c.id, c.name, c.arguments) for c in final.tool_calls] == [
        ("call_0", "a", {"city": "A"}), ("call_1", "b", {"city": "B"}), ("call_2", "c", {"city": "C"})]
    assert all(isinstance(c, llmkit.ToolCall) for c in final.tool_calls)
    assert final.finish_reason == "tool_calls"


def _client(*servers: tuple[str, str, str]) -> llmkit.Client:
    providers = [{"name": name, "adapter": adapter, "base_url": url, "api_key": KEY, "models": ["*"],
                  "priority": i, "max_retries": 0, "breaker": {"fail_max": 1}}
                 for i, (name, adapter, url) in enumerate(servers)]
    return llmkit.Client(providers, ledger=None, health_interval=None)


WEATHER = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


@pytest.mark.parametrize("stream", [False, True])
def test_tool_calls_through_the_client_are_tool_call_objects(server: FakeGeminiServer, stream: bool) -> None:
    server.enqueue(tool_calls=[{"name": "get_weather", "arguments": '{"city": "Oslo"}'}])
    with _client(("g", "gemini", server.url)) as client:
        if stream:
            chunks = list(client.stream(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}],
                                        tools=WEATHER))
            resp = chunks[-1].response
        else:
            resp = client.completion(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}],
                                     tools=WEATHER)
        assert resp is not None and resp.tool_calls == [llmkit.ToolCall("call_0", "get_weather", {"city": "Oslo"})]
        # the answer replays as is: the call and its result go back to Gemini as functionCall/functionResponse
        client.completion(model="gemini-2.5-flash", tools=WEATHER, messages=[
            {"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": resp.tool_calls},
            {"role": "tool", "tool_call_id": "call_0", "content": "12C"}])
    contents = server.requests[-1].json["contents"]
    assert contents[1]["parts"] == [{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}]
    assert contents[2]["parts"] == [{"functionResponse": {"name": "get_weather", "response": {"result": "12C"}}}]


async def test_openai_only_arguments_are_dropped(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    await gemini(make_provider, server).complete(req(model="gemini-2.5-flash", extra={
        "user": "abc", "parallel_tool_calls": False, "store": True, "service_tier": "auto"}))
    body = server.last_request.json
    assert set(body) == {"contents"}


def test_fallback_to_gemini_with_an_unsupported_argument_keeps_every_error(server: FakeGeminiServer) -> None:
    with FakeOpenAIServer(api_key=KEY) as openai, \
            _client(("o", "openai", openai.url), ("g", "gemini", server.url)) as client:
        openai.enqueue_error(500)
        with pytest.raises(llmkit.AllProvidersFailedError) as info:
            client.completion(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}],
                              logit_bias={"50256": -100})
        errors = info.value.errors
        assert [type(x) for x in errors] == [llmkit.ServerError, llmkit.UnsupportedArgumentError]
        assert "logit_bias" in str(errors[1])
        assert server.requests == []
        states = client.health().set_index("provider")["breaker_state"]
        assert (states["o"], states["g"]) == ("open", "closed")  # fail_max 1: only the 500 counted
        # user= (OpenAI only) is dropped for Gemini: the fallback answers
        resp = client.completion(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}], user="abc")
        assert resp.provider == "g" and "user" not in server.last_request.json


@pytest.mark.parametrize(("status", "wire_status", "error", "retryable"), [
    (400, "INVALID_ARGUMENT", llmkit.BadRequestError, False),
    (400, "FAILED_PRECONDITION", llmkit.PermissionDeniedError, False),
    (401, "UNAUTHENTICATED", llmkit.AuthenticationError, False),
    (403, "PERMISSION_DENIED", llmkit.PermissionDeniedError, False),
    (404, "NOT_FOUND", llmkit.NotFoundError, False),
    (429, "RESOURCE_EXHAUSTED", llmkit.RateLimitError, True),
    (402, "RESOURCE_EXHAUSTED", llmkit.QuotaExceededError, False),
    (500, "INTERNAL", llmkit.ServerError, True),
    (503, "UNAVAILABLE", llmkit.OverloadedError, True),
    (504, "DEADLINE_EXCEEDED", llmkit.ProviderTimeoutError, True),
])
async def test_error_status_mapping(server: FakeGeminiServer, make_provider: MakeProvider, status: int,
                                    wire_status: str, error: type[Exception], retryable: bool) -> None:
    server.enqueue_error(status, code=wire_status)
    with pytest.raises(llmkit.ProviderError) as info:
        await gemini(make_provider, server).complete(req(model="gemini-2.5-flash"))
    assert type(info.value) is error
    assert info.value.code == wire_status and info.value.retryable is retryable
    assert info.value.body["error"]["status"] == wire_status


async def test_retry_info_becomes_retry_after(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    server.enqueue_error(429, details=[{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": []},
                                       {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}])
    with pytest.raises(llmkit.RateLimitError) as info:
        await gemini(make_provider, server).complete(req(model="gemini-2.5-flash"))
    assert info.value.retry_after == 37


async def test_invalid_key_and_context_window(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    with pytest.raises(llmkit.AuthenticationError, match="API key not valid"):
        await gemini(make_provider, server, api_key="AIza-wrong-key-000000000").complete(req(model="gemini-2.5-flash"))
    server.enqueue_error(400, message="The input token count (1200000) exceeds the maximum number of tokens "
                                      "allowed (1048576).")
    with pytest.raises(llmkit.ContextWindowExceededError):
        await gemini(make_provider, server).complete(req(model="gemini-2.5-flash"))


async def test_mid_stream_error_status(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    server.enqueue_stream_error(code="UNAVAILABLE", message="model overloaded")
    with pytest.raises(llmkit.OverloadedError, match="model overloaded"):
        await collect(gemini(make_provider, server), req(model="gemini-2.5-flash"))


async def test_key_from_gemini_or_google_env(server: FakeGeminiServer, make_provider: MakeProvider,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_API_KEY", KEY)
    assert (await gemini(make_provider, server, api_key=None).complete(req(model="gemini-2.5-flash"))).content
    monkeypatch.setenv("GEMINI_API_KEY", "AIza-wins-over-google-0000")
    provider = gemini(make_provider, server, api_key=None, name="second")
    assert provider.api_key == "AIza-wins-over-google-0000"  # type: ignore[attr-defined]


async def test_batch_embed_contents(server: FakeGeminiServer, make_provider: MakeProvider) -> None:
    provider = gemini(make_provider, server)
    request = req(model="gemini-embedding-001", messages=[{"role": "user", "content": "-"}])
    request = type(request)(model="gemini-embedding-001", messages=(),
                            extra={"input": ("alpha", "beta"), "dimensions": 16, "task_type": "RETRIEVAL_DOCUMENT"})
    resp = await provider.embed(request)  # type: ignore[attr-defined]
    sent = server.last_request.json
    assert server.last_request.path == "/v1beta/models/gemini-embedding-001:batchEmbedContents"
    assert sent["requests"][0] == {"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "alpha"}]},
                                   "outputDimensionality": 16, "taskType": "RETRIEVAL_DOCUMENT"}
    assert len(resp.vectors) == 2 and len(resp.vectors[0]) == 16
    assert resp.usage.estimated and resp.usage.input_tokens > 0
