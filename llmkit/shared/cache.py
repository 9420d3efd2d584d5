"""Response-cache entries in Redis, for every client on the same namespace: the Lua scripts and an async
store of bytes. ``llmkit.cache`` owns keys, hits and ledger records; ``cache_backend.RedisCacheBackend``
runs these same scripts behind it for ``Client(cache="redis", shared_state=...)``.

``RedisCache`` stores bytes under a hex digest (the cache key: SHA-256 over model, messages and the
parameters that change the answer) with a time to live, under ``<namespace>:cache:``. Beside the
entries, a sorted set indexes digests by expiry and a hash keeps their sizes, so ``info()`` answers
entries and bytes without scanning Redis; hits and misses are counted in Redis too (all clients).
Every call is one script (atomic). Redis away: ``get`` misses, ``put`` stores nothing, ``info`` is
empty, never an error (the link's ``shared_state`` event says why).

    cache = RedisCache(link, ttl_s=7 * 86400)
    await cache.put(digest, payload)          # True when stored
    payload = await cache.get(digest)         # bytes, or None (miss, expired, or Redis away)
    await cache.info()                        # {"entries", "size_bytes", "hits", "misses", "shared"}
    await cache.clear()                       # entries removed
"""

from __future__ import annotations

import re
from typing import Any

from .link import RedisLink

_HEX = re.compile(r"[0-9a-f]{16,128}")

_PRUNE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
if #gone > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  redis.call('HDEL', KEYS[2], unpack(gone))
end
"""

GET = """
local value = redis.call('GET', KEYS[4])
if value then
  redis.call('HINCRBY', KEYS[3], 'hits', 1)
  return {1, value}
end
redis.call('HINCRBY', KEYS[3], 'misses', 1)
return {0}
"""

PUT = _PRUNE + """
local ms = tonumber(ARGV[3])
if ms > 0 then
  redis.call('SET', KEYS[4], ARGV[2], 'PX', ms)
  redis.call('ZADD', KEYS[1], now + ms, ARGV[1])
else
  redis.call('SET', KEYS[4], ARGV[2])
  redis.call('ZADD', KEYS[1], '+inf', ARGV[1])
end
redis.call('HSET', KEYS[2], ARGV[1], string.len(ARGV[2]))
return 1
"""

INFO = _PRUNE + """
local size = 0
for _, v in ipairs(redis.call('HVALS', KEYS[2])) do size = size + tonumber(v) end
local stats = redis.call('HMGET', KEYS[3], 'hits', 'misses')
return {redis.call('ZCARD', KEYS[1]), size, tonumber(stats[1] or '0'), tonumber(stats[2] or '0')}
"""

CLEAR = """
local digests = redis.call('ZRANGE', KEYS[1], 0, -1)
local n = 0
for i = 1, #digests, 500 do
  local batch = {}
  for j = i, math.min(i + 499, #digests) do batch[#batch + 1] = ARGV[1] .. digests[j] end
  n = n + redis.call('DEL', unpack(batch))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return n
"""


class RedisCache:
    """Bytes by hex digest with a TTL, in Redis under ``<namespace>:cache:``; ``ttl_s`` None keeps entries."""

    def __init__(self, link: RedisLink, ttl_s: float | None = None) -> None:
        self._link = link
        self.ttl_s = ttl_s
        self._prefix = link.key("cache", "")
        self._meta = [self._prefix + "~index", self._prefix + "~sizes", self._prefix + "~stats"]

    def _key(self, digest: str) -> str:
        if not isinstance(digest, str) or not _HEX.fullmatch(digest):
            raise ValueError(f"expected a lower-case hex digest (16-128 characters), got {digest!r}")
        return self._prefix + digest

    async def get(self, digest: str) -> bytes | None:
        """The stored bytes, or None (a miss, an expired entry, or Redis away)."""
        result = await self._link.run("cache.get", GET, [*self._meta, self._key(digest)], [])
        if result is None or not int(result[0]):
            return None
        value = result[1]
        return value if isinstance(value, bytes) else str(value).encode()

    async def put(self, digest: str, value: bytes, ttl_s: float | None = None) -> bool:
        """Store ``value`` (replacing any entry) for ``ttl_s`` (default: the cache's); False when Redis is away."""
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        ttl = self.ttl_s if ttl_s is None else ttl_s
        ms = 0 if ttl is None else max(1, round(ttl * 1000))
        result = await self._link.run("cache.put", PUT, [*self._meta, self._key(digest)], [digest, bytes(value), ms])
        return result is not None

    async def info(self) -> dict[str, Any]:
        """entries, size_bytes, hits, misses (over every client on the namespace), and shared (Redis reached)."""
        result = await self._link.run("cache.info", INFO, self._meta, [])
        if result is None:
            return {"entries": 0, "size_bytes": 0, "hits": 0, "misses": 0, "shared": False}
        entries, size, hits, misses = (int(x) for x in result)
        return {"entries": entries, "size_bytes": size, "hits": hits, "misses": misses, "shared": True}

    async def clear(self) -> int:
        """Remove every entry (and the counters); the number of entries removed (0 when Redis is away)."""
        result = await self._link.run("cache.clear", CLEAR, self._meta, [self._prefix])
        return 0 if result is None else int(result)
