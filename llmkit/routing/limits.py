"""Waiting, not failing: per-provider concurrency caps and rate limits, served in priority order.

- ``PriorityGate``: a semaphore whose waiters are served by ``(priority, arrival)``: lower priority
  numbers first, first come first served within a priority.
- ``Throttle``: a provider's request-rate and tokens-per-minute limits plus server-requested pauses
  (``retry-after``, rate-limit headers at zero). The limits are rolling windows (``SlidingWindow`` in
  ``LocalLimits``, behind the small ``Limits`` interface): "10/minute" never admits an 11th start
  within 60 s of the first, from the very first request (a leaky bucket that starts full, like
  aiolimiter's, lets about twice that through in the first minute). Waiters pass one at a time, in
  priority order, so a large token request is never starved by small ones, and ``burst`` (default 1)
  spaces starts evenly. A server pause longer than the caller's ``max_pause`` is not sat out:
  ``PausedTooLong`` says so.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from .._config import RateLimit
from .._loop import BLOCKED_LOOP, NO_WAIT

_arrivals = itertools.count()


class PriorityGate:
    """At most ``capacity`` holders; waiters wake in (priority, arrival) order.

    Thread-safe: requests of one client may run on several event loops at once (an async caller's own
    loop and llmkit's loop for sync calls), so the count and the waiters are kept under a lock, and a slot
    handed to a waiter on another loop reaches it through that loop (``call_soon_threadsafe``).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.in_use = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._lock = threading.Lock()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def try_acquire(self) -> bool:
        """Take a free place without waiting (what ``acquire`` does first); False when it would wait."""
        with self._lock:
            if self.in_use < self.capacity and not self._waiters:
                self.in_use += 1
                return True
        return False

    async def acquire(self, priority: int = 0) -> None:
        with self._lock:  # (the free-place check and the queueing under one hold: a release cannot fall between)
            if self.in_use < self.capacity and not self._waiters:
                self.in_use += 1
                return
            if NO_WAIT.get():  # its caller blocks the loop of requests that may hold every slot
                raise RuntimeError(BLOCKED_LOOP)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (priority, next(_arrivals), future)
            heapq.heappush(self._waiters, entry)
        try:
            await future
        except asyncio.CancelledError:
            with self._lock:
                handed = future.done() and not future.cancelled()
                if not handed and entry in self._waiters:  # (a release may have taken it: its hand-off passes on)
                    self._waiters.remove(entry)
                    heapq.heapify(self._waiters)
            if handed:
                self.release()  # we were handed the slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                _, _, future = heapq.heappop(self._waiters)
                if not future.done():  # (a waiter cancelled but not yet resumed is no longer waiting)
                    break
            else:
                self.in_use -= 1
                return
        loop = future.get_loop()  # the slot moves straight to the next waiter
        if loop is asyncio._get_running_loop():
            future.set_result(None)
            return
        try:
            loop.call_soon_threadsafe(self._hand, future)
        except RuntimeError:  # its loop has closed: nobody is waiting there any more
            self.release()

    def _hand(self, future: asyncio.Future[None]) -> None:
        """On the waiter's loop: give it the slot, or pass the slot on if it was cancelled meanwhile."""
        if future.done():
            self.release()
        else:
            future.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class SlidingWindow:
    """At most ``capacity`` units admitted in any rolling ``period_s``: a log of (time, amount).

    Exact from the first admission: unlike a leaky bucket that starts full (aiolimiter), it never lets
    through more than ``capacity`` in a window that includes the first burst. An entry stops counting
    once ``period_s`` has passed since it (``time + period_s <= now``): the same test sets the wait, so
    a waiter that sleeps the returned ``delay`` fits.
    """

    __slots__ = ("_log", "_used", "capacity", "period_s")

    def __init__(self, capacity: float, period_s: float) -> None:
        self.capacity = float(capacity)
        self.period_s = float(period_s)
        self._log: deque[tuple[float, float]] = deque()
        self._used = 0.0

    def _expire(self, now: float) -> None:
        log = self._log
        while log and log[0][0] + self.period_s <= now:
            self._used -= log.popleft()[1]
        if not log:
            self._used = 0.0  # no float drift across an idle period

    def delay(self, amount: float, now: float) -> float:
        """Seconds from ``now`` until ``amount`` more fits (0.0: it fits now)."""
        self._expire(now)
        need = self._used + amount - self.capacity
        if need <= 1e-9 * self.capacity:
            return 0.0
        freed = 0.0
        for at, used in self._log:  # the oldest entries leave first
            freed += used
            if freed >= need:
                return at + self.period_s - now
        return self.period_s  # more than the window holds: cannot happen when amount <= capacity

    def charge(self, amount: float, now: float) -> None:
        """Count ``amount`` at ``now``, whether it fits or not."""
        self._expire(now)
        self.take(amount, now)

    def take(self, amount: float, now: float) -> None:
        """Count ``amount`` at ``now`` right after ``delay`` said it fits (expired entries already gone)."""
        self._log.append((now, amount))
        self._used += amount


class Limits(Protocol):
    """The store behind a ``Throttle``'s rate limits: ``admit`` takes one start (and its tokens) from every
    limit at once, or takes nothing and says how long to wait. ``LocalLimits`` keeps them in this process;
    a shared store (e.g. Redis, one script over its windows) implements the same two calls atomically."""

    def admit(self, tokens: int, now: float) -> float | Awaitable[float]:
        """Admit one request estimated at ``tokens`` at ``now`` (0.0), or the seconds to wait first (a shared
        store answers with an awaitable)."""
        ...

    def charge_tokens(self, tokens: int, now: float) -> None:
        """Count ``tokens`` used beyond the estimate, without waiting (there is no refund)."""
        ...


class LocalLimits:
    """A provider's limits in this process. Requests: at most ``count`` starts in any rolling
    ``period_s``, and at most ``burst`` in any ``period_s * burst / count`` (the default burst of 1
    spaces starts evenly). Tokens: at most ``tokens_per_minute`` estimated tokens in any rolling 60 s
    (a request estimated above that takes the whole minute)."""

    def __init__(self, rate: RateLimit | None, tokens_per_minute: int | None) -> None:
        self._requests: list[SlidingWindow] = []
        if rate is not None:
            self._requests.append(SlidingWindow(rate.count, rate.period_s))
            if rate.burst < rate.count:
                self._requests.append(SlidingWindow(rate.burst, rate.period_s * rate.burst / rate.count))
        self._tokens = SlidingWindow(tokens_per_minute, 60.0) if tokens_per_minute else None
        self._lock = threading.Lock()  # requests on several loops (threads) share the windows

    def admit(self, tokens: int, now: float) -> float:
        with self._lock:
            return self._admit(tokens, now)

    def _admit(self, tokens: int, now: float) -> float:
        wait = 0.0
        for window in self._requests:
            wait = max(wait, window.delay(1.0, now))
        bucket = self._tokens if tokens > 0 else None
        amount = 0.0
        if bucket is not None:
            amount = float(min(tokens, bucket.capacity))
            wait = max(wait, bucket.delay(amount, now))
        if wait > 0:
            return wait  # nothing taken
        for window in self._requests:
            window.take(1.0, now)
        if bucket is not None:
            bucket.take(amount, now)
        return 0.0

    def charge_tokens(self, tokens: int, now: float) -> None:
        if self._tokens is not None and tokens > 0:
            with self._lock:
                self._tokens.charge(float(tokens), now)


class PausedTooLong(Exception):
    """The provider asked for a pause longer than the caller will wait; ``remaining_s`` is left of it."""

    def __init__(self, remaining_s: float) -> None:
        super().__init__(f"paused for {remaining_s:.1f}s more")
        self.remaining_s = remaining_s


class Throttle:
    """One provider's rate limits and server pauses. ``acquire`` waits (in priority order) and returns the
    seconds waited; everything runs on the injected ``clock`` and ``sleep``. The limits themselves live
    in ``limits`` (``LocalLimits`` by default; a shared store can be passed in)."""

    def __init__(self, rate: RateLimit | None, tokens_per_minute: int | None,
                 clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]] | None = None,
                 limits: Limits | None = None) -> None:
        self.rate = rate
        self._sleep = sleep or asyncio.sleep
        self.tokens_per_minute = tokens_per_minute
        self._clock = clock
        if limits is None and (rate is not None or tokens_per_minute):
            limits = LocalLimits(rate, tokens_per_minute)
        self.limits = limits
        self._turn = PriorityGate(1)
        self.paused_until = 0.0

    @property
    def active(self) -> bool:
        return self.limits is not None or self.paused_until > self._clock()

    @property
    def waiting(self) -> int:
        return self._turn.waiting

    def pause(self, seconds: float) -> None:
        """A server asked us to back off: nobody starts on this provider for ``seconds``."""
        self.paused_until = max(self.paused_until, self._clock() + seconds)

    def paused_for(self) -> float:
        """Seconds left of a server-requested pause (0.0 when none)."""
        return max(0.0, self.paused_until - self._clock())

    async def acquire(self, priority: int = 0, tokens: int = 0, max_pause: float = math.inf) -> float:
        """Wait for this provider's limits; raise ``PausedTooLong`` instead of sitting out a server pause
        longer than ``max_pause`` seconds."""
        if not self.active:
            return 0.0
        start = self._clock()
        await self._turn.acquire(priority)
        try:
            while True:
                delay = self.paused_until - self._clock()
                if delay > max_pause:
                    raise PausedTooLong(delay)
                if delay <= 0 and self.limits is not None:
                    admitted = self.limits.admit(tokens, self._clock())
                    delay = admitted if isinstance(admitted, (int, float)) else await admitted
                if delay <= 0:
                    break
                await self._sleep(max(delay, 1e-6))  # never a zero sleep: time must move on
        finally:
            self._turn.release()
        return self._clock() - start

    def correct(self, estimated_tokens: int, actual_tokens: int) -> None:
        """Charge the token limit for tokens used beyond the estimate (there is no refund)."""
        extra = actual_tokens - estimated_tokens
        if self.limits is not None and extra > 0:
            self.limits.charge_tokens(extra, self._clock())
