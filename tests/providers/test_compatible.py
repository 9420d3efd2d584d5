"""The OpenAI-compatible adapter against the Ollama, vLLM and llama.cpp flavors of FakeOpenAIServer."""

from __future__ import annotations

import pytest
from conftest import MakeProvider
from wire_helpers import collect, req

import llmkit
from llmkit.testing import FakeOpenAIServer

pytestmark = pytest.mark.asyncio

FLAVORS = ["ollama", "vllm", "llamacpp", "openai"]


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_complete_sends_max_tokens_and_no_auth(make_provider: MakeProvider, flavor: str) -> None:
    with FakeOpenAIServer(flavor=flavor, reply="local reply") as server:
        provider = make_provider("openai_compatible", server.url)
        resp = await provider.complete(req(model="qwen3:0.6b", max_tokens=64, temperature=0.2))
        sent = server.last_request
    assert resp.content == "local reply"
    assert resp.model == "qwen3:0.6b"
    assert resp.usage.input_tokens > 0 and resp.usage.output_tokens > 0 and not resp.usage.estimated
    assert sent.json["max_tokens"] == 64 and "max_completion_tokens" not in sent.json
    assert "authorization" not in sent.headers


async def test_bearer_only_when_a_key_is_configured(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="vllm", api_key="local-token") as server:
        await make_provider("openai_compatible", server.url, api_key="local-token").complete(req())
        assert server.last_request.headers["authorization"] == "Bearer local-token"


@pytest.mark.parametrize("flavor", FLAVORS)
async def test_stream_usage_from_any_chunk(make_provider: MakeProvider, flavor: str) -> None:
    with FakeOpenAIServer(flavor=flavor, reply="one two three") as server:
        texts, final = await collect(make_provider("openai_compatible", server.url), req())
        assert server.last_request.json["stream_options"] == {"include_usage": True}
    assert "".join(texts) == "one two three"
    assert final.usage.output_tokens > 0 and not final.usage.estimated


async def test_vllm_continuous_usage_last_chunk_wins(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="vllm", reply="a b c d") as server:
        provider = make_provider("openai_compatible", server.url)
        _, final = await collect(provider, req(extra={"stream_options": {"continuous_usage_stats": True}}))
        assert server.last_request.json["stream_options"] == {"continuous_usage_stats": True, "include_usage": True}
    # every chunk (role, 4 words, finish) carried cumulative usage: the last one, counting 6, wins
    assert final.usage.output_tokens == 6 and not final.usage.estimated


async def test_llamacpp_usage_on_the_finish_chunk(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="llamacpp", reply="hello") as server:
        _, final = await collect(make_provider("openai_compatible", server.url), req())
    assert final.raw["usage"]["completion_tokens"] == final.usage.output_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
async def test_no_usage_is_estimated(make_provider: MakeProvider, stream: bool) -> None:
    with FakeOpenAIServer(flavor="ollama", usage=False, reply="x" * 40) as server:
        provider = make_provider("openai_compatible", server.url)
        resp = (await collect(provider, req()))[1] if stream else await provider.complete(req())
    assert resp.usage.estimated
    assert resp.usage.output_tokens == 10
    assert resp.usage.input_tokens > 0


async def test_include_usage_option_off(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="ollama") as server:
        provider = make_provider("openai_compatible", server.url, options={"include_usage": False})
        _, final = await collect(provider, req())
        assert "stream_options" not in server.last_request.json
    assert final.usage.estimated


@pytest.mark.parametrize(("flavor", "status", "code", "error", "wire_code"), [
    ("vllm", 400, None, llmkit.BadRequestError, 400),
    ("vllm", 400, "context_length_exceeded", llmkit.ContextWindowExceededError, 400),
    ("vllm", 404, None, llmkit.NotFoundError, 404),
    ("vllm", 500, None, llmkit.ServerError, 500),
    ("llamacpp", 400, "context_length_exceeded", llmkit.ContextWindowExceededError, 400),
    ("llamacpp", 503, None, llmkit.ServerError, 503),
    ("ollama", 404, None, llmkit.NotFoundError, "not_found_error"),
    ("ollama", 400, None, llmkit.BadRequestError, "invalid_request_error"),
    ("ollama", 500, None, llmkit.ServerError, "api_error"),
])
async def test_error_shapes(make_provider: MakeProvider, flavor: str, status: int, code: str | None,
                            error: type[Exception], wire_code: object) -> None:
    with FakeOpenAIServer(flavor=flavor) as server:
        server.enqueue_error(status, code=code)
        with pytest.raises(llmkit.ProviderError) as info:
            await make_provider("openai_compatible", server.url).complete(req())
    assert type(info.value) is error
    assert info.value.status == status
    assert info.value.code == wire_code


async def test_vllm_top_level_error_body(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="vllm") as server:
        server.enqueue_error(400, message="temperature must be non-negative")
        with pytest.raises(llmkit.BadRequestError, match="temperature must be non-negative") as info:
            await make_provider("openai_compatible", server.url).complete(req())
    assert info.value.body["object"] == "error" and info.value.code == 400


async def test_mid_stream_error_with_integer_code(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="vllm") as server:
        server.enqueue_stream_error(message="engine died", after=2)
        with pytest.raises(llmkit.ServerError, match="engine died") as info:
            await collect(make_provider("openai_compatible", server.url), req())
    assert info.value.code == 500


@pytest.mark.parametrize(("flavor", "health_path", "path"), [
    ("ollama", None, "/v1/models"), ("ollama", "/", "/"), ("vllm", "/health", "/health"),
    ("llamacpp", "/health", "/health"), ("openai", "models", "/v1/models"),
])
async def test_health_check(make_provider: MakeProvider, flavor: str, health_path: str | None, path: str) -> None:
    options = {"health_path": health_path} if health_path else {}
    with FakeOpenAIServer(flavor=flavor) as server:
        await make_provider("openai_compatible", server.url, options=options).health_check()
        assert (server.last_request.method, server.last_request.path) == ("GET", path)


async def test_health_check_failures(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="llamacpp") as server:
        provider = make_provider("openai_compatible", server.url, options={"health_path": "/health"})
        server.enqueue_error(503, path="/health", message="Loading model", type="unavailable_error")
        with pytest.raises(llmkit.ServerError, match="Loading model"):
            await provider.health_check()
        server.set_down(True)
        with pytest.raises(llmkit.ProviderConnectionError):
            await provider.health_check()


async def test_default_base_url_and_price_id() -> None:
    from llmkit.providers.compatible import OpenAICompatibleProvider

    provider = OpenAICompatibleProvider(llmkit.ProviderConfig(name="local", adapter="openai_compatible"))
    assert provider.base_url == "http://127.0.0.1:11434/v1"
    assert provider.price_provider_id is None
    assert provider.health_url() == "http://127.0.0.1:11434/v1/models"
