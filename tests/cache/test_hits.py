"""Hits and misses through the client: what a hit is (no network, $0, recorded), what is stored, and when."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit.testing import FakeOpenAIServer

from ..conftest import FakeTime
from .conftest import MODEL, MSG, mock_client

SCHEMA = {"type": "json_schema", "json_schema": {"name": "S", "schema": {"type": "object", "properties": {
    "label": {"type": "string"}}}}}
OTHER_SCHEMA = {"type": "json_schema", "json_schema": {"name": "S", "schema": {"type": "object", "properties": {
    "label": {"type": "string"}, "confidence": {"type": "number"}}}}}


def calls(client: llmkit.Client) -> int:
    return client.provider("m").calls  # type: ignore[attr-defined,no-any-return]


def test_a_hit_costs_nothing_and_sends_nothing(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        first = client.completion(MODEL, MSG)
        second = client.completion(MODEL, MSG)
        assert calls(client) == 1
        info = client.cache_info()
        usage = client.usage()
        summary = client.cost_summary()
    assert first.cached is False and first.cost_usd is not None and first.cost_usd > 0
    assert second.cached is True and second.cost_usd == 0.0
    assert (second.content, second.provider, second.model, second.usage) == (
        first.content, first.provider, first.model, first.usage)
    assert second.id != first.id and second.attempts == []
    assert info["hits"] == 1 and info["misses"] == 1 and info["entries"] == 1 and info["size_bytes"] > 0
    assert info["saved_usd"] == pytest.approx(first.cost_usd)
    assert usage["cached"].tolist() == [False, True]
    assert usage["cost_usd"].tolist() == [pytest.approx(first.cost_usd), 0.0]
    assert usage["cost_saved_usd"].tolist() == [0.0, pytest.approx(first.cost_usd)]
    assert usage["status"].tolist() == ["ok", "ok"] and usage["attempts"].tolist() == [1, 0]
    assert summary.loc[0, "cached_requests"] == 1
    assert summary.loc[0, "cost_saved_usd"] == pytest.approx(first.cost_usd)
    assert summary.loc[0, "cost_usd"] == pytest.approx(first.cost_usd)


@pytest.mark.parametrize(("change", "hit"), [
    ({"temperature": 0.9}, False),
    ({"max_tokens": 5}, False),
    ({"response_format": OTHER_SCHEMA}, False),
    ({"seed": 2}, False),
    ({"metadata": {"experiment": "b"}}, True),
    ({"priority": 9}, True),
    ({"timeout": 30.0}, True),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else str(v))
def test_hit_or_miss_by_each_argument(cache_path: Path, change: dict[str, Any], hit: bool) -> None:
    base = {"temperature": 0.2, "max_tokens": 50, "response_format": SCHEMA, "seed": 1,
            "metadata": {"experiment": "a"}, "priority": 0, "timeout": 60.0}
    with mock_client(cache_path) as client:
        client.completion(MODEL, MSG, **base)
        resp = client.completion(MODEL, MSG, **{**base, **change})
        assert resp.cached is hit and calls(client) == (1 if hit else 2)


def test_a_hit_takes_no_rate_limit_token(cache_path: Path, fake_time: FakeTime) -> None:
    """Two requests per minute may start together: the second miss starts at once only if the hit took none."""
    limit = {"rate_limit": {"count": 2, "period": "minute", "burst": 2}}
    with mock_client(cache_path, provider=limit, sleep=fake_time.sleep, clock=fake_time.clock) as client:
        client.completion(MODEL, MSG)
        assert client.completion(MODEL, MSG).cached
        other = client.completion(MODEL, [{"role": "user", "content": "something else"}])
        waits = client.event_list("rate_limit_wait")
    assert other.cached is False and fake_time.sleeps == [] and waits == []


def test_a_hit_needs_no_provider_and_leaves_the_breaker_alone(cache_path: Path) -> None:
    with mock_client(cache_path, provider={"breaker": {"fail_max": 1}}) as client:
        client.completion(MODEL, MSG)
        client.provider("m").set_down(True)  # type: ignore[attr-defined]
        for _ in range(3):
            assert client.completion(MODEL, MSG).cached
        health = client.health()
        attempts = client.event_list("attempt")
    assert health.loc[0, "breaker_state"] == "closed" and health.loc[0, "requests"] == 1
    assert len(attempts) == 1


def test_a_hit_is_served_past_the_budget(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        client.completion(MODEL, MSG)
    with mock_client(cache_path, budget_usd=1e-9) as client:  # nothing fits this budget...
        with pytest.raises(llmkit.BudgetExceededError):
            client.completion(MODEL, [{"role": "user", "content": "new question"}])
        assert client.completion(MODEL, MSG).cached  # ...but a cached answer costs nothing


def test_refresh_asks_again_and_overwrites(cache_path: Path) -> None:
    with mock_client(cache_path, options={"replies": ["first", "second", "third"]}) as client:
        assert client.completion(MODEL, MSG).content == "first"
        refreshed = client.completion(MODEL, MSG, cache="refresh")
        again = client.completion(MODEL, MSG)
        info = client.cache_info()
    assert refreshed.cached is False and refreshed.content == "second"
    assert again.cached is True and again.content == "second"
    assert info["entries"] == 1 and info["hits"] == 1


def test_per_call_false_skips_the_cache_and_true_opts_in(tmp_path: Path) -> None:
    with mock_client(tmp_path / "c.sqlite3") as client:
        client.completion(MODEL, MSG, cache=False)
        assert client.completion(MODEL, MSG, cache=False).cached is False
        assert client.cache_info()["entries"] == 0
    # no cache configured: single calls are not cached unless they ask; asking uses the default file
    providers = [{"name": "m", "adapter": "mock"}]
    with llmkit.Client(providers, ledger=None, health_interval=None) as client:
        client.completion(MODEL, MSG)
        assert client.completion(MODEL, MSG).cached is False
        client.completion(MODEL, MSG, cache=True)
        assert client.completion(MODEL, MSG, cache=True).cached is True
        info = client.cache_info()
    assert info["entries"] == 1
    assert Path(info["path"]) == llmkit.ledger.store.Ledger.default_path().parent / "cache.sqlite3"


def test_the_default_file_sits_beside_the_ledger(tmp_path: Path) -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=tmp_path / "runs" / "ledger.sqlite3", cache=True,
                       health_interval=None) as client:
        client.completion(MODEL, MSG)
        assert client.completion(MODEL, MSG).cached
        assert Path(client.cache_info()["path"]) == tmp_path / "runs" / "cache.sqlite3"
    assert (tmp_path / "runs" / "cache.sqlite3").exists()


def test_a_bad_cache_argument_fails_before_anything_is_sent(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        for bad in ("yes", 1, 0, "REFRESH", [True]):
            with pytest.raises(llmkit.InvalidRequestError, match="cache"):
                client.completion(MODEL, MSG, cache=bad)
        assert calls(client) == 0


@pytest.mark.parametrize("bad", [{"cache": 3}, {"cache_ttl": -1}, {"cache_max_bytes": 0}, {"cache": ""}])
def test_bad_cache_config_is_a_config_error(bad: dict[str, Any]) -> None:
    with pytest.raises(llmkit.ConfigError, match=next(iter(bad))):
        llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, **bad)


def test_ttl_expires_answers_on_the_injected_clock(cache_path: Path, fake_time: FakeTime) -> None:
    with mock_client(cache_path, cache_ttl=60, clock=fake_time.clock, sleep=fake_time.sleep) as client:
        client.completion(MODEL, MSG)
        fake_time.advance(59)
        assert client.completion(MODEL, MSG).cached is True
        fake_time.advance(2)  # 61 s after it was stored (a hit does not make it younger)
        expired = client.completion(MODEL, MSG)
        assert expired.cached is False and calls(client) == 2
        fake_time.advance(30)
        assert client.completion(MODEL, MSG).cached is True  # the fresh answer counts from its own time


def test_errors_are_not_stored(cache_path: Path) -> None:
    with mock_client(cache_path, provider={"max_retries": 0}) as client:
        client.provider("m").fail_next(1, "bad_request")  # type: ignore[attr-defined]
        with pytest.raises(llmkit.BadRequestError):
            client.completion(MODEL, MSG)
        assert client.cache_info()["entries"] == 0
        answer = client.completion(MODEL, MSG)
        assert answer.cached is False and calls(client) == 2
        assert client.completion(MODEL, MSG).cached is True


def test_completion_async_and_acompletion_use_the_cache(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        rid = client.completion_async(MODEL, MSG)
        assert client.get_result(rid, timeout=10).cached is False

        async def again() -> llmkit.Response:
            return await client.acompletion(MODEL, MSG)

        assert asyncio.run(again()).cached is True
        rid = client.completion_async(MODEL, MSG, cache="refresh")
        assert client.get_result(rid, timeout=10).cached is False
        assert calls(client) == 2


def test_the_memory_backend(tmp_path: Path) -> None:
    with mock_client(":memory:") as client:
        client.completion(MODEL, MSG)
        assert client.completion(MODEL, MSG).cached
        assert client.cache_info()["entries"] == 1
        client.clear_cache()
        assert client.cache_info() == {"hits": 0, "misses": 0, "entries": 0, "size_bytes": 0, "saved_usd": 0.0,
                                       "path": ":memory:", "warning": None}
        assert client.completion(MODEL, MSG).cached is False


def test_clear_cache_empties_the_file_and_resets_the_counts(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        client.completion(MODEL, MSG)
        client.completion(MODEL, MSG)
        client.clear_cache()
        info = client.cache_info()
        assert (info["entries"], info["size_bytes"], info["hits"], info["misses"]) == (0, 0, 0, 0)
        assert client.completion(MODEL, MSG).cached is False


def test_two_api_keys_share_one_entry(cache_path: Path) -> None:
    with FakeOpenAIServer(reply="Paris") as server:
        for key in ("sk-first-key-0001", "sk-second-key-0002"):
            providers = [{"name": "oai", "adapter": "openai", "api_key": key, "base_url": server.url}]
            with llmkit.Client(providers, ledger=None, cache=cache_path, health_interval=None) as client:
                resp = client.completion("gpt-4o", MSG)
                info = client.cache_info()
        sent = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert resp.cached is True and resp.content == "Paris"
    assert len(sent) == 1 and info["entries"] == 1
    raw = cache_path.read_bytes() + (cache_path.with_name(cache_path.name + "-wal").read_bytes()
                                     if cache_path.with_name(cache_path.name + "-wal").exists() else b"")
    assert b"sk-first" not in raw and b"sk-second" not in raw
