"""Circuit breakers: pybreaker's state machine, driven from asyncio, with an injectable clock.

pybreaker has no native asyncio (see the toolbox notes), so the I/O happens outside it: ``admit()``
decides before a call (closed: go; open: ``CircuitOpenError``; open past ``reset_timeout``, or after a
passing health check: one half-open probe), and ``report()`` feeds the outcome through pybreaker, which
counts consecutive failures, trips, closes after a good probe and notifies listeners. Cancellation is
never reported, so a cancelled call neither trips nor closes a breaker. Only one half-open probe is in
flight at a time.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

if "pybreaker" in sys.modules or "redis" in sys.modules:
    import pybreaker
else:  # pybreaker imports redis when it is installed (~95 ms at the first Client()) for a storage llmkit
    sys.modules["redis"] = None  # type: ignore[assignment]  # never uses (llmkit.shared has its own): skip it
    try:
        import pybreaker
    finally:
        if sys.modules.get("redis", False) is None:
            del sys.modules["redis"]

from .._config import BreakerConfig
from .._errors import CircuitOpenError, ProviderConnectionError, counts_against_breaker
from .._events import EventLog

State = Literal["closed", "open", "half_open"]
_NAMES: dict[str, State] = {pybreaker.STATE_CLOSED: "closed", pybreaker.STATE_OPEN: "open",
                            pybreaker.STATE_HALF_OPEN: "half_open"}


class _ClockStorage(pybreaker.CircuitMemoryStorage):
    """Memory storage whose ``opened_at`` follows our clock, so a fake clock drives ``reset_timeout``."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self.opened_clock: float | None = None

    @property
    def opened_at(self) -> datetime | None:
        if self.opened_clock is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self._clock() - self.opened_clock)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        self.opened_clock = self._clock()


class _Listener(pybreaker.CircuitBreakerListener):
    def __init__(self, owner: Breaker) -> None:
        self.owner = owner

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = _NAMES.get(old_state.name, old_state.name) if old_state is not None else None
        new = _NAMES.get(new_state.name, new_state.name)
        if old != new:
            self.owner._transitioned(old, new)


class Breaker:
    """One provider's circuit breaker."""

    #: Whether the router must await ``sync()`` before ``admit()`` (a shared breaker reads Redis there).
    syncs = False

    def __init__(self, provider: str, config: BreakerConfig, clock: Callable[[], float],
                 events: EventLog | None = None) -> None:
        self.provider = provider
        self.config = config
        self._clock = clock
        self._events = events
        self._storage = _ClockStorage(clock)
        self._cb = pybreaker.CircuitBreaker(
            fail_max=config.fail_max,
            reset_timeout=config.reset_timeout,
            exclude=[lambda exc: not counts_against_breaker(exc)],
            state_storage=self._storage,
            listeners=[_Listener(self)],
            throw_new_error_on_trip=False,
            name=provider,
        )
        self._probing = False
        self._probe_lock = threading.Lock()
        self.transitions: list[tuple[float, State | None, State]] = []

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The state as a user would see it: an open breaker past its timeout shows as half-open."""
        raw = _NAMES[self._cb.current_state]
        if raw == "open" and self.retry_in() == 0.0:
            return "half_open"
        return raw

    def retry_in(self) -> float | None:
        """Seconds until an open breaker lets a probe through (None when not open)."""
        if _NAMES[self._cb.current_state] != "open" or self._storage.opened_clock is None:
            return None
        return max(0.0, self.config.reset_timeout - (self._clock() - self._storage.opened_clock))

    @property
    def fail_count(self) -> int:
        return int(self._cb.fail_counter)

    # -- driving -------------------------------------------------------------------------------

    async def sync(self) -> None:
        """Awaited by the router just before ``admit``: a shared breaker (``llmkit.shared``) reads its state
        here; a local one has nothing to do."""

    def admit(self) -> bool:
        """Before a call: raise ``CircuitOpenError``, or return True if this call is the half-open probe."""
        if self._cb.current_state == pybreaker.STATE_CLOSED:
            return False
        with self._probe_lock:  # one probe, even with requests on several loops (threads) at once
            raw = _NAMES[self._cb.current_state]
            if raw == "closed":
                return False
            if raw == "open":
                wait = self.retry_in()
                if wait is None or wait > 0:
                    raise CircuitOpenError(self.provider, wait)
            if self._probing:
                raise CircuitOpenError(self.provider, 0.0)
            if raw == "open":
                self._cb.half_open()
            self._probing = True
            return True

    def report(self, exc: BaseException | None, probe: bool = False) -> None:
        """After a call: feed the outcome (None for success) through pybreaker."""
        if probe:  # the probe's outcome moves the state before another call may probe (calls on other threads)
            with self._probe_lock:
                try:
                    self._feed(exc)
                finally:
                    self._probing = False
            return
        if exc is None and self._storage.counter == 0 and self._cb.current_state == "closed":
            return  # a success while closed with no failure counted: pybreaker would change nothing (~4 µs saved)
        self._feed(exc)

    def _feed(self, exc: BaseException | None) -> None:
        def outcome() -> None:
            if exc is not None:
                raise exc

        try:
            self._cb.call(outcome)
        except pybreaker.CircuitBreakerError:
            pass  # it opened while this call was in flight: nothing to count
        except BaseException as err:
            if err is not exc:
                raise

    def release_probe(self) -> None:
        """A probe that never reported (cancelled): let the next call probe instead."""
        with self._probe_lock:
            self._probing = False

    def record_check(self, ok: bool, error: BaseException | None = None) -> None:
        """A health-check result. A pass moves an open breaker to half-open, never to closed: a health
        endpoint answering says nothing about completions, so the next real call is the one probe that
        decides. A failing check counts as a failure while closed."""
        if ok:
            if _NAMES[self._cb.current_state] == "open":
                self._cb.half_open()
            return
        if _NAMES[self._cb.current_state] == "closed":
            self.report(error or ProviderConnectionError("health check failed", provider=self.provider))

    def _transitioned(self, old: State | None, new: State) -> None:
        self.transitions.append((self._clock(), old, new))
        if self._events is not None:
            self._events.emit("breaker", self.provider, old=old, new=new)
