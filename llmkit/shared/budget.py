"""The spending budget shared through Redis: spend per period and in-flight reservations kept in Redis,
so every client on the same namespace stays under one limit, across processes and machines.

``SharedBudget`` wraps the local budget (``routing.budget.Budget``, which keeps checking this machine's
ledger) and adds the shared check:

- ``hold(token)`` (awaited before a request is sent) is the atomic reserve: one script sums the period's
  settled spend and every live reservation, and adds this one only if the total stays within the limit,
  else ``BudgetExceededError``. Concurrent clients cannot both pass on the same last dollar, so the
  shared budget is overspent by at most one request's estimate error.
- ``release(token)`` (after the request's record is written) settles: one script drops the reservation
  and adds the request's real cost (from the ``request`` event) to the period's spend.

``refresh()`` reads the shared figures (``client.budget_status()`` calls it first).
Reservations carry an expiry, so a process that dies mid-request frees its hold. A settle that cannot
reach Redis is kept and added to the next one. While Redis is away the local budget decides alone.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from .._errors import BudgetExceededError
from .._events import Event, EventLog
from .link import RedisLink

#: Seconds a reservation counts before it is presumed abandoned (its process died).
HOLD_TTL_S = 900.0

RESERVE = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local amount, expires = string.match(all[i + 1], '^(.-):(.*)$')
  if tonumber(expires) < now then redis.call('HDEL', KEYS[2], all[i])
  elseif all[i] ~= ARGV[1] then held = held + tonumber(amount) end
end
local amount = tonumber(ARGV[2])
if ARGV[4] == '1' and spent + held + amount > tonumber(ARGV[3]) then
  return {0, tostring(spent), tostring(held)}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2] .. ':' .. tostring(now + tonumber(ARGV[5])))
redis.call('EXPIRE', KEYS[2], math.ceil(tonumber(ARGV[5])) + 60)
return {1, tostring(spent), tostring(held + amount)}
"""

SETTLE = """
if redis.replicate_commands then redis.replicate_commands() end
if ARGV[1] ~= '' then redis.call('HDEL', KEYS[2], ARGV[1]) end
local spent = tonumber(redis.call('INCRBYFLOAT', KEYS[1], ARGV[2]))
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
local held = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do held = held + tonumber(string.match(all[i + 1], '^(.-):')) end
return {1, tostring(spent), tostring(held)}
"""

READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local held = 0
local all = redis.call('HGETALL', KEYS[2])
for i = 1, #all, 2 do
  local amount, expires = string.match(all[i + 1], '^(.-):(.*)$')
  if tonumber(expires) >= now then held = held + tonumber(amount) end
end
return {tostring(spent), tostring(held)}
"""


class LocalBudget(Protocol):
    """The local budget's calls (``routing.budget.Budget``)."""

    limit_usd: float
    period: str

    def reserve(self, estimate_usd: float | None) -> Any: ...

    def resize(self, token: Any, estimate_usd: float | None) -> None: ...

    def release(self, token: object) -> None: ...

    def status(self) -> dict[str, Any]: ...


def period_id(period: str, now: float) -> tuple[str, int]:
    """The key part naming the UTC period containing ``now``, and seconds to keep its total (0: always)."""
    if period == "total":
        return "total", 0
    day = datetime.fromtimestamp(now, UTC)
    return (day.strftime("%Y-%m-%d"), 3 * 86400) if period == "day" else (day.strftime("%Y-%m"), 40 * 86400)


