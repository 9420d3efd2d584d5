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

import itertools
import uuid
from collections.abc import Awaitable
from typing import Any, Protocol

from .._config import RateLimit
from .link import RedisLink

_members = itertools.count()

#: Extra hold of the main request window: 5% of its period, at most 100 ms.
WINDOW_MARGIN = (0.05, 0.1)

ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n, force, member = tonumber(ARGV[1]), ARGV[2] == '1', ARGV[3]
local breaker, due = nil, false
if #KEYS > 2 * n then
  local h = redis.call('HMGET', KEYS[2 * n + 1], 'state', 'fails', 'opened_at')
  local state, fails, opened = h[1] or 'closed', tonumber(h[2] or '0'), tonumber(h[3] or '0')
  breaker = {state, fails, string.format('%.0f', opened), string.format('%.0f', now), 0}
  local b = 5 * n + 4
  if state == 'open' and now < opened + tonumber(ARGV[b]) then
    return {0, unpack(breaker)}  -- the breaker refuses this call: take no slot for it
  end
  due = state ~= 'closed'
  if due and redis.call('EXISTS', KEYS[2 * n + 2]) == 1 then
    return {0, unpack(breaker)}  -- another client runs the half-open probe
  end
end
local wait, used = 0, {}
local function amount_of(m) return tonumber(string.match(m, ':([^:]*)$')) end
for i = 1, n do
  local zkey, tkey = KEYS[2 * i - 1], KEYS[2 * i]
  local a = 5 * i - 1
  local cap, period, amount = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local weighted = ARGV[a + 4] == '1'
  local total
  if weighted then  -- tokens: a running total beside the log
    local old = redis.call('ZRANGEBYSCORE', zkey, '-inf', now - period)
    total = tonumber(redis.call('GET', tkey) or '0')
    for _, m in ipairs(old) do total = total - amount_of(m) end
    if #old > 0 then
      redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - period)
      if redis.call('ZCARD', zkey) == 0 then total = 0 end
    end
  else  -- requests: one entry each, the log's size is the count
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now - period)
    total = redis.call('ZCARD', zkey)
  end
  used[i] = total
  local need = total + amount - cap
  if amount > 0 and not force and need > 1e-9 * cap then
    local w = period
    if weighted then
      local entries = redis.call('ZRANGE', zkey, 0, -1, 'WITHSCORES')
      local freed = 0
      for j = 1, #entries, 2 do
        freed = freed + amount_of(entries[j])
        if freed >= need then w = tonumber(entries[j + 1]) + period - now; break end
      end
    else
      local e = redis.call('ZRANGE', zkey, need - 1, need - 1, 'WITHSCORES')
      if #e > 0 then w = tonumber(e[2]) + period - now end
    end
    if w > wait then wait = w end
  end
end
if wait > 0 then
  if breaker then return {math.max(1, math.ceil(wait)), unpack(breaker)} end
  return {math.max(1, math.ceil(wait))}
end
for i = 1, n do
  local a = 5 * i - 1
  local period, amount, slack = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if amount > 0 then
    local zkey, at = KEYS[2 * i - 1], now
    if slack > 0 then  -- a spacing window keeps its cadence when this start came up to `slack` late
      local last = redis.call('ZRANGE', zkey, -1, -1, 'WITHSCORES')
      if #last > 0 then at = math.min(now, math.max(now - slack, tonumber(last[2]) + period)) end
    end
    local ttl = math.ceil(period / 1000) + 1000
    redis.call('ZADD', zkey, at, member .. ':' .. ARGV[a + 2])
    redis.call('PEXPIRE', zkey, ttl)
    if ARGV[a + 4] == '1' then redis.call('SET', KEYS[2 * i], tostring(used[i] + amount), 'PX', ttl) end
  end
end
if breaker and due then
  local b = 5 * n + 4
  redis.call('SET', KEYS[2 * n + 2], ARGV[b + 1], 'PX', ARGV[b + 2])
  breaker[5] = 1
  if breaker[1] == 'open' then
    breaker[1] = 'half_open'
    redis.call('HSET', KEYS[2 * n + 1], 'state', 'half_open')
  end
