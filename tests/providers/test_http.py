"""Header parsing shared by the adapters: Go durations, retry-after, OpenAI and Anthropic rate limits."""

from __future__ import annotations

from email.utils import formatdate

import httpx
import pytest

from llmkit._types import RateLimitInfo
from llmkit.providers._http import (
    error_retry_after,
    parse_duration,
    parse_rate_limit_headers,
    parse_retry_after,
    parse_timestamp_delay,
    should_retry_header,
)

NOW = 1_772_049_750.0  # 2026-02-25T20:02:30Z


@pytest.mark.parametrize(("text", "seconds"), [
    ("6ms", 0.006), ("0s", 0.0), ("1s", 1.0), ("6m0s", 360.0), ("23m16.298s", 1396.298), ("1h2m3s", 3723.0),
    ("1.5", 1.5), ("20", 20.0), ("250us", 0.00025), (".5s", 0.5),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "6 ms", "1x", "s"])
def test_bad_durations_are_none(text: str) -> None:
    assert parse_duration(text) is None


def test_retry_after_seconds_and_ms_wins() -> None:
    assert parse_retry_after({"retry-after": "7"}) == 7.0
    assert parse_retry_after({"retry-after": "1.5"}) == 1.5
    assert parse_retry_after({"retry-after": "7", "retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "whenever"}) is None


def test_retry_after_http_date() -> None:
    date = formatdate(NOW + 30, usegmt=True)
    assert parse_retry_after({"retry-after": date}, now=NOW) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": formatdate(NOW - 30, usegmt=True)}, now=NOW) == 0.0


def test_rfc3339_reset() -> None:
    assert parse_timestamp_delay("2026-02-25T20:02:37Z", now=NOW) == pytest.approx(7.0)
    assert parse_timestamp_delay("2026-02-25T20:02:00Z", now=NOW) == 0.0


def test_openai_rate_limit_headers() -> None:
    headers = httpx.Headers({
        "x-ratelimit-limit-requests": "10000", "x-ratelimit-limit-tokens": "50000000",
        "x-ratelimit-remaining-requests": "9999", "x-ratelimit-remaining-tokens": "49999975",
        "x-ratelimit-reset-requests": "6ms", "x-ratelimit-reset-tokens": "0s",
    })
    info = parse_rate_limit_headers(headers)
    assert info == RateLimitInfo(limit_requests=10000, remaining_requests=9999, reset_requests_s=0.006,
                                 limit_tokens=50000000, remaining_tokens=49999975, reset_tokens_s=0.0)
    assert info.pause_s() is None


def test_anthropic_rate_limit_headers_pick_the_most_exhausted_token_group() -> None:
    headers = {
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "49",
        "anthropic-ratelimit-requests-reset": "2026-02-25T20:02:32Z",
        "anthropic-ratelimit-tokens-limit": "38000", "anthropic-ratelimit-tokens-remaining": "36000",
        "anthropic-ratelimit-tokens-reset": "2026-02-25T20:02:36Z",
        "anthropic-ratelimit-output-tokens-limit": "8000", "anthropic-ratelimit-output-tokens-remaining": "0",
        "anthropic-ratelimit-output-tokens-reset": "2026-02-25T20:02:40Z",
    }
    info = parse_rate_limit_headers(headers, now=NOW)
    assert info is not None
    assert (info.limit_requests, info.remaining_requests) == (50, 49)
    assert info.reset_requests_s == pytest.approx(2.0)
    assert (info.limit_tokens, info.remaining_tokens) == (8000, 0)
    assert info.reset_tokens_s == pytest.approx(10.0)
    assert info.pause_s() == pytest.approx(10.0)


def test_no_rate_limit_headers_is_none() -> None:
    assert parse_rate_limit_headers({"content-type": "application/json"}) is None
    assert parse_rate_limit_headers({"retry-after": "3"}) == RateLimitInfo(retry_after_s=3.0)


def test_error_retry_after_uses_reset_only_for_exhausted_429() -> None:
    exhausted = RateLimitInfo(remaining_requests=0, reset_requests_s=12.0)
    assert error_retry_after(429, exhausted) == 12.0
    assert error_retry_after(500, exhausted) is None
    assert error_retry_after(503, RateLimitInfo(retry_after_s=4.0)) == 4.0
    assert error_retry_after(429, RateLimitInfo(remaining_requests=5, reset_requests_s=12.0)) is None
    assert error_retry_after(429, None) is None


def test_should_retry_header() -> None:
    assert should_retry_header({"x-should-retry": "true"}) is True
    assert should_retry_header({"x-should-retry": "False"}) is False
    assert should_retry_header({"x-should-retry": "maybe"}) is None
    assert should_retry_header({}) is None


def test_provider_survives_a_change_of_event_loop() -> None:
    """The pooled client belongs to the loop that created it; a call on another loop gets a new one,
    and the old one is closed on its own loop."""
    import asyncio
    import threading

    from wire_helpers import req

    from llmkit import ProviderConfig
    from llmkit.providers.openai import OpenAIProvider
    from llmkit.testing import FakeOpenAIServer

    first = asyncio.new_event_loop()
    thread = threading.Thread(target=first.run_forever, daemon=True)
    thread.start()
    try:
        with FakeOpenAIServer(reply="ok") as server:
            provider = OpenAIProvider(ProviderConfig(name="o", adapter="openai", api_key="sk-loop-test-1234",
                                                     base_url=server.url))
            assert asyncio.run_coroutine_threadsafe(provider.complete(req()), first).result(5).content == "ok"
            old = provider.client_if_any()

            async def on_another_loop() -> str:
                try:
                    return (await provider.complete(req())).content
                finally:
                    await provider.aclose()

            assert asyncio.run(on_another_loop()) == "ok"
            assert asyncio.run_coroutine_threadsafe(asyncio.sleep(0, old), first).result(5).is_closed
    finally:
        first.call_soon_threadsafe(first.stop)
        thread.join(5)
        first.close()
