"""Fallback across wire formats over loopback: OpenAI -> Gemini -> Anthropic (and Azure in front)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import llmkit
from llmkit.testing import FakeAnthropicServer, FakeAzureOpenAIServer, FakeGeminiServer, FakeOpenAIServer

from ..conftest import FakeTime

MSG = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "hello"}]
KEY = "sk-cross-format-0123456789"
FALLBACKS = {"gpt-4o": ["gemini-2.5-flash", "claude-sonnet-4-5"]}


@pytest.fixture
def servers() -> Iterator[tuple[FakeOpenAIServer, FakeGeminiServer, FakeAnthropicServer]]:
    with FakeOpenAIServer(reply="from openai") as o, FakeGeminiServer(reply="from gemini") as g, \
            FakeAnthropicServer(reply="from anthropic") as a:
        yield o, g, a


def providers(o: Any, g: Any, a: Any) -> list[dict[str, Any]]:
    return [
        {"name": "openai", "adapter": "openai", "api_key": KEY, "base_url": o.url, "models": ["gpt-4o"],
         "priority": 0, "max_retries": 1},
        {"name": "gemini", "adapter": "gemini", "api_key": KEY, "base_url": g.url, "models": ["gemini-*"],
         "priority": 1, "max_retries": 1},
        {"name": "anthropic", "adapter": "anthropic", "api_key": KEY, "base_url": a.url, "models": ["claude-*"],
         "priority": 2},
    ]


def sent(server: Any) -> int:
    return sum(1 for r in server.requests if r.path.endswith(("/chat/completions", "/messages", "Content")))


@pytest.mark.parametrize("stream", [False, True])
def test_openai_then_gemini_then_anthropic(servers: tuple[Any, Any, Any], fake_time: FakeTime, stream: bool) -> None:
    o, g, a = servers
    for _ in range(2):
        o.enqueue_error(500)
    g.enqueue_error(429, details=[{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}])
    g.enqueue_error(503, code="UNAVAILABLE")
    with llmkit.Client(providers(o, g, a), fallbacks=FALLBACKS, ledger=None, health_interval=None,
                       sleep=fake_time.sleep, clock=fake_time.clock) as client:
        if stream:
            s = client.stream("gpt-4o", MSG)
            text = "".join(chunk.text for chunk in s)
            resp = s.response
        else:
            resp = client.completion("gpt-4o", MSG)
            text = resp.content
        usage = client.usage()
    assert text == "from anthropic" and resp.provider == "anthropic" and resp.model == "claude-sonnet-4-5"
    assert [(x.provider, x.model, x.error) for x in resp.attempts] == [
        ("openai", "gpt-4o", "ServerError"), ("openai", "gpt-4o", "ServerError"),
        ("gemini", "gemini-2.5-flash", "RateLimitError"), ("gemini", "gemini-2.5-flash", "OverloadedError"),
        ("anthropic", "claude-sonnet-4-5", None)]
    assert 1.0 in fake_time.sleeps  # Gemini's RetryInfo was honoured before falling back
    assert (sent(o), sent(g), sent(a)) == (2, 2, 1)
    # each provider got the request in its own format
    assert g.requests[-1].json["systemInstruction"] == {"parts": [{"text": "Answer briefly."}]}
    assert a.requests[-1].json["system"] == "Answer briefly."
    assert bool(usage["fallback"].iloc[0]) and usage["provider"].iloc[0] == "anthropic"


def test_gemini_answers_when_openai_is_down(servers: tuple[Any, Any, Any], fake_time: FakeTime) -> None:
    o, g, a = servers
    o.set_down(True)
    with llmkit.Client(providers(o, g, a), fallbacks=FALLBACKS, ledger=None, health_interval=None,
                       sleep=fake_time.sleep, clock=fake_time.clock) as client:
        resp = client.completion("gpt-4o", MSG)
    assert resp.content == "from gemini" and resp.usage.input_tokens > 0 and resp.cost_usd is not None
    assert sent(a) == 0


def test_content_filter_on_azure_falls_back(fake_time: FakeTime) -> None:
    with FakeAzureOpenAIServer() as az, FakeGeminiServer(reply="from gemini") as g:
        az.enqueue_error(400, code="content_filter")
        entries = [{"name": "azure", "adapter": "azure_openai", "api_key": KEY, "base_url": az.url,
                    "models": ["gpt-4o"]},
                   {"name": "gemini", "adapter": "gemini", "api_key": KEY, "base_url": g.url,
                    "models": ["gemini-2.5-flash"], "priority": 1}]
        with llmkit.Client(entries, fallbacks={"gpt-4o": ["gemini-2.5-flash"]}, ledger=None, health_interval=None,
                           sleep=fake_time.sleep, clock=fake_time.clock) as client:
            resp = client.completion("gpt-4o", MSG)
            health = client.health().set_index("provider")
    assert resp.provider == "gemini" and [x.error for x in resp.attempts] == ["ContentFilterError", None]
    assert health.loc["azure", "breaker_state"] == "closed"  # a policy refusal is not an outage
