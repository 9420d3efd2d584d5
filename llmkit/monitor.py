"""``Monitor``: the public, read-only view of a client's live state (``client.monitor``).

What a dashboard or a user's own watcher needs, without reaching into the service: the ledger's records
as columns from a position on, the event log from a sequence number on, the providers' health rows, and
the service's clock, and the batches (``client.map``) running now. Everything here reads; nothing
changes the client's state. ``BatchProgress`` is the one thing written here: a running batch's
counters, updated by ``llmkit.batch`` and read by its progress bar and by ``Monitor.batches()``.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._secrets import redact

if TYPE_CHECKING:
    from ._events import Event
    from ._service import Service


class Monitor:
    """Read-only access to one client's records, events and health, for dashboards and watchers."""

    __slots__ = ("_service",)

    def __init__(self, service: Service) -> None:
        self._service = service

    def now(self) -> float:
        """The service's wall clock (epoch seconds), the time base of records and events."""
        return self._service.wallclock()

    def record_count(self) -> int:
        """How many ledger records this client (this session) has written: the next record's position."""
        return len(self._service.ledger)

    def records(self, start: int = 0) -> dict[str, Any]:
        """This session's records from position ``start`` on, as columns (name -> list of values). Memory
        holds the newest ``memory_records`` of them: an older ``start`` gets the oldest still held."""
        return self._service.ledger.columns(start)

    def records_from(self, start: int = 0) -> tuple[int, dict[str, Any]]:
        """``records(start)`` with the position its first row really has (> ``start`` when the rows in
        between have left memory), so a reader can keep an exact cursor."""
        return self._service.ledger.columns_at(start)

    def events_since(self, seq: int = 0) -> list[Event]:
        """Events (attempts, retries, fallbacks, breaker transitions, waits, health checks) after ``seq``."""
        return self._service.events.since(seq)

    def health_rows(self) -> list[dict[str, Any]]:
        """One dict per provider: breaker state, health, uptime, error rate, latency percentiles."""
        return self._service.health.rows()

    def batches(self) -> list[dict[str, Any]]:
        """The batches (``client.map`` / ``amap``) running now: one dict each with ``batch_id``, ``total``,
        ``done``, ``failed``, ``cached``, ``cost_usd``, ``elapsed_s``, ``rate`` (rows/s) and ``eta_s``."""
        return [b.snapshot() for b in running_batches(self._service)]

    @staticmethod
    def redact(text: str) -> str:
        """``text`` with every known secret (API keys, credentials in URLs) masked."""
        return redact(text)


_batch_ids = itertools.count(1)


class BatchProgress:
    """One batch's counters: written by the batch on the client's loop, read from any thread (plain
    int and float fields: a reader sees each one whole, perhaps a row behind)."""

    __slots__ = ("batch_id", "cached", "clock", "cost_usd", "done", "failed", "started", "total")

    def __init__(self, total: int, clock: Any = time.monotonic) -> None:
        self.batch_id = f"b-{os.getpid():x}-{int(time.time()):x}-{next(_batch_ids)}"
        self.total = total
        self.done = 0        # rows finished (ok or error)
        self.failed = 0      # rows finished with an error
        self.cached = 0      # rows answered from the response cache
        self.cost_usd = 0.0  # priced cost of the rows finished so far
        self.clock = clock
        self.started = clock()

    def snapshot(self) -> dict[str, Any]:
        elapsed = max(0.0, self.clock() - self.started)
        done = self.done
        rate = done / elapsed if elapsed > 0 else 0.0
        left = self.total - done
        eta = left / rate if rate > 0 else (0.0 if left == 0 else None)
        return {"batch_id": self.batch_id, "total": self.total, "done": done, "failed": self.failed,
                "cached": self.cached, "cost_usd": self.cost_usd, "elapsed_s": elapsed, "rate": rate,
                "eta_s": eta}


_running: weakref.WeakKeyDictionary[Any, dict[str, BatchProgress]] = weakref.WeakKeyDictionary()
_running_lock = threading.Lock()


def track_batch(owner: Any, progress: BatchProgress) -> None:
    """List ``progress`` among ``owner``'s (a client's service) running batches."""
    with _running_lock:
        _running.setdefault(owner, {})[progress.batch_id] = progress


def untrack_batch(owner: Any, progress: BatchProgress) -> None:
    with _running_lock:
        _running.get(owner, {}).pop(progress.batch_id, None)


def running_batches(owner: Any) -> list[BatchProgress]:
    with _running_lock:
        return list(_running.get(owner, {}).values())
