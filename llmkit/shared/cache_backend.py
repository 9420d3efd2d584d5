"""The response cache's storage in Redis (``Client(cache="redis", shared_state="redis://...")``).

``RedisCacheBackend`` implements ``llmkit.cache.CacheBackend`` (``lookup``, ``store``, ``discard``,
``clear``, ``info``, ``close``) on the same keys and scripts as ``RedisCache``: entries under
``<namespace>:cache:<sha256>``, expiring natively after ``cache_ttl``, with an index that makes ``info()``
O(entries) in Redis and O(1) here. The cache front (``llmkit.cache.ResponseCache``) keeps its modes, keys,
TTL check and counts, and turns every error raised here into a miss plus one ``cache_warning`` event: a
Redis that went away never fails a call. After a failure Redis is left alone for ``retry_s`` (each call
then misses at once), so a dead server costs one short timeout a second, not one per call.

It speaks redis-py's synchronous client (the front's interface is synchronous, like SQLite's): one round
trip per lookup or store, bounded by ``timeout_s``; ``lookup_many`` / ``store_many`` (embed's per-text cache,
which calls them off the loop thread) take up to 1,000 keys per script call (one round trip). ``cache_max_bytes`` does
not apply here: bound the memory with Redis's own ``maxmemory`` policy.
"""

from __future__ import annotations

import math
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .._secrets import redact
from .cache import _PRUNE, CLEAR, GET, INFO, PUT

_CHUNK = 1000  # entries per script call (one round trip) in ``lookup_many`` / ``store_many``
_HEADER = struct.Struct("!dd")  # created (the cache's clock), cost in USD (NaN: unpriced)

DISCARD = """
redis.call('DEL', KEYS[4])
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

#: ``lookup_many``: KEYS = the three index keys, then the entries; one reply per entry (0: a miss).
GET_MANY = """
local out, hits = {}, 0
for i = 4, #KEYS do
  local value = redis.call('GET', KEYS[i])
  if value then out[#out + 1] = value; hits = hits + 1 else out[#out + 1] = 0 end
end
if hits > 0 then redis.call('HINCRBY', KEYS[3], 'hits', hits) end
if #KEYS - 3 > hits then redis.call('HINCRBY', KEYS[3], 'misses', #KEYS - 3 - hits) end
return out
"""

#: ``store_many``: KEYS = the three index keys, then the entries; ARGV = the TTL in ms, then digest, value pairs.
PUT_MANY = _PRUNE + """
local ms = tonumber(ARGV[1])
for i = 4, #KEYS do
  local digest, value = ARGV[2 * (i - 3)], ARGV[2 * (i - 3) + 1]
  if ms > 0 then
    redis.call('SET', KEYS[i], value, 'PX', ms)
    redis.call('ZADD', KEYS[1], now + ms, digest)
  else
    redis.call('SET', KEYS[i], value)
    redis.call('ZADD', KEYS[1], '+inf', digest)
  end
  redis.call('HSET', KEYS[2], digest, string.len(value))
end
return 1
"""


@dataclass(frozen=True, slots=True)
class StoredEntry:
    """An entry read back (the shape of ``llmkit.cache.Entry``, which sits above this layer)."""

    payload: bytes
    created: float
    cost_usd: float | None = None


def pack(entry: Any) -> bytes:
    """An ``llmkit.cache.Entry`` as bytes: its creation time and cost, then the stored answer."""
    cost = math.nan if entry.cost_usd is None else float(entry.cost_usd)
    return _HEADER.pack(float(entry.created), cost) + bytes(entry.payload)


def unpack(value: bytes) -> tuple[bytes, float, float | None]:
    """``(payload, created, cost_usd)`` from ``pack``'s bytes; ``ValueError`` when they are not that."""
    if len(value) < _HEADER.size:
        raise ValueError("a Redis cache entry shorter than its header")
    created, cost = _HEADER.unpack_from(value)
    return value[_HEADER.size:], created, None if math.isnan(cost) else cost


class RedisCacheBackend:
    """Answers by key in Redis, shared by every client on the same URL and namespace."""

    def __init__(self, url: str, namespace: str, *, timeout_s: float = 0.25, retry_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.location = f"{redact(url)} (namespace {namespace!r})"
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self._clock = clock
        self._prefix = f"{namespace}:cache:"
        self._meta = [self._prefix + "~index", self._prefix + "~sizes", self._prefix + "~stats"]
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._down_until = 0.0
        self._lock = threading.Lock()

    # -- the CacheBackend interface -------------------------------------------------------------

    def lookup(self, key: str, now: float) -> Any:
        result = self._run("get", GET, [*self._meta, self._prefix + key], [])
        if not result or not int(result[0]):
            return None
        payload, created, cost = unpack(result[1])
        return StoredEntry(payload, created, cost)

    def store(self, key: str, entry: Any, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        ms = 0 if ttl is None else max(1, round(ttl * 1000))
        self._run("put", PUT, [*self._meta, self._prefix + key], [key, pack(entry), ms])

    def lookup_many(self, keys: list[str], now: float) -> list[Any]:
        """``lookup`` for many keys: one script call (one round trip) per ``_CHUNK`` keys."""
        out: list[Any] = []
        for i in range(0, len(keys), _CHUNK):
            chunk = keys[i:i + _CHUNK]
            values = self._run("get_many", GET_MANY, [*self._meta, *(self._prefix + k for k in chunk)], [])
            for value in values:
                if isinstance(value, bytes):
                    payload, created, cost = unpack(value)
                    out.append(StoredEntry(payload, created, cost))
                else:
                    out.append(None)
        return out

    def store_many(self, items: list[tuple[str, Any]], *, ttl: float | None = None,
                   max_bytes: int | None = None) -> None:
        """``store`` for many entries: one script call per ``_CHUNK`` entries."""
        ms = 0 if ttl is None else max(1, round(ttl * 1000))
        for i in range(0, len(items), _CHUNK):
            chunk = items[i:i + _CHUNK]
            args: list[Any] = [ms]
            for key, entry in chunk:
                args += [key, pack(entry)]
            self._run("put_many", PUT_MANY, [*self._meta, *(self._prefix + k for k, _ in chunk)], args)

    def discard(self, key: str) -> None:
        self._run("discard", DISCARD, [*self._meta, self._prefix + key], [key])

    def clear(self) -> None:
        self._run("clear", CLEAR, self._meta, [self._prefix])

    def info(self) -> dict[str, Any]:
        entries, size, _hits, _misses = (int(x) for x in self._run("info", INFO, self._meta, []))
        return {"entries": entries, "size_bytes": size}

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # -- pieces -----------------------------------------------------------------------------------

    def _run(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        import redis

        try:
            return self._script(name, source)(keys=list(keys), args=list(args))
        except redis.RedisError as exc:
            self._down_until = self._clock() + self.retry_s
            raise ConnectionError(f"Redis at {self.location}: {redact(str(exc))}") from None

    def _script(self, name: str, source: str) -> Any:
        import redis

        if self._clock() < self._down_until:
            raise ConnectionError(f"Redis at {self.location} is unreachable (tried again within {self.retry_s:g}s)")
        with self._lock:
            if self._client is None:
                self._client = redis.Redis.from_url(self.url, socket_timeout=self.timeout_s,
                                                    socket_connect_timeout=self.timeout_s)
            script = self._scripts.get(name)
            if script is None:
                script = self._scripts[name] = self._client.register_script(source)
        return script
