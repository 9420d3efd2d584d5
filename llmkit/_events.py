"""The event log: every attempt, retry, fallback, breaker transition, wait and health check.

A bounded, thread-safe buffer of ``Event``s. The router and the health monitor write; ``events()``,
the health table and the dashboard read (from any thread). ``since(seq)`` returns only what is new.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: The kinds of event, and what their ``detail`` holds.
KINDS = (
    "attempt",          # provider, model, outcome, error, duration_s, retry
    "retry",            # provider, model, error, sleep_s, retry
    "fallback",         # from provider/model to the next candidate, error
    "breaker",          # provider, old, new
    "rate_limit_wait",  # provider, waited_s
    "queue_wait",       # provider, waited_s
    "provider_pause",   # provider, pause_s (a server asked us to back off)
    "health_check",     # provider, ok, error, duration_s
    "request",          # request finished: status, error_type
    "cache_warning",    # the response cache could not be used for a call (a miss instead): message
    "shared_state",     # Redis behind shared state went away ("down": local state decides) or came back ("up")
    "outage_wait",      # model, waited_s, error (every provider was down: waiting for one to come back)
    "validation_retry",  # retry, errors (a structured answer failed validation and is asked again)
)

#: The detail columns ``client.events(kind)`` always has for a kind, even before any such event happened
#: (in the order they are emitted; a detail key not listed here still gets a column when it shows up).
DETAIL_KEYS: dict[str, tuple[str, ...]] = {
    "attempt": ("model", "outcome", "error", "duration_s", "retry"),
    "retry": ("model", "error", "sleep_s", "retry"),
    "fallback": ("model", "to_provider", "to_model", "error"),
    "breaker": ("old", "new", "shared"),
    "rate_limit_wait": ("waited_s",),
    "queue_wait": ("waited_s",),
    "provider_pause": ("pause_s",),
    "health_check": ("ok", "error", "error_message", "duration_s"),
    "request": ("status", "error_type", "cost_usd", "latency_s", "call"),
    "cache_warning": ("message",),
    "shared_state": ("state", "error", "error_message", "retry_s", "resumed"),
    "outage_wait": ("model", "waited_s", "error"),
    "validation_retry": ("retry", "errors"),
}


@dataclass(slots=True)
class Event:
    seq: int
    time: float  # wall clock, seconds since the epoch (UTC)
    kind: str
    provider: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "kind": self.kind, "provider": self.provider,
                "request_id": self.request_id, **self.detail}


#: An event as the buffer keeps it: one flat tuple, ``Event``'s first five fields, then the detail's keys, then
#: its values. A tuple of plain values (strings, numbers, None) leaves the garbage collector's watch at its first
#: collection, so a full buffer (50,000 events) costs the collector nothing; kept as ``Event`` objects (or with
#: a dict or a nested tuple inside) they were traversed by every full collection, ~10 µs a request.
_Kept = tuple[Any, ...]


def _as_events(kept: list[_Kept]) -> list[Event]:
    return [Event(e[0], e[1], e[2], e[3], e[4], dict(zip(e[5:(len(e) + 5) >> 1], e[(len(e) + 5) >> 1:], strict=True)))
            for e in kept]


class EventLog:
    """A bounded buffer of events; the oldest are dropped past ``maxlen``. Readers get ``Event`` objects."""

    def __init__(self, maxlen: int = 50_000, wallclock: Callable[[], float] = time.time) -> None:
        self._events: deque[_Kept] = deque(maxlen=maxlen)
        self._lock = threading.Lock()
        self._seq = 0
        self._wallclock = wallclock
        self._listeners: list[Callable[[Event], None]] = []

    def emit(self, kind: str, provider: str | None = None, request_id: str | None = None, **detail: Any) -> None:
        with self._lock:
            self._seq += 1
            seq, at = self._seq, self._wallclock()
            self._events.append((seq, at, kind, provider, request_id, *detail, *detail.values()))
        if self._listeners:
            event = Event(seq, at, kind, provider, request_id, detail)
            for listener in self._listeners:
                listener(event)

    def subscribe(self, listener: Callable[[Event], None]) -> None:
        self._listeners.append(listener)

    def snapshot(self, kind: str | None = None) -> list[Event]:
        with self._lock:
            events = list(self._events)
        if kind is not None:
            events = [e for e in events if e[2] == kind]
        return _as_events(events)

    def since(self, seq: int) -> list[Event]:
        """Events with a sequence number above ``seq`` (still in the buffer)."""
        with self._lock:
            if not self._events or self._events[-1][0] <= seq:
                return []
            first = self._events[0][0]
            start = max(0, seq - first + 1)
            kept = [self._events[i] for i in range(start, len(self._events))]
        return _as_events(kept)

    @property
    def last_seq(self) -> int:
        return self._seq

    def __len__(self) -> int:
        return len(self._events)
