"""The spending budget: refuse a request whose estimated cost would pass the limit.

``Budget`` owns the check made before a request is sent: what the ledger says was spent in the current
period (a UTC day, a UTC month, or all time), plus what requests in flight have reserved, plus this
request's estimate. With a ledger file, spending is read from the file's day totals at every check
(microseconds), so every client and process writing that file shares one budget; a memory-only ledger
keeps a running total over its new records, rescanned once when a new period starts. Thread-safe: the
dashboard reads ``status()`` from its thread.

    token = budget.reserve(estimate_usd)      # raises BudgetExceededError
    budget.resize(token, fallback_estimate)  # before each further provider is tried; may raise too
    ...send, then append the record to the ledger...
    budget.release(token)
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .._errors import BudgetExceededError, ConfigError
from ..ledger.store import Ledger

PERIODS = ("day", "month", "total")


class Reservation:
    """What ``reserve`` hands back: the amount held until ``release``."""

    __slots__ = ("amount_usd", "id")

    def __init__(self, id: int, amount_usd: float) -> None:
        self.id = id
        self.amount_usd = amount_usd

    def __repr__(self) -> str:
        return f"<Reservation #{self.id} ${self.amount_usd:.6f}>"


def _amount(estimate_usd: float | None) -> float:
    return 0.0 if estimate_usd is None or not math.isfinite(estimate_usd) else max(0.0, estimate_usd)


def period_start(period: str, now: float) -> float | None:
    """The epoch second the UTC period containing ``now`` began (None for "total")."""
    if period == "total":
        return None
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day if period == "day" else day.replace(day=1)).timestamp()


class Budget:
    """A spending limit in USD per UTC ``period`` ("day", "month", or "total"/None for all time)."""

    def __init__(self, limit_usd: float, period: str | None, ledger: Ledger,
                 wallclock: Callable[[], float] = time.time) -> None:
        if isinstance(limit_usd, bool) or not isinstance(limit_usd, (int, float)) or not limit_usd >= 0:
            raise ConfigError(f"budget: expected a non-negative limit in USD, got {limit_usd!r}")
        period = period or "total"
        if period not in PERIODS:
            raise ConfigError(f"budget: expected period 'day', 'month' or 'total', got {period!r}")
        self.limit_usd = float(limit_usd)
        self.period = period
        self._ledger = ledger
        self._wallclock = wallclock
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._reserved: dict[int, float] = {}
        self._period_start: float | None = None
        self._seen = 0       # ledger records already summed
        self._spent = 0.0    # their priced cost within the current period
        self._fresh = True   # nothing summed yet for the current period

    # -- the check -----------------------------------------------------------------------------

    def reserve(self, estimate_usd: float | None) -> Reservation:
        """Hold ``estimate_usd`` (None: unpriced, counts as 0) or raise ``BudgetExceededError``."""
        estimate = _amount(estimate_usd)
        with self._lock:
            self._check(estimate, 0.0)
            token = Reservation(next(self._ids), estimate)
            self._reserved[token.id] = estimate
            return token

    def resize(self, token: Reservation, estimate_usd: float | None) -> None:
        """Move a held reservation to a new estimate (the next provider tried, which may cost more), or
        raise ``BudgetExceededError`` and keep the old amount. A released token is held again."""
        estimate = _amount(estimate_usd)
        with self._lock:
            self._check(estimate, self._reserved.get(token.id, 0.0))
            token.amount_usd = estimate
            self._reserved[token.id] = estimate

    def _check(self, estimate: float, replaced: float) -> None:
        """Raise unless spent + in flight (less ``replaced``) + ``estimate`` fits. Holds ``_lock``."""
        spent = self._refresh()
        reserved = math.fsum(self._reserved.values()) - replaced
        if spent + reserved + estimate > self.limit_usd:
            raise BudgetExceededError(
                f"budget exceeded: spent ${spent:.6f} + in flight ${reserved:.6f} + this request "
                f"${estimate:.6f} > limit ${self.limit_usd:.6f} ({self._describe_period()})",
                spent_usd=spent, budget_usd=self.limit_usd, estimate_usd=estimate,
            )

    def release(self, token: object) -> None:
        """Drop a reservation (what ``reserve`` returned) once its request's record is in the ledger, or it
        never ran. Idempotent."""
        if not isinstance(token, Reservation):
            raise TypeError(f"expected a Reservation from Budget.reserve(), got {type(token).__name__}")
        with self._lock:
            self._reserved.pop(token.id, None)

    def status(self) -> dict[str, Any]:
        with self._lock:
            spent = self._refresh()
            reserved = math.fsum(self._reserved.values())
            start = self._period_start
        limit = self.limit_usd
        return {
            "limit_usd": limit,
            "period": self.period,
            "period_start": start,
            "spent_usd": spent,
            "reserved_usd": reserved,
            "remaining_usd": max(0.0, limit - spent - reserved),
            "used_pct": (100.0 * spent / limit) if limit > 0 else (100.0 if spent > 0 else 0.0),
        }

    # -- the running total ---------------------------------------------------------------------

    def _refresh(self) -> float:
        """Add records new since the last call; start over when the period rolled. Holds ``_lock``."""
        start = period_start(self.period, self._wallclock())
        history = self._ledger.history
        if history is not None:  # the file is the store of record: every client and process on it counts
            self._period_start, self._fresh = start, False
            self._spent = history.spent(start)
            return self._spent
        if self._fresh or start != self._period_start:
            self._period_start, self._seen, self._spent, self._fresh = start, 0, 0.0, False
        n = len(self._ledger)
        if n > self._seen:
            times, costs = self._ledger.costs(self._seen)
            if start is None:
                new = math.fsum(c for c in costs if c == c)  # NaN (unpriced) != itself
            else:
                new = math.fsum(c for t, c in zip(times, costs, strict=True) if t >= start and c == c)
            self._spent += new
            self._seen += len(costs)
        return self._spent

    def _describe_period(self) -> str:
        if self.period == "total":
            return "all time"
        assert self._period_start is not None
        fmt = "%Y-%m-%d" if self.period == "day" else "%Y-%m"
        return f"{self.period} {datetime.fromtimestamp(self._period_start, UTC).strftime(fmt)} UTC"