class SharedBudget:
    """``Budget``'s calls plus ``hold``, with spend and reservations in Redis under ``<namespace>:budget``."""

    def __init__(self, local: LocalBudget, link: RedisLink, events: EventLog,
                 wallclock: Callable[[], float] = time.time) -> None:
        self.local = local
        self.limit_usd = local.limit_usd
        self.period = local.period
        self._link = link
        self._wallclock = wallclock
        self._owner = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._unsettled = 0.0           # costs of finished requests not yet added in Redis
        self._held: dict[int, float] = {}  # reservation id -> amount held in Redis
        self.spent_usd: float | None = None     # the shared figures, as of the last script
        self.reserved_usd: float | None = None
        events.subscribe(self._on_event)

    def _keys(self) -> tuple[list[str], int]:
        pid, ttl = period_id(self.period, self._wallclock())
        base = self._link.key("budget", self.period, pid)
        return [base + ":spent", base + ":held"], ttl

    def _on_event(self, event: Event) -> None:
        if event.kind == "request":
            cost = event.detail.get("cost_usd")
            if isinstance(cost, (int, float)) and math.isfinite(cost) and cost > 0:
                with self._lock:
                    self._unsettled += float(cost)

    # -- the local calls, plus the shared view -------------------------------------------------

    def reserve(self, estimate_usd: float | None) -> Any:
        """The local check (this machine's ledger); ``hold`` then makes it shared."""
        return self.local.reserve(estimate_usd)

    async def hold(self, token: Any) -> None:
        """The atomic shared reserve of ``token``'s amount, or ``BudgetExceededError`` (nothing held)."""
        amount = float(getattr(token, "amount_usd", 0.0))
        keys, _ = self._keys()
        args = [self._id(token), repr(amount), repr(self.limit_usd), "1", HOLD_TTL_S]
        result = await self._link.run("budget.reserve", RESERVE, keys, args)
        if result is None:
            return  # Redis away: the local check stands
        ok, spent, held = int(result[0]), float(result[1]), float(result[2])
        self.spent_usd, self.reserved_usd = spent, held
        if not ok:
            raise BudgetExceededError(
                f"shared budget exceeded: spent ${spent:.6f} + in flight ${held:.6f} + this request "
                f"${amount:.6f} > limit ${self.limit_usd:.6f} ({self.period}, all clients on "
                f"namespace {self._link.namespace!r})",
                spent_usd=spent, budget_usd=self.limit_usd, estimate_usd=amount)
        self._held[token.id] = amount

    def resize(self, token: Any, estimate_usd: float | None) -> None:
        """Move a reservation to a new estimate: checked locally and against the last shared figures."""
        old = float(getattr(token, "amount_usd", 0.0))
        self.local.resize(token, estimate_usd)
        new = float(token.amount_usd)
        if self.spent_usd is not None and token.id in self._held:
            total = self.spent_usd + (self.reserved_usd or 0.0) - old + new
            if new > old and total > self.limit_usd:
                self.local.resize(token, old)
                raise BudgetExceededError(
                    f"shared budget exceeded: spent ${self.spent_usd:.6f} + in flight "
                    f"${self.reserved_usd or 0.0:.6f} + ${new - old:.6f} more > limit ${self.limit_usd:.6f}",
                    spent_usd=self.spent_usd, budget_usd=self.limit_usd, estimate_usd=new)
            keys, _ = self._keys()
            self._held[token.id] = new
            self._link.spawn(self._link.run("budget.reserve", RESERVE, keys,
                                            [self._id(token), repr(new), repr(self.limit_usd), "0", HOLD_TTL_S]))

    def release(self, token: object) -> None:
        """Drop the reservation and settle the finished requests' cost into the shared spend."""
        self.local.release(token)
        held = self._held.pop(getattr(token, "id", -1), None)
        with self._lock:
            cost, self._unsettled = self._unsettled, 0.0
        if held is None and cost == 0.0:
            return
        keys, ttl = self._keys()
        args = [self._id(token) if held is not None else "", repr(cost), ttl]

        async def settle() -> None:
            result = await self._link.run("budget.settle", SETTLE, keys, args)
            if result is None:
                with self._lock:
                    self._unsettled += cost  # added by the next settle that reaches Redis
            else:
                self.spent_usd, self.reserved_usd = float(result[1]), float(result[2])

        self._link.spawn(settle())

    async def refresh(self) -> None:
        """Read the period's shared spend and reservations from Redis (for ``budget_status()``: a fresh client
        shows the team's spend before its first call). Redis away: the figures stay as they were."""
        keys, _ = self._keys()
        result = await self._link.run("budget.read", READ, keys, [])
        if result is not None:
            self.spent_usd, self.reserved_usd = float(result[0]), float(result[1])

    def status(self) -> dict[str, Any]:
        status = dict(self.local.status())
        if self._link.sharing and self.spent_usd is not None:
            spent = max(status["spent_usd"], self.spent_usd)
            reserved = self.reserved_usd or 0.0
            status.update(spent_usd=spent, reserved_usd=reserved,
                          remaining_usd=max(0.0, self.limit_usd - spent - reserved),
                          used_pct=(100.0 * spent / self.limit_usd) if self.limit_usd > 0 else 0.0)
        return status

    def _id(self, token: Any) -> str:
        return f"{self._owner}:{token.id}"
