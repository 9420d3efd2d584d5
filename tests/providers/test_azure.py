"""The Azure OpenAI adapter against FakeAzureOpenAIServer: routes, api-version, auth, content filter."""

from __future__ import annotations

import pytest
from conftest import MakeProvider
from wire_helpers import collect, req

import llmkit
from llmkit.testing import FakeAzureOpenAIServer

KEY = "azure-test-key-0123456789"


async def test_deployment_route_and_default_api_version(make_provider: MakeProvider) -> None:
    with FakeAzureOpenAIServer(reply="hi", api_key=KEY, deployments=["prod-4o"]) as server:
        provider = make_provider("azure_openai", server.url, api_key=KEY, deployments={"gpt-4o": "prod-4o"})
        resp = await provider.complete(req(model="gpt-4o", max_tokens=10))
        sent = server.last_request
        with pytest.raises(llmkit.NotFoundError, match="DeploymentNotFound"):
            await provider.complete(req(model="gpt-4o-mini"))  # no mapping: the model name is the deployment
    assert resp.content == "hi" and resp.model == "gpt-4o"
    assert sent.path == "/openai/deployments/prod-4o/chat/completions"
    assert sent.query == "api-version=2024-10-21"
    assert sent.headers["api-key"] == KEY and "authorization" not in sent.headers
    assert sent.json["max_completion_tokens"] == 10
    assert resp.provider_request_id and resp.provider_request_id.startswith("fake-")


async def test_api_version_from_entry_then_environment(make_provider: MakeProvider,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_VERSION", "2025-04-01-preview")
    with FakeAzureOpenAIServer() as server:
        await make_provider("azure_openai", server.url, api_key=KEY).complete(req(model="gpt-4o"))
        assert server.last_request.query == "api-version=2025-04-01-preview"
        await make_provider("azure_openai", server.url, api_key=KEY, api_version="2024-06-01",
                            name="pinned").complete(req(model="gpt-4o"))
        assert server.last_request.query == "api-version=2024-06-01"


@pytest.mark.parametrize("how", ["api_version", "base_url"])
async def test_v1_route(make_provider: MakeProvider, how: str) -> None:
    with FakeAzureOpenAIServer(reply="v1 says hi") as server:
        fields: dict[str, object] = {"api_key": KEY, "deployments": {"gpt-4o": "my-4o"}}
        url = server.url
        if how == "api_version":
            fields["api_version"] = "v1"
        else:
            url += "/openai/v1"
        provider = make_provider("azure_openai", url, **fields)
        texts, final = await collect(provider, req(model="gpt-4o"))
        sent = server.last_request
    assert "".join(texts) == "v1 says hi" and final.usage.output_tokens > 0
    assert sent.path == "/openai/v1/chat/completions" and sent.query == ""
    assert sent.json["model"] == "my-4o"


async def test_bearer_token_auth(make_provider: MakeProvider) -> None:
    with FakeAzureOpenAIServer(api_key="entra-token-abc") as server:
        provider = make_provider("azure_openai", server.url, api_key="entra-token-abc", options={"auth": "bearer"})
        await provider.complete(req(model="gpt-4o"))
        assert server.last_request.headers["authorization"] == "Bearer entra-token-abc"
        assert "api-key" not in server.last_request.headers


async def test_content_filter_errors(make_provider: MakeProvider) -> None:
    with FakeAzureOpenAIServer() as server:
        provider = make_provider("azure_openai", server.url, api_key=KEY)
        server.enqueue_error(400, code="content_filter")
        with pytest.raises(llmkit.ContentFilterError) as info:
            await provider.complete(req(model="gpt-4o"))
        assert info.value.status == 400 and info.value.code == "content_filter"
        assert info.value.body["error"]["innererror"]["code"] == "ResponsibleAIPolicyViolation"
        server.enqueue("", finish_reason="content_filter")
        with pytest.raises(llmkit.ContentFilterError, match="finish_reason content_filter"):
            await provider.complete(req(model="gpt-4o"))
        server.enqueue("partial answer", finish_reason="content_filter")  # text survives: returned as is
        assert (await provider.complete(req(model="gpt-4o"))).finish_reason == "content_filter"


async def test_rate_limit_headers_and_retry_after(make_provider: MakeProvider) -> None:
    with FakeAzureOpenAIServer(rate_limit={"remaining_requests": 0, "remaining_tokens": 500}) as server:
        provider = make_provider("azure_openai", server.url, api_key=KEY)
        resp = await provider.complete(req(model="gpt-4o"))
        server.enqueue_error(429)
        with pytest.raises(llmkit.RateLimitError) as info:
            await provider.complete(req(model="gpt-4o"))
    assert resp.rate_limit is not None
    assert (resp.rate_limit.remaining_requests, resp.rate_limit.remaining_tokens) == (0, 500)
    assert resp.rate_limit.limit_requests == 1000
    assert info.value.retry_after == 1.0 and "exceeded token rate limit" in str(info.value)


def test_config_validation() -> None:
    with pytest.raises(llmkit.ConfigError, match="base_url"):
        llmkit.Client([{"name": "az", "adapter": "azure_openai", "api_key": KEY}], ledger=None)
    with pytest.raises(llmkit.ConfigError, match="api_version"):
        llmkit.Client([{"name": "az", "adapter": "azure_openai", "api_key": KEY, "base_url": "https://x.openai.azure.com",
                        "api_version": "yesterday"}], ledger=None)
    with pytest.raises(llmkit.ConfigError, match=r"deployments.*only with adapter 'azure_openai'"):
        llmkit.Client([{"name": "o", "adapter": "openai", "deployments": {"a": "b"}}], ledger=None)
    with pytest.raises(llmkit.ConfigError, match="option 'auth'"):
        llmkit.Client([{"name": "az", "adapter": "azure_openai", "base_url": "https://x.openai.azure.com",
                        "options": {"auth": "magic"}}], ledger=None)


@pytest.mark.parametrize(("version", "path", "model"), [
    (None, "/openai/deployments/emb-small/embeddings", "emb-small"),
    ("v1", "/openai/v1/embeddings", "emb-small"),
])
async def test_embeddings_routes(make_provider: MakeProvider, version: str | None, path: str, model: str) -> None:
    with FakeAzureOpenAIServer(api_key=KEY) as server:
        provider = make_provider("azure_openai", server.url, api_key=KEY, api_version=version,
                                 deployments={"text-embedding-3-small": "emb-small"})
        request = llmkit.Request(model="text-embedding-3-small", messages=(), extra={"input": ("a", "b", "c")})
        resp = await provider.embed(request)  # type: ignore[attr-defined]
        assert server.last_request.path == path
        assert server.last_request.json["input"] == ["a", "b", "c"] and server.last_request.json["model"] == model
    assert len(resp.vectors) == 3 and resp.usage.input_tokens == 3 and not resp.usage.estimated
