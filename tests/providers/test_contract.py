"""The adapter contract: one suite run over every wire adapter against its loopback fake.

Each adapter must: answer with text, usage and the served model; stream text and end with a final
response carrying usage; map 400/401/404/429/500/503 to the error tree with the same retryability;
honour a server's retry-after; never put the key in an error; fail without a request when there is no
key; and report cut, malformed or dropped answers as ``ProviderConnectionError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from conftest import MakeProvider
from wire_helpers import collect, req

import llmkit
from llmkit.testing import (
    FakeAnthropicServer,
    FakeAzureOpenAIServer,
    FakeGeminiServer,
    FakeLLMServer,
    FakeOpenAIServer,
)


@dataclass
class Kit:
    """How to drive one adapter and its fake in the shared tests."""

    adapter: str
    model: str
    server: Callable[..., FakeLLMServer]
    key: str
    config: dict[str, Any] = field(default_factory=dict)
    #: enqueue_error kwargs that make the fake send the provider's own error body for each status
    error_args: Callable[[int], dict[str, Any]] = lambda status: {}
    completion_path: str = ""


KITS = {
    "openai": Kit("openai", "gpt-4o", FakeOpenAIServer, "sk-contract-openai-0123456789",
                  completion_path="/v1/chat/completions"),
    "anthropic": Kit("anthropic", "claude-sonnet-4-5", FakeAnthropicServer, "sk-ant-contract-0123456789",
                     completion_path="/v1/messages"),
    "openai_compatible": Kit("openai_compatible", "qwen3:0.6b", lambda **kw: FakeOpenAIServer(flavor="vllm", **kw),
                             "local-contract-token-0123", completion_path="/v1/chat/completions"),
    "gemini": Kit("gemini", "gemini-2.5-flash", FakeGeminiServer, "AIza-contract-gemini-0123456789",
                  completion_path="/v1beta/models/gemini-2.5-flash:generateContent"),
    "azure_openai": Kit("azure_openai", "gpt-4o", FakeAzureOpenAIServer, "azure-contract-key-0123456789",
                        config={"deployments": {"gpt-4o": "prod-gpt4o"}},
                        completion_path="/openai/deployments/prod-gpt4o/chat/completions"),
}


@pytest.fixture(params=sorted(KITS))
def kit(request: pytest.FixtureRequest) -> Kit:
    return KITS[request.param]


@pytest.fixture
def server(kit: Kit) -> Iterator[FakeLLMServer]:
    with kit.server(reply="one two three", api_key=kit.key) as srv:
        yield srv


def make(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider, **fields: Any) -> Any:
    fields.setdefault("api_key", kit.key)
    return make_provider(kit.adapter, server.url, **{**kit.config, **fields})


def calls(kit: Kit, server: FakeLLMServer) -> int:
    stream_path = kit.completion_path.replace(":generateContent", ":streamGenerateContent")
    return sum(1 for r in server.requests if r.path in (kit.completion_path, stream_path))


async def test_complete(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider) -> None:
    resp = await make(kit, server, make_provider).complete(
        req(model=kit.model, max_tokens=50, messages=[{"role": "system", "content": "Be brief."},
                                                       {"role": "user", "content": "Hello there"}]))
    assert resp.content == "one two three"
    assert resp.provider == f"test-{kit.adapter}"
    assert resp.model == kit.model
    assert resp.finish_reason in ("stop", "end_turn")
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0 and not resp.usage.estimated
    assert calls(kit, server) == 1


async def test_stream(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider) -> None:
    texts, final = await collect(make(kit, server, make_provider), req(model=kit.model))
    assert "".join(texts) == "one two three"
    assert len([t for t in texts if t]) == 3  # word by word, not one lump
    assert final is not None and final.content == "one two three"
    assert final.usage.output_tokens > 0 and not final.usage.estimated


@pytest.mark.parametrize(("status", "error", "retryable"), [
    (400, llmkit.BadRequestError, False),
    (401, llmkit.AuthenticationError, False),
    (403, llmkit.PermissionDeniedError, False),
    (404, llmkit.NotFoundError, False),
    (429, llmkit.RateLimitError, True),
    (500, llmkit.ServerError, True),
    (503, llmkit.ServerError, True),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_error_statuses(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider, status: int,
                              error: type[Exception], retryable: bool, stream: bool) -> None:
    server.enqueue_error(status, **kit.error_args(status))
    provider = make(kit, server, make_provider)
    with pytest.raises(llmkit.ProviderError) as info:
        if stream:
            await collect(provider, req(model=kit.model))
        else:
            await provider.complete(req(model=kit.model))
    assert isinstance(info.value, error)
    assert info.value.status == status and info.value.retryable is retryable
    assert f"HTTP {status}" in str(info.value)


async def test_retry_after_is_honoured(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider) -> None:
    server.enqueue_error(429, retry_after=7)
    with pytest.raises(llmkit.RateLimitError) as info:
        await make(kit, server, make_provider).complete(req(model=kit.model))
    assert info.value.retry_after == 7


async def test_wrong_key_is_never_echoed(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider) -> None:
    wrong = "sk-wrong-contract-key-9876543210"
    with pytest.raises(llmkit.ProviderError) as info:
        await make(kit, server, make_provider, api_key=wrong).complete(req(model=kit.model))
    assert isinstance(info.value, llmkit.AuthenticationError)
    assert wrong not in str(info.value) and wrong not in repr(info.value.body)


async def test_missing_key_fails_without_a_request(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider,
                                                   ) -> None:
    if kit.adapter == "openai_compatible":
        pytest.skip("local servers need no key")
    with pytest.raises(llmkit.AuthenticationError, match="no API key"):
        await make(kit, server, make_provider, api_key=None).complete(req(model=kit.model))
    assert calls(kit, server) == 0


@pytest.mark.parametrize("fault", ["malformed", "truncated_stream", "drop", "stream_error"])
async def test_broken_answers(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider, fault: str) -> None:
    provider = make(kit, server, make_provider)
    if fault == "malformed":
        server.enqueue_malformed()
        with pytest.raises(llmkit.ProviderConnectionError, match="malformed"):
            await provider.complete(req(model=kit.model))
    elif fault == "truncated_stream":
        server.enqueue_truncated(after=2)
        with pytest.raises(llmkit.ProviderConnectionError, match="stream ended"):
            await collect(provider, req(model=kit.model))
    elif fault == "drop":
        server.enqueue_drop()
        with pytest.raises(llmkit.ProviderConnectionError):
            await provider.complete(req(model=kit.model))
    else:
        server.enqueue_stream_error(message="overloaded mid-stream")
        with pytest.raises(llmkit.ProviderError, match="overloaded mid-stream"):
            await collect(provider, req(model=kit.model))
    assert (await provider.complete(req(model=kit.model))).content == "one two three"  # the pool recovers


async def test_health_check(kit: Kit, server: FakeLLMServer, make_provider: MakeProvider) -> None:
    await make(kit, server, make_provider).health_check()
    server.set_down(True)
    with pytest.raises(llmkit.ProviderConnectionError):
        await make(kit, server, make_provider, name="other").health_check()
