"""The Redis storage for the response cache (``llmkit.shared.cache.RedisCache``), on a real redis-server."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

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
