"""Redis away at start or mid-run: calls go on on local state, a warning event says so, and sharing
resumes when Redis answers again. Plus the config keys and the cluster-wide half-open probe."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

import llmkit
from llmkit import ConfigError

from .conftest import RedisServer, free_port

MESSAGES = [{"role": "user", "content": "hi"}]


def client(url: str, **provider: Any) -> llmkit.Client:
    entry = {"name": "m", "adapter": "mock", "max_retries": 0, **provider}
    return llmkit.Client(providers=[entry], ledger=None, health_interval=None, shared_state=url)


def states(c: llmkit.Client) -> list[Any]:
    return [e.detail["state"] for e in c.event_list("shared_state")]


def test_config_keys_are_validated() -> None:
    with pytest.raises(ConfigError, match="shared_state"):
        llmkit.Client(ledger=None, shared_state="http://localhost:6379")
    with pytest.raises(ConfigError, match="namespace"):
        llmkit.Client(ledger=None, shared_state="redis://127.0.0.1:6379/0", namespace="a b")
    with pytest.raises(ConfigError) as info:
        llmkit.Client(ledger=None, shared_state=42)
    assert "42" not in str(info.value)
    config = llmkit.Client.from_config({"providers": [{"name": "m"}], "shared_state": "redis://h:1/2",
                                        "namespace": "team-a", "ledger": None, "health_interval": None})
    try:
        assert config.config.shared_state == "redis://h:1/2" and config.config.namespace == "team-a"
    finally:
        config.close()


@pytest.mark.timeout(60)
def test_unreachable_at_start_calls_go_on_with_a_warning_event() -> None:
    url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    with client(url, rate_limit="1000/second", breaker={"fail_max": 1}) as c:
        for _ in range(3):
            assert c.completion(model="x", messages=MESSAGES).content
        assert states(c) == ["down"]
        events = c.events("shared_state")
        assert "hunter2secret" not in events.to_string() and "hunter2secret" not in repr(c)
        c.provider("m").fail_next(1)  # type: ignore[attr-defined]
        with pytest.raises(llmkit.ServerError):
            c.completion(model="x", messages=MESSAGES)
        assert c.health().loc[0, "breaker_state"] == "open"  # the local breaker took over


@pytest.mark.timeout(60)
def test_redis_killed_mid_run_then_restarted(redis_server: RedisServer, redis_url: str) -> None:
    with client(redis_url, rate_limit="1000/second") as c:
        c.completion(model="x", messages=MESSAGES)
        assert states(c) == ["up"]
        redis_server.stop()
        try:
            for _ in range(5):  # every call still answers, on local limits and breaker
                assert c.completion(model="x", messages=MESSAGES).content
            assert states(c) == ["up", "down"]
            assert c.usage()["status"].tolist() == ["ok"] * 6
        finally:
            redis_server.start()
        deadline = time.monotonic() + 10
        while states(c)[-1] != "up" and time.monotonic() < deadline:
            c.completion(model="x", messages=MESSAGES)  # the link retries once a second
            time.sleep(0.05)
        assert states(c) == ["up", "down", "up"]
        c.completion(model="x", messages=MESSAGES)
        shared = redis.Redis.from_url(redis_url, decode_responses=True)
        try:  # sharing resumed: the fresh server holds this client's window again
            assert shared.zcard("llmkit:limits:{m}:req:1000/1") >= 1
        finally:
            shared.close()


@pytest.mark.timeout(60)
def test_one_half_open_probe_cluster_wide(redis_url: str) -> None:
    settings = {"breaker": {"fail_max": 1, "reset_timeout": 1.0}, "options": {"latency": 0.3}}
    with client(redis_url, **settings) as a, client(redis_url, **settings) as b:
        a.provider("m").fail_next(1)  # type: ignore[attr-defined]
        with pytest.raises(llmkit.ServerError):
            a.completion(model="x", messages=MESSAGES)
        deadline = time.monotonic() + 5
        while a.health().loc[0, "breaker_state"] != "open" and time.monotonic() < deadline:
            time.sleep(0.01)  # the report reaches Redis in the background, one round trip later
        with pytest.raises(llmkit.CircuitOpenError):  # opened by a: b never calls
            b.completion(model="x", messages=MESSAGES)
        assert b.health().loc[0, "breaker_state"] == "open"
        time.sleep(1.05)  # past reset_timeout (Redis's clock): one probe may go
        ids = [a.completion_async(model="x", messages=MESSAGES), b.completion_async(model="x", messages=MESSAGES)]
        outcomes = []
        for c, rid in zip((a, b), ids, strict=True):
            try:
                outcomes.append(c.get_result(rid, timeout=10).content != "")
            except llmkit.CircuitOpenError:
                outcomes.append(False)
        assert sorted(outcomes) == [False, True]  # exactly one probe ran, and it closed the breaker
        deadline = time.monotonic() + 5
        while b.health().loc[0, "breaker_state"] != "closed" and time.monotonic() < deadline:
            b.completion(model="x", messages=MESSAGES)
        assert a.health().loc[0, "breaker_state"] == b.health().loc[0, "breaker_state"] == "closed"


@pytest.mark.timeout(60)
def test_a_shared_limit_still_serves_waiters_by_priority(redis_url: str) -> None:
    with client(redis_url, rate_limit="20/second") as c:
        c.completion(model="x", messages=MESSAGES)  # takes the first slot: the rest queue behind it
        ids = {c.completion_async(model="x", messages=MESSAGES, priority=p): p for p in (5, 4, 3, 2, 1, 0)}
        for rid in ids:
            c.get_result(rid, timeout=20)
        order = [ids[e.request_id] for e in c.event_list("request") if e.request_id in ids]
    # the first submitted may have taken the turn before the others arrived; the rest go lowest first
    assert order[1:] == sorted(order[1:]) and len(order) == 6


@pytest.mark.timeout(60)
def test_token_limits_are_shared_too(redis_url: str) -> None:
    settings = {"tokens_per_minute": 1000}
    with client(redis_url, **settings) as a, client(redis_url, **settings) as b:
        a.completion(model="x", messages=MESSAGES, max_tokens=600)  # about 610 of the minute's 1000 tokens
        start = time.monotonic()
        rid = b.completion_async(model="x", messages=MESSAGES, max_tokens=600)
        with pytest.raises(TimeoutError):
            b.get_result(rid, timeout=0.5)  # b waits: a's tokens count in the shared minute
        assert time.monotonic() - start < 5
        b.cancel(rid)
        shared = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            assert 600 <= float(shared.get("llmkit:limits:{m}:tokens:1000:total") or 0) <= 1000
        finally:
            shared.close()


@pytest.mark.timeout(60)
def test_many_requests_at_once_wait_for_a_connection_instead_of_degrading(redis_url: str) -> None:
    entry = {"name": "m", "adapter": "mock", "max_retries": 0, "rate_limit": "1000/second"}
    with llmkit.Client(providers=[entry], ledger=None, health_interval=None, shared_state=redis_url,
                       budget_usd=100.0) as c:
        ids = [c.completion_async(model="x", messages=MESSAGES) for _ in range(150)]  # 150 budget holds at once
        assert all(c.get_result(rid, timeout=30).content for rid in ids)
        assert states(c) == ["up"]