end
if breaker then return {0, unpack(breaker)} end
return {0}
"""


class LocalFallback(Protocol):
    """The provider's own limits (``routing.limits.LocalLimits``), used while Redis is away."""

    def admit(self, tokens: int, now: float) -> float | Awaitable[float]: ...

    def charge_tokens(self, tokens: int, now: float) -> None: ...


class PrefetchingBreaker(Protocol):
    """A shared breaker whose state the admit script reads (and whose probe it claims) in the same trip."""

    keys: list[str]

    def new_token(self) -> str: ...

    def probe_args(self, token: str) -> list[Any]: ...

    def prefetched(self, result: Any, token: str) -> None: ...


class SharedLimits:
    """A provider's request and token windows in Redis, under ``<namespace>:limits:{<provider>}``."""

    def __init__(self, provider: str, rate: RateLimit | None, tokens_per_minute: int | None, link: RedisLink,
                 fallback: LocalFallback | None) -> None:
        self.provider = provider
        self._link = link
        self._fallback = fallback
        self._owner = uuid.uuid4().hex[:12]
        base = link.key("limits", "{" + provider + "}")
        # (key, capacity, period in microseconds, slack in microseconds)
        self._requests: list[tuple[str, int, int, int]] = []
        if rate is not None:
            period = rate.period_s + min(WINDOW_MARGIN[0] * rate.period_s, WINDOW_MARGIN[1])
            self._requests.append((f"{base}:req:{rate.count}/{rate.period_s:g}", rate.count, round(period * 1e6), 0))
            if rate.burst < rate.count:
                spacing = round(period * rate.burst / rate.count * 1e6)
                self._requests.append((f"{base}:burst:{rate.burst}/{rate.period_s:g}/{rate.count}", rate.burst,
                                       spacing, spacing // 2 if rate.burst == 1 else 0))
        self._tokens = ((f"{base}:tokens:{tokens_per_minute}", tokens_per_minute, 60_000_000, 0)
                        if tokens_per_minute else None)
        self.breaker: PrefetchingBreaker | None = None  # set when the provider's breaker is shared too

    def _call(self, tokens: int, requests: bool, force: bool, token: str | None = None
              ) -> tuple[list[str], list[Any]]:
        windows = [(key, cap, period, 1, slack, "0") for key, cap, period, slack in self._requests] if requests else []
        if self._tokens is not None and tokens > 0:
            key, cap, period, slack = self._tokens
            windows.append((key, cap, period, min(tokens, cap), slack, "1"))
        keys: list[str] = []
        args: list[Any] = [len(windows), "1" if force else "0", token or f"{self._owner}:{next(_members)}"]
        for key, cap, period, amount, slack, weighted in windows:
            keys += [key, key + ":total"]
            args += [cap, period, amount, slack, weighted]
        if token is not None and self.breaker is not None:
            keys += self.breaker.keys
            args += self.breaker.probe_args(token)
        return keys, args

    def admit(self, tokens: int, now: float) -> float | Awaitable[float]:
        """0.0 when admitted (one request and ``tokens`` taken from every window), else seconds to wait."""
        if not self._link.available:
            return self._local_admit(tokens, now)
        return self._admit(tokens, now)

    async def _admit(self, tokens: int, now: float) -> float:
        breaker = self.breaker
        token = breaker.new_token() if breaker is not None else None  # also names this start in the logs
        keys, args = self._call(tokens, True, False, token)
        result = await self._link.run("limits.admit", ADMIT, keys, args)
        if result is None:
            local = self._local_admit(tokens, now)
            return local if isinstance(local, (int, float)) else await local
        if breaker is not None and token is not None and len(result) > 1:
            breaker.prefetched(result[1:], token)  # the breaker's state came along: its sync() is free
        return int(result[0]) / 1e6

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
