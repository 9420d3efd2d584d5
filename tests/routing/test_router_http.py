"""Routing scenarios over real HTTP against the loopback fakes; fake clock and sleep where time matters."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import llmkit
from llmkit.testing import FakeAnthropicServer, FakeOpenAIServer

from ..conftest import FakeTime

MSG = [{"role": "user", "content": "hello"}]
KEY = "sk-test-routing-key-0123456789"


@pytest.fixture
def primary() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(reply="from primary") as server:
        yield server


@pytest.fixture
def backup() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer(reply="from backup") as server:
        yield server


def openai(server: FakeOpenAIServer, **extra: Any) -> dict[str, Any]:
    return {"name": "primary", "adapter": "openai", "api_key": KEY, "base_url": server.url, "priority": 0,
            "models": ["gpt-4o"], **extra}


def anthropic(server: FakeAnthropicServer, **extra: Any) -> dict[str, Any]:
    return {"name": "backup", "adapter": "anthropic", "api_key": KEY, "base_url": server.url, "priority": 1,
            "models": ["claude-3-5-sonnet-20241022"], **extra}


def make(providers: list[dict[str, Any]], fake_time: FakeTime, **kw: Any) -> llmkit.Client:
    return llmkit.Client(providers, fallbacks={"gpt-4o": ["claude-3-5-sonnet-20241022"]}, ledger=None,
                         health_interval=None, sleep=fake_time.sleep, clock=fake_time.clock, **kw)


def completions(server: FakeOpenAIServer | FakeAnthropicServer) -> int:
    return sum(1 for r in server.requests if r.path.endswith(("/chat/completions", "/messages")))


def test_primary_500_falls_back_to_backup(primary: FakeOpenAIServer, backup: FakeAnthropicServer,
                                         fake_time: FakeTime) -> None:
    for _ in range(4):
        primary.enqueue_error(500)
    with make([openai(primary, max_retries=3), anthropic(backup)], fake_time) as client:
        resp = client.completion("gpt-4o", MSG)
        usage = client.usage()
    assert resp.content == "from backup" and resp.provider == "backup"
    assert [(a.provider, a.outcome, a.error) for a in resp.attempts] == [
        ("primary", "error", "ServerError")] * 4 + [("backup", "ok", None)]
    assert completions(primary) == 4 and completions(backup) == 1
    assert len(fake_time.sleeps) == 3  # three backoffs between four tries on the primary
    row = usage.iloc[0]
    assert bool(row["fallback"]) and row["provider"] == "backup" and row["status"] == "ok"
    assert row["attempts"] == 5 and row["cost_usd"] > 0


def test_dead_single_provider_opens_breaker_then_half_open_probe_closes_it(
        primary: FakeOpenAIServer, fake_time: FakeTime) -> None:
    provider = openai(primary, max_retries=0, breaker={"fail_max": 3, "reset_timeout": 30.0})
    with make([provider], fake_time) as client:
        primary.set_down(True)  # connection refused
        for _ in range(3):
            with pytest.raises(llmkit.ProviderConnectionError):
                client.completion("gpt-4o", MSG)
        assert client.health().set_index("provider").loc["primary", "breaker_state"] == "open"
        seen = len(primary.requests)
        with pytest.raises(llmkit.CircuitOpenError):  # fails fast, the server is not contacted
            client.completion("gpt-4o", MSG)
        assert len(primary.requests) == seen
        primary.set_down(False)
        fake_time.advance(29.0)
        with pytest.raises(llmkit.CircuitOpenError):
            client.completion("gpt-4o", MSG)
        fake_time.advance(1.5)  # past reset_timeout: the next call is the half-open probe
        assert client.health().set_index("provider").loc["primary", "breaker_state"] == "half_open"
        assert client.completion("gpt-4o", MSG).content == "from primary"
        assert client.health().set_index("provider").loc["primary", "breaker_state"] == "closed"
        transitions = client.events("breaker")[["old", "new"]].values.tolist()
    assert transitions == [["closed", "open"], ["open", "half_open"], ["half_open", "closed"]]


def test_failed_half_open_probe_reopens(primary: FakeOpenAIServer, fake_time: FakeTime) -> None:
    provider = openai(primary, max_retries=0, breaker={"fail_max": 1, "reset_timeout": 10.0})
    with make([provider], fake_time) as client:
        primary.enqueue_error(503)
        with pytest.raises(llmkit.ServerError):
            client.completion("gpt-4o", MSG)
        fake_time.advance(11)
        primary.enqueue_error(503)
        with pytest.raises(llmkit.ServerError):
            client.completion("gpt-4o", MSG)  # the probe fails: open again for another 10 s
        with pytest.raises(llmkit.CircuitOpenError):
            client.completion("gpt-4o", MSG)
        states = client.events("breaker")["new"].tolist()
    assert states == ["open", "half_open", "open"]


def test_429_retry_after_is_honoured(primary: FakeOpenAIServer, fake_time: FakeTime) -> None:
    primary.enqueue_error(429, code="rate_limit_exceeded", type="requests", retry_after=2)
    with make([openai(primary)], fake_time) as client:
        resp = client.completion("gpt-4o", MSG)
        events = client.events()
    assert resp.content == "from primary"
    assert [a.outcome for a in resp.attempts] == ["error", "ok"]
    assert fake_time.sleeps[0] == 2.0  # the retry waited exactly what the server asked
    assert "provider_pause" in set(events["kind"])


def test_retry_after_ms_wins_and_cap_applies(primary: FakeOpenAIServer, fake_time: FakeTime) -> None:
    primary.enqueue_error(429, retry_after=5, retry_after_ms=1500)
    with make([openai(primary)], fake_time) as client:
        client.completion("gpt-4o", MSG)
    assert fake_time.sleeps[0] == 1.5


def test_retry_after_beyond_cap_falls_back_instead_of_waiting(
        primary: FakeOpenAIServer, backup: FakeAnthropicServer, fake_time: FakeTime) -> None:
    primary.enqueue_error(429, retry_after=3600)
    with make([openai(primary), anthropic(backup)], fake_time, retry_after_cap=60) as client:
        resp = client.completion("gpt-4o", MSG)
    assert resp.provider == "backup" and fake_time.sleeps == []


@pytest.mark.parametrize(("status", "code", "error"), [
    (401, "invalid_api_key", llmkit.AuthenticationError),
    (429, "insufficient_quota", llmkit.QuotaExceededError),
])
def test_auth_and_quota_are_not_retried_on_the_same_provider(
        primary: FakeOpenAIServer, backup: FakeAnthropicServer, fake_time: FakeTime, status: int, code: str,
        error: type[Exception]) -> None:
    primary.enqueue_error(status, code=code, type=code)
    with make([openai(primary, max_retries=3), anthropic(backup)], fake_time) as client:
        resp = client.completion("gpt-4o", MSG)
    assert completions(primary) == 1 and resp.provider == "backup"
    assert resp.attempts[0].error == error.__name__ and fake_time.sleeps == []


def test_plain_400_reaches_no_other_provider(primary: FakeOpenAIServer, backup: FakeAnthropicServer,
                                             fake_time: FakeTime) -> None:
    primary.enqueue_error(400, type="invalid_request_error", message="Invalid value for 'messages'.")
    with make([openai(primary, max_retries=3), anthropic(backup)], fake_time) as client:
        with pytest.raises(llmkit.BadRequestError, match="Invalid value"):
            client.completion("gpt-4o", MSG)
        assert client.usage().iloc[0]["error_type"] == "BadRequestError"
    assert completions(primary) == 1 and completions(backup) == 0


def test_context_window_exceeded_tries_the_fallback_model(
        primary: FakeOpenAIServer, backup: FakeAnthropicServer, fake_time: FakeTime) -> None:
    primary.enqueue_error(400, code="context_length_exceeded", type="invalid_request_error")
    with make([openai(primary), anthropic(backup)], fake_time) as client:
        resp = client.completion("gpt-4o", MSG)
    assert resp.provider == "backup" and resp.model.startswith("claude-3-5-sonnet")


def test_all_providers_failed_lists_each_error(primary: FakeOpenAIServer, backup: FakeAnthropicServer,
                                               fake_time: FakeTime) -> None:
    primary.set_down(True)
    backup.enqueue_error(529, type="overloaded_error")
    with make([openai(primary, max_retries=0), anthropic(backup, max_retries=0)], fake_time) as client:
        with pytest.raises(llmkit.AllProvidersFailedError) as info:
            client.completion("gpt-4o", MSG)
    errors = info.value.errors
    assert [type(e) for e in errors] == [llmkit.ProviderConnectionError, llmkit.OverloadedError]
    assert KEY not in str(info.value)


def test_rate_limit_headers_at_zero_pause_the_provider(primary: FakeOpenAIServer, fake_time: FakeTime) -> None:
    primary.set_rate_limit(remaining_requests=0, reset_requests=3.0)
    with make([openai(primary)], fake_time) as client:
        client.completion("gpt-4o", MSG)
        primary.clear_rate_limit()
        client.completion("gpt-4o", MSG)  # waits out the reset the server announced
        waits = client.events("provider_pause")
    assert len(waits) >= 1 and abs(float(waits.iloc[0]["pause_s"]) - 3.0) < 0.5
    assert sum(fake_time.sleeps) >= 2.5


def test_pin_a_provider(primary: FakeOpenAIServer, backup: FakeAnthropicServer, fake_time: FakeTime) -> None:
    with make([openai(primary), anthropic(backup, models=["*"])], fake_time) as client:
        resp = client.completion("gpt-4o", MSG, provider="backup")
    assert resp.provider == "backup" and completions(primary) == 0


def test_streaming_falls_back_before_the_first_chunk(primary: FakeOpenAIServer, backup: FakeAnthropicServer,
                                                     fake_time: FakeTime) -> None:
    primary.enqueue_error(503)
    with make([openai(primary, max_retries=0), anthropic(backup)], fake_time) as client:
        stream = client.stream("gpt-4o", MSG)
        text = "".join(c.text for c in stream)
        usage = client.usage()
    assert text == "from backup" and stream.response is not None and stream.response.provider == "backup"
    assert stream.response.usage.output_tokens > 0 and bool(usage.iloc[0]["stream"])
