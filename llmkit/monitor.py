"""``Monitor``: the public, read-only view of a client's live state (``client.monitor``).

What a dashboard or a user's own watcher needs, without reaching into the service: the ledger's records
as columns from a position on, the event log from a sequence number on, the providers' health rows, and
the service's clock. Everything here reads; nothing changes the client's state.
"""

from __future__ import annotations

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

    @staticmethod
    def redact(text: str) -> str:
        """``text`` with every known secret (API keys, credentials in URLs) masked."""
        return redact(text)
