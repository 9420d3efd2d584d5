"""Provider health: periodic active checks, passive stats from real traffic, one row per provider.

``HealthMonitor`` owns the health picture. Active: a background task calls every provider's
``health_check()`` each ``interval`` seconds (with a timeout), logs each result as a ``health_check``
event and feeds it to the provider's breaker (a pass moves an open breaker to half-open, so the next
real request is the probe that decides; a failure counts). Passive: the router reports each finished
request with ``record_request``. Both are kept over a rolling ``window_s`` of the injected ``clock``,
in bounded deques: request counts in time buckets, at most ``MAX_SAMPLES`` recent latencies, so
``rows()`` stays cheap at any request rate.

``rows()`` is read from other threads (the dashboard); everything it reads is behind one lock.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._errors import ProviderConnectionError, ProviderError, ProviderTimeoutError
from .._events import EventLog
from .._secrets import redact
from ..providers.base import Provider
from .breaker import Breaker

MAX_SAMPLES = 2048          # latencies kept per provider for the percentiles
MAX_CHECKS = 4096           # check results kept per provider
_BUCKETS = 256              # request-count buckets per window
UNHEALTHY_ERROR_RATE = 0.5  # with at least MIN_REQUESTS in the window
MIN_REQUESTS = 5


class _Stats:
    """One provider's rolling window. Mutated only under the monitor's lock."""

    __slots__ = ("buckets", "checks", "last_check", "last_check_ok", "last_error", "latencies")

    def __init__(self) -> None:
        self.checks: deque[tuple[float, bool]] = deque(maxlen=MAX_CHECKS)     # (clock, ok)
        self.buckets: deque[list[int]] = deque()                              # [bucket, requests, errors]
        self.latencies: deque[tuple[float, float]] = deque(maxlen=MAX_SAMPLES)  # (clock, seconds) of ok calls
        self.last_check: float | None = None  # wall clock
        self.last_check_ok: bool | None = None
        self.last_error: str | None = None

    def prune(self, now: float, window_s: float, width: float) -> None:
        horizon = now - window_s
        while self.checks and self.checks[0][0] < horizon:
            self.checks.popleft()
        while self.latencies and self.latencies[0][0] < horizon:
            self.latencies.popleft()
        oldest = math.floor(horizon / width)
        while self.buckets and self.buckets[0][0] < oldest:
            self.buckets.popleft()


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of already sorted values; None when empty."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


class HealthMonitor:
    """Active health checks plus passive request stats for a set of providers."""

    def __init__(self, providers: Mapping[str, Provider], breakers: Mapping[str, Breaker], events: EventLog, *,
                 interval: float | None = 30.0, clock: Callable[[], float] = time.monotonic,
                 wallclock: Callable[[], float] = time.time, window_s: float = 300.0, check_timeout: float = 5.0,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"health check interval must be positive or None, got {interval!r}")
        if window_s <= 0:
            raise ValueError(f"health window must be positive, got {window_s!r}")
        self._providers = providers
        self._breakers = breakers
        self._events = events
        self.interval = interval
        self._clock = clock
        self._wallclock = wallclock
        self.window_s = float(window_s)
        self._width = self.window_s / _BUCKETS
        self.check_timeout = check_timeout
        self._sleep = sleep
        self._lock = threading.Lock()
        self._stats: dict[str, _Stats] = {name: _Stats() for name in providers}
        self._task: asyncio.Task[None] | None = None

    # -- the background task -------------------------------------------------------------------

    def start(self) -> None:
        """Start periodic checks on the running loop (first round at once). No-op without an interval."""
        if self.interval is None or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._run(self.interval), name="llmkit-health")

    async def stop(self) -> None:
        """Cancel the periodic checks and wait for them to end (from any loop)."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        loop = task.get_loop()
        if loop is asyncio.get_running_loop():
            task.cancel()
            await asyncio.wait([task])  # unlike `await task`, a cancellation of stop() itself propagates
        elif not loop.is_closed():
            loop.call_soon_threadsafe(task.cancel)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _run(self, interval: float) -> None:
        while True:
            await self.check()
            await self._sleep(interval)

    # -- active checks -------------------------------------------------------------------------

    async def check(self, provider: str | None = None) -> None:
        """Check every provider (or just ``provider``) now, concurrently."""
        if provider is not None and provider not in self._providers:
            raise KeyError(f"unknown provider {provider!r}; known: {sorted(self._providers)}")
        names = list(self._providers) if provider is None else [provider]
        await asyncio.gather(*(self._check_one(name) for name in names))

    async def _check_one(self, name: str) -> None:
        started = self._clock()
        error: BaseException | None = None
        try:
            async with asyncio.timeout(self.check_timeout):
                await self._providers[name].health_check()
        except TimeoutError:
            error = ProviderTimeoutError(f"health check timed out after {self.check_timeout:g}s", provider=name)
        except ProviderError as exc:
            error = exc
        except Exception as exc:  # a buggy or custom adapter: the check failed; keep only a scrubbed message
            error = ProviderConnectionError(f"health check raised {type(exc).__name__}: {exc}", provider=name)
        now = self._clock()
        ok = error is None
        described = None if error is None else redact(f"{type(error).__name__}: {error}")
        with self._lock:
            stats = self._stats_for(name)
            stats.checks.append((now, ok))
            stats.last_check = self._wallclock()
            stats.last_check_ok = ok
            stats.last_error = described
        self._events.emit("health_check", name, ok=ok, error=None if error is None else type(error).__name__,
                          error_message=None if error is None else redact(str(error)), duration_s=now - started)
        breaker = self._breakers.get(name)
        if breaker is not None:
            breaker.record_check(ok, error)

    # -- passive stats -------------------------------------------------------------------------

    def record_request(self, provider: str, ok: bool, latency_s: float) -> None:
        """One finished call on ``provider`` (latency counts toward the percentiles when ``ok``)."""
        now = self._clock()
        bucket = math.floor(now / self._width)
        with self._lock:
            stats = self._stats_for(provider)
            buckets = stats.buckets
            if buckets and buckets[-1][0] == bucket:
                last = buckets[-1]
            else:
                last = [bucket, 0, 0]
                buckets.append(last)
                stats.prune(now, self.window_s, self._width)
            last[1] += 1
            if not ok:
                last[2] += 1
            else:
                stats.latencies.append((now, latency_s))

    def _stats_for(self, name: str) -> _Stats:
        stats = self._stats.get(name)
        if stats is None:
            stats = self._stats[name] = _Stats()
        return stats

    # -- reading -------------------------------------------------------------------------------

    def rows(self) -> list[dict[str, Any]]:
        """One dict per provider, in configuration order (the columns of ``client.health()``)."""
        return [self._row(name) for name in self._providers]

    def _row(self, name: str) -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            stats = self._stats_for(name)
            stats.prune(now, self.window_s, self._width)
            checks = [ok for _, ok in stats.checks]
            requests = sum(b[1] for b in stats.buckets)
            errors = sum(b[2] for b in stats.buckets)
            latencies = sorted(latency for _, latency in stats.latencies)
            last_check, last_ok, last_error = stats.last_check, stats.last_check_ok, stats.last_error
        breaker = self._breakers.get(name)
        state = breaker.state if breaker is not None else "closed"
        error_rate = errors / requests if requests else None
        healthy = (state != "open" and last_ok is not False
                   and (requests < MIN_REQUESTS or (error_rate or 0.0) < UNHEALTHY_ERROR_RATE))
        return {
            "provider": name,
            "adapter": self._providers[name].adapter,
            "breaker_state": state,
            "healthy": healthy,
            "uptime_pct": 100.0 * sum(checks) / len(checks) if checks else None,
            "last_check": last_check,
            "last_check_ok": last_ok,
            "last_error": last_error,
            "requests": requests,
            "errors": errors,
            "error_rate": error_rate,
            "latency_p50_s": percentile(latencies, 0.50),
            "latency_p95_s": percentile(latencies, 0.95),
            "fail_count": breaker.fail_count if breaker is not None else 0,
            "retry_in_s": breaker.retry_in() if breaker is not None else None,
        }
