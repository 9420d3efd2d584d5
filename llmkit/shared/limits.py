"""Rate limits shared through Redis: the same rolling windows as ``routing.limits.LocalLimits``, one
log per window in Redis, checked and taken by one Lua script (one round trip, atomic across every
client on the same keys).

``SharedLimits`` has the ``Limits`` shape the provider's ``Throttle`` calls: ``admit`` answers 0.0
(admitted) or the seconds to wait, so callers still *wait* for a slot, in priority order within their
process (the throttle's gate), while the slots themselves are counted cluster-wide. Time is Redis's
own (``TIME``), so processes and machines agree on it. When Redis is away the provider's local limits
answer instead (see ``link``).

Each window's log is a sorted set of ``<seq>:<amount>`` scored by the admission time in microseconds,
with its running total beside it. The main request window is kept ``WINDOW_MARGIN`` longer than its
period, so the jitter between an admission and the provider seeing the request cannot put one more
request into a window the provider measures.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from .._config import RateLimit
from .link import RedisLink

#: Extra hold of the main request window: 5% of its period, at most 100 ms.
WINDOW_MARGIN = (0.05, 0.1)

ADMIT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, force = tonumber(ARGV[1]), ARGV[2] == '1'
local wait, used = 0, {}
local function amount_of(member) return tonumber(string.match(member, ':(.*)$')) end
for i = 1, n do
  local zkey, tkey = KEYS[2 * i - 1], KEYS[2 * i]
  local cap, period, amount = tonumber(ARGV[3 * i]), tonumber(ARGV[3 * i + 1]), tonumber(ARGV[3 * i + 2])
  local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - period)
  local total = tonumber(redis.call('GET', tkey) or '0')
  for _, m in ipairs(old) do total = total - amount_of(m) end
  if #old > 0 then redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - period) end
  if redis.call('ZCARD', zkey) == 0 then total = 0 end
  used[i] = total
  local need = total + amount - cap
  if amount > 0 and not force and need > 1e-9 * cap then
    local w = period
    local entries = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
    local freed = 0
    for j = 1, #entries, 2 do
      freed = freed + amount_of(entries[j])
      if freed >= need then w = tonumber(entries[j + 1]) + period - now; break end
    end
    if w > wait then wait = w end
  end
end
if wait > 0 then return math.max(1, math.ceil(wait)) end
local seq = redis.call('INCR', KEYS[2 * n + 1])
for i = 1, n do
  local amount, period = tonumber(ARGV[3 * i + 2]), tonumber(ARGV[3 * i + 1])
  local ttl = math.ceil(period / 1000) + 1000
  if amount > 0 then
    redis.call('ZADD', KEYS[2 * i - 1], now, seq .. ':' .. ARGV[3 * i + 2])
    redis.call('PEXPIRE', KEYS[2 * i - 1], ttl)
    redis.call('SET', KEYS[2 * i], tostring(used[i] + amount), 'PX', ttl)
  end
end
redis.call('PEXPIRE', KEYS[2 * n + 1], 86400000)
return 0
"""


class LocalFallback(Protocol):
    """The provider's own limits (``routing.limits.LocalLimits``), used while Redis is away."""

    def admit(self, tokens: int, now: float) -> float | Awaitable[float]: ...

    def charge_tokens(self, tokens: int, now: float) -> None: ...


class SharedLimits:
    """A provider's request and token windows in Redis, under ``<namespace>:limits:{<provider>}``."""

    def __init__(self, provider: str, rate: RateLimit | None, tokens_per_minute: int | None, link: RedisLink,
                 fallback: LocalFallback | None) -> None:
        self.provider = provider
        self._link = link
        self._fallback = fallback
        base = link.key("limits", "{" + provider + "}")
        self._requests: list[tuple[str, int, int]] = []  # (key, capacity, period in microseconds)
        if rate is not None:
            margin = min(WINDOW_MARGIN[0] * rate.period_s, WINDOW_MARGIN[1])
            self._requests.append((f"{base}:req:{rate.count}/{rate.period_s:g}",
                                   rate.count, round((rate.period_s + margin) * 1e6)))
            if rate.burst < rate.count:
                self._requests.append((f"{base}:burst:{rate.burst}/{rate.period_s:g}/{rate.count}",
                                       rate.burst, round(rate.period_s * rate.burst / rate.count * 1e6)))
        self._tokens = ((f"{base}:tokens:{tokens_per_minute}", tokens_per_minute, 60_000_000)
                        if tokens_per_minute else None)
        self._seq = f"{base}:seq"

    def _call(self, tokens: int, requests: bool, force: bool) -> tuple[list[str], list[Any]]:
        windows = [(key, cap, period, 1) for key, cap, period in self._requests] if requests else []
        if self._tokens is not None and tokens > 0:
            key, cap, period = self._tokens
            windows.append((key, cap, period, min(tokens, cap)))
        keys: list[str] = []
        args: list[Any] = [len(windows), "1" if force else "0"]
        for key, cap, period, amount in windows:
            keys += [key, key + ":total"]
            args += [cap, period, amount]
        keys.append(self._seq)
        return keys, args

    def admit(self, tokens: int, now: float) -> float | Awaitable[float]:
        """0.0 when admitted (one request and ``tokens`` taken from every window), else seconds to wait."""
        if not self._link.available:
            return self._local_admit(tokens, now)
        return self._admit(tokens, now)

    async def _admit(self, tokens: int, now: float) -> float:
        keys, args = self._call(tokens, True, False)
        wait = await self._link.run("limits.admit", ADMIT, keys, args)
        if wait is None:
            local = self._local_admit(tokens, now)
            return local if isinstance(local, (int, float)) else await local
        return int(wait) / 1e6

    def _local_admit(self, tokens: int, now: float) -> float | Awaitable[float]:
        return 0.0 if self._fallback is None else self._fallback.admit(tokens, now)

    def charge_tokens(self, tokens: int, now: float) -> None:
        """Count ``tokens`` used beyond the estimate (in the background; no waiting, no refund)."""
        if self._tokens is None or tokens <= 0:
            return
        if not self._link.available:
            if self._fallback is not None:
                self._fallback.charge_tokens(tokens, now)
            return
        keys, args = self._call(tokens, False, True)
        self._link.spawn(self._link.run("limits.admit", ADMIT, keys, args))
