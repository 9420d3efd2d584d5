"""``openai_compatible`` presets: base URL, key variable, prices and quirks filled in; config errors."""

from __future__ import annotations

import pytest
from conftest import MakeProvider
from wire_helpers import collect, req

import llmkit
from llmkit import ProviderConfig
from llmkit._adapters import PRESETS
from llmkit.providers import create_provider
from llmkit.testing import FakeOpenAIServer


@pytest.mark.parametrize(("preset", "url", "env", "price_id"), [
    ("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY", "groq"),
    ("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY", "together"),
    ("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", "mistral"),
    ("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "deepseek"),
    ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openrouter"),
    ("ollama", "http://127.0.0.1:11434/v1", None, None),
    ("vllm", "http://127.0.0.1:8000/v1", "VLLM_API_KEY", None),
    ("lmstudio", "http://127.0.0.1:1234/v1", None, None),
])
def test_preset_fills_url_key_and_price(preset: str, url: str, env: str | None, price_id: str | None,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    if env:
        monkeypatch.setenv(env, f"key-for-{preset}-0123456789")
    config = ProviderConfig(name=preset, adapter="openai_compatible", preset=preset)
    provider = create_provider(config)
    assert provider.base_url == url  # type: ignore[attr-defined]
    assert config.resolved_base_url() == url
    assert provider.price_provider_id == price_id
    assert provider.api_key == (f"key-for-{preset}-0123456789" if env else None)  # type: ignore[attr-defined]


def test_prices_come_from_genai_prices() -> None:
    with llmkit.Client([{"name": "groq", "adapter": "openai_compatible", "preset": "groq", "api_key": "gsk-x",
                         "models": ["llama-3.3-70b-versatile"]}], ledger=None) as client:
        pricer, provider = client._service.pricer, client.provider("groq")
        assert pricer.is_priced("groq", provider.price_provider_id, "llama-3.3-70b-versatile")


async def test_hosted_preset_needs_a_key_but_local_does_not(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer() as server:
        with pytest.raises(llmkit.AuthenticationError, match="GROQ_API_KEY"):
            await make_provider("openai_compatible", server.url, preset="groq").complete(req())
        assert server.requests == []
        resp = await make_provider("openai_compatible", server.url, preset="ollama", name="o").complete(req())
    assert resp.content.startswith("Echo")


async def test_mistral_quirks(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(reply="bonjour") as server:
        provider = make_provider("openai_compatible", server.url, preset="mistral", api_key="m-key")
        await provider.complete(req(extra={"seed": 3}))
        assert server.last_request.json["random_seed"] == 3 and "seed" not in server.last_request.json
        await collect(provider, req())
        assert "stream_options" not in server.last_request.json
        assert server.last_request.headers["authorization"] == "Bearer m-key"


async def test_entry_overrides_preset(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="vllm") as server:
        provider = make_provider("openai_compatible", server.url, preset="vllm", options={"health_path": "/v1/models"})
        assert provider.base_url == server.url  # type: ignore[attr-defined]
        await provider.health_check()
        assert server.last_request.path == "/v1/models"


async def test_deepseek_cache_hit_tokens(make_provider: MakeProvider) -> None:
    with FakeOpenAIServer(flavor="ollama") as server:
        server.enqueue("ok", usage={"prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
                                    "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36})
        resp = await make_provider("openai_compatible", server.url, preset="deepseek", api_key="d").complete(req())
    assert (resp.usage.input_tokens, resp.usage.cache_read_tokens) == (100, 64)


@pytest.mark.parametrize(("entry", "match"), [
    ({"adapter": "openai_compatible", "preset": "nope"}, "preset"),
    ({"adapter": "openai", "preset": "groq"}, "only with adapter 'openai_compatible'"),
])
def test_preset_config_errors(entry: dict[str, str], match: str) -> None:
    with pytest.raises(llmkit.ConfigError, match=match):
        llmkit.Client([{"name": "p", **entry}], ledger=None)


def test_every_preset_is_documented() -> None:
    assert set(PRESETS) >= {"groq", "together", "mistral", "deepseek", "openrouter", "ollama", "vllm", "lmstudio"}
