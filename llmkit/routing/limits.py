"""Waiting, not failing: per-provider concurrency caps and rate limits, served in priority order.

- ``PriorityGate``: a semaphore whose waiters are served by ``(priority, arrival)``: lower priority
  numbers first, first come first served within a priority.
- ``Throttle``: a provider's request-rate and tokens-per-minute limits (aiolimiter leaky buckets) plus
  server-requested pauses (``retry-after``, rate-limit headers at zero). Waiters pass one at a time, in
  priority order, so a large token request is never starved by small ones (aiolimiter alone serves the
  smallest amount first), and a request asked for "5/second" never sees six starts in one second:
  the bucket holds ``burst`` requests (default 1), so requests start evenly spaced.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

from .._config import RateLimit

_arrivals = itertools.count()


class PriorityGate:
    """At most ``capacity`` holders; waiters wake in (priority, arrival) order."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    async def acquire(self, priority: int = 0) -> None:
        if self.in_use < self.capacity and not self._waiters:
            self.in_use += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(_arrivals), future)
        heapq.heappush(self._waiters, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # we were handed the slot just as we were cancelled: pass it on
            elif entry in self._waiters:  # (release() may have dropped it already)
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            if future.done():  # a waiter cancelled but not yet resumed: it is no longer waiting
                continue
            future.set_result(None)  # the slot moves straight to the next waiter
            return
        self.in_use -= 1

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Throttle:
    """One provider's rate limits. ``acquire`` waits (in priority order) and returns the seconds waited."""

    def __init__(self, rate: RateLimit | None, tokens_per_minute: int | None,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.rate = rate
        self._sleep = sleep or asyncio.sleep
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        self._requests = (AsyncLimiter(rate.burst, rate.period_s * rate.burst / rate.count)
                          if rate is not None else None)
        self._tokens = AsyncLimiter(tokens_per_minute, 60.0) if tokens_per_minute else None
        self._turn = PriorityGate(1)
        self.paused_until = 0.0

    @property
    def active(self) -> bool:
        return self._requests is not None or self._tokens is not None or self.paused_until > self._clock()

    @property
    def waiting(self) -> int:
        return self._turn.waiting

    def pause(self, seconds: float) -> None:
        """A server asked us to back off: nobody starts on this provider for ``seconds``."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    async def acquire(self, priority: int = 0, tokens: int = 0) -> float:
        if not self.active:
            return 0.0
        start = self._clock()
        await self._turn.acquire(priority)
        try:
            while (delay := self.paused_until - self._clock()) > 0:
                await self._sleep(delay)
            if self._requests is not None:
                await self._requests.acquire()
            if self._tokens is not None and tokens > 0:
                await self._tokens.acquire(min(tokens, self._tokens.max_rate))
        finally:
            self._turn.release()
        return self._clock() - start

    def correct(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Charge the token bucket for tokens used beyond the estimate (there is no refund)."""
        limiter = self._tokens
        extra = actual_tokens - estimated_tokens
        if limiter is None or extra <= 0:
            return
        # aiolimiter has no public "charge without waiting"; its level is the documented bucket state.
        limiter._leak()
        limiter._level = min(limiter.max_rate, limiter._level + extra)
