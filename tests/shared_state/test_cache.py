"""The Redis storage for the response cache (``llmkit.shared.cache.RedisCache``), on a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

import llmkit
from llmkit._events import EventLog
from llmkit.shared.cache import RedisCache
from llmkit.shared.link import RedisLink

from .conftest import free_port


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.timeout(30)
async def test_an_entry_stored_by_one_client_is_a_hit_for_another(redis_url: str) -> None:
    one, two = RedisLink(redis_url, "llmkit", EventLog()), RedisLink(redis_url, "llmkit", EventLog())
    try:
        a, b = RedisCache(one, ttl_s=60), RedisCache(two, ttl_s=60)
        key = digest("gpt-4o|hello")
        assert await b.get(key) is None  # a miss
        assert await a.put(key, b'{"content": "hi"}')
        assert await b.get(key) == b'{"content": "hi"}'
        assert await a.put(key, b"\x00binary\xff")  # replaced, bytes kept exactly
        assert await b.get(key) == b"\x00binary\xff"
        info = await b.info()
        assert info == {"entries": 1, "size_bytes": 8, "hits": 2, "misses": 1, "shared": True}
        assert await a.clear() == 1
        assert await b.get(key) is None
        assert (await a.info())["entries"] == 0
    finally:
        await one.aclose()
        await two.aclose()


@pytest.mark.timeout(30)
async def test_entries_expire_after_their_ttl(redis_url: str) -> None:
    link = RedisLink(redis_url, "llmkit", EventLog())
    try:
        cache = RedisCache(link)
        await cache.put(digest("short"), b"x", ttl_s=0.05)
        await cache.put(digest("kept"), b"yy")  # no TTL
        for _ in range(100):  # Redis's clock decides; bounded wait of at most 2 s
            if await cache.get(digest("short")) is None:
                break
            await asyncio.sleep(0.02)
        assert await cache.get(digest("short")) is None
        assert await cache.get(digest("kept")) == b"yy"
        info = await cache.info()
        assert info["entries"] == 1 and info["size_bytes"] == 2
    finally:
        await link.aclose()


async def test_bad_keys_and_values_are_refused(redis_url: str) -> None:
    link = RedisLink(redis_url, "llmkit", EventLog())
    try:
        cache = RedisCache(link)
        with pytest.raises(ValueError):
            await cache.get("not a digest")
        with pytest.raises(TypeError):
            await cache.put(digest("x"), "text")  # type: ignore[arg-type]
    finally:
        await link.aclose()


@pytest.mark.timeout(30)
async def test_redis_away_is_a_miss_never_an_error() -> None:
    events = EventLog()
    link = RedisLink(f"redis://127.0.0.1:{free_port()}/0", "llmkit", events)
    try:
        cache = RedisCache(link, ttl_s=60)
        assert await cache.put(digest("k"), b"v") is False
        assert await cache.get(digest("k")) is None
        assert (await cache.info())["shared"] is False
        assert await cache.clear() == 0
        assert [e.detail["state"] for e in events.snapshot("shared_state")] == ["down"]
    finally:
        await link.aclose()


# -- the response cache on Redis: Client(cache="redis", shared_state=...) ------------------------------


def _counting_client(redis_url: str, calls: list[str], **kw: object) -> llmkit.Client:
    def reply(request: llmkit.Request) -> str:
        calls.append(request.messages[-1]["content"])
        return f"answer to {request.messages[-1]['content']}"

    entry = {"name": "mock", "adapter": "mock", "reply": reply, "pricing": {"m": {"input": 1.0, "output": 2.0}}}
    return llmkit.Client([entry], ledger=None, health_interval=None, shared_state=redis_url, cache="redis", **kw)


@pytest.mark.timeout(60)
def test_the_response_cache_on_redis_is_shared_by_clients(redis_url: str) -> None:
    calls: list[str] = []
    msg = [{"role": "user", "content": "hello"}]
    with _counting_client(redis_url, calls) as one, _counting_client(redis_url, calls) as two:
        first = one.completion("m", msg)
        hit = two.completion("m", msg, metadata={"run": 2})  # metadata is not in the key
        assert calls == ["hello"]  # the second client never reached the provider
        assert (first.cached, hit.cached, hit.content, hit.cost_usd) == (False, True, first.content, 0.0)
        assert two.usage()["cost_saved_usd"].iloc[0] == pytest.approx(first.cost_usd)
        info = two.cache_info()
        assert (info["entries"], info["hits"]) == (1, 1) and "redis://" in info["path"]
        two.clear_cache()
        assert one.cache_info()["entries"] == 0
        one.completion("m", msg)
        assert calls == ["hello", "hello"]


@pytest.mark.timeout(60)
def test_redis_away_makes_cache_misses_and_a_warning_never_a_failed_call() -> None:
    calls: list[str] = []
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    with _counting_client(url, calls) as client:
        for _ in range(3):
            assert client.completion("m", [{"role": "user", "content": "x"}]).cached is False
        warnings = client.events("cache_warning")
        assert calls == ["x", "x", "x"] and len(warnings) >= 1
        assert "s3cret-pw" not in " ".join(map(str, warnings["message"])) + repr(client.cache_info())


def test_cache_redis_needs_shared_state() -> None:
    with pytest.raises(llmkit.ConfigError, match="shared_state"):
        llmkit.Client([{"name": "mock", "adapter": "mock"}], ledger=None, cache="redis")
