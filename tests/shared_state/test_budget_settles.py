"""The shared budget on a real redis-server: streams and embeddings settle their cost, a fresh client
sees the team's spend, and the embed cache reads Redis in few round trips."""

from __future__ import annotations

from typing import Any

import pytest
import redis

import llmkit
from llmkit.cache import Entry
from llmkit.shared.cache_backend import RedisCacheBackend

from .conftest import free_port

MESSAGES = [{"role": "user", "content": "hi"}]
SPENT = "llmkit:budget:total:total:spent"
HELD = "llmkit:budget:total:total:held"


def priced(url: str, **kw: Any) -> llmkit.Client:
    entry = {"name": "m", "adapter": "mock", "models": ["*"], "max_retries": 0,
             "pricing": {"*": {"input": 0.02, "output": 0.6}}}
    return llmkit.Client(providers=[entry], ledger=None, health_interval=None, shared_state=url, budget_usd=10.0, **kw)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", ["stream", "embedding"])
def test_streams_and_embeddings_settle_their_cost_in_redis(redis_url: str, call: str) -> None:
    with priced(redis_url) as client:
        if call == "stream":
            assert "".join(c.text for c in client.stream(model="gpt-4o", messages=MESSAGES))
        else:
            client.embedding(model="emb", input=["some words to embed"])
        cost = float(client.usage()["cost_usd"].sum())
    shared = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert cost > 0 and float(shared.get(SPENT) or 0) == pytest.approx(cost, rel=1e-9)
        assert shared.hlen(HELD) == 0
    finally:
        shared.close()


@pytest.mark.timeout(60)
def test_a_fresh_client_shows_the_teams_spend(redis_url: str) -> None:
    with priced(redis_url) as first:
        first.completion(model="gpt-4o", messages=MESSAGES)
        spent = float(first.usage()["cost_usd"].sum())
    with priced(redis_url) as fresh:  # has made no call yet
        status = fresh.budget_status()
    assert status is not None and status["spent_usd"] == pytest.approx(spent, rel=1e-9) and spent > 0
    with priced(f"redis://127.0.0.1:{free_port()}/0") as away:  # Redis away: the local figures, no error
        status = away.budget_status()
    assert status is not None and status["spent_usd"] == 0.0


@pytest.mark.timeout(60)
def test_redis_backend_looks_up_and_stores_many_in_few_round_trips(redis_url: str) -> None:
    backend = RedisCacheBackend(redis_url, "llmkit")
    try:
        keys = [f"{i:064x}" for i in range(2500)]  # three script calls each way
        backend.store_many([(k, Entry(k.encode()[:4], 5.0, 0.5)) for k in keys[::2]], ttl=None)
        found = backend.lookup_many(keys, 6.0)
        assert [e.payload if e else None for e in found] == [k.encode()[:4] if i % 2 == 0 else None
                                                             for i, k in enumerate(keys)]
        assert found[0].created == 5.0 and found[0].cost_usd == 0.5
        assert backend.info()["entries"] == 1250
    finally:
        backend.close()


@pytest.mark.timeout(60)
def test_embed_with_a_redis_cache_hits_across_clients(redis_url: str) -> None:
    entry = {"name": "m", "adapter": "mock", "models": ["*"]}
    texts = [f"text {i}" for i in range(300)]
    with llmkit.Client([entry], ledger=None, health_interval=None, shared_state=redis_url, cache="redis") as a:
        first = a.embed(texts, model="emb", as_array=True, progress=False)
    with llmkit.Client([entry], ledger=None, health_interval=None, shared_state=redis_url, cache="redis") as b:
        again = b.embed(texts[::-1], model="emb", progress=False)
        assert b.provider("m").calls == 0  # type: ignore[attr-defined]
    assert again.attrs["embed"]["cached"] == 300
    assert (again["embedding"].iloc[0] == first[-1]).all()
