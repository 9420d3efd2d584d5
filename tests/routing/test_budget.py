"""Budget: limits per UTC day/month/total, in-flight reservations, incremental spending totals."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from llmkit import BudgetExceededError, ConfigError
from llmkit.ledger.store import Ledger, LedgerRecord
from llmkit.routing.budget import Budget, period_start

_n = 0


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def spend(ledger: Ledger, at: float, cost: float | None) -> None:
    global _n
    _n += 1
    ledger.append_sync(LedgerRecord(f"b-{_n}", at, at - 1, "openai", "gpt-4", "gpt-4", "ok", None, None, 10, 10,
                                    0, 0, 0, False, cost, 1.0, 1, False, False, 0, None))


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_period_starts_are_utc_calendar_periods() -> None:
    now = ts(2025, 3, 14, 15, 9, 26)
    assert period_start("day", now) == ts(2025, 3, 14)
    assert period_start("month", now) == ts(2025, 3, 1)
    assert period_start("total", now) is None


def test_reserve_counts_spent_and_in_flight() -> None:
    ledger = Ledger(None)
    budget = Budget(1.0, None, ledger)
    spend(ledger, ts(2025, 1, 1), 0.5)
    a = budget.reserve(0.3)
    with pytest.raises(BudgetExceededError) as info:
        budget.reserve(0.3)  # 0.5 + 0.3 + 0.3 > 1.0
    assert info.value.spent_usd == pytest.approx(0.5)
    assert info.value.budget_usd == 1.0 and info.value.estimate_usd == pytest.approx(0.3)
    assert "all time" in str(info.value)
    budget.release(a)
    budget.release(a)  # idempotent
    b = budget.reserve(0.3)
    assert budget.status()["reserved_usd"] == pytest.approx(0.3)
    spend(ledger, ts(2025, 1, 2), 0.3)  # b's request finished: its record is in the ledger
    budget.release(b)
    st = budget.status()
    assert st["spent_usd"] == pytest.approx(0.8) and st["reserved_usd"] == 0.0
    assert st["remaining_usd"] == pytest.approx(0.2)
    assert st["used_pct"] == pytest.approx(80.0)
    assert st["period"] == "total" and st["period_start"] is None and st["limit_usd"] == 1.0


def test_unpriced_requests_pass_until_the_limit_is_spent() -> None:
    ledger = Ledger(None)
    budget = Budget(0.1, "total", ledger)
    budget.release(budget.reserve(None))
    spend(ledger, ts(2025, 1, 1), None)  # unpriced: not counted as anything
    assert budget.status()["spent_usd"] == 0.0
    spend(ledger, ts(2025, 1, 1), 0.2)
    with pytest.raises(BudgetExceededError):
        budget.reserve(None)


def test_daily_budget_resets_at_utc_midnight() -> None:
    ledger = Ledger(None)
    clock = Clock(ts(2025, 6, 1, 23, 0))
    budget = Budget(1.0, "day", ledger, wallclock=clock)
    spend(ledger, ts(2025, 5, 31, 12), 5.0)   # yesterday: does not count today
    spend(ledger, ts(2025, 6, 1, 1), 0.75)
    assert budget.status()["spent_usd"] == pytest.approx(0.75)
    assert budget.status()["period_start"] == ts(2025, 6, 1)
    with pytest.raises(BudgetExceededError, match="day 2025-06-01 UTC"):
        budget.reserve(0.5)
    clock.now = ts(2025, 6, 2, 0, 30)
    assert budget.status()["spent_usd"] == 0.0
    budget.reserve(0.9)


def test_monthly_budget() -> None:
    ledger = Ledger(None)
    clock = Clock(ts(2025, 2, 10))
    budget = Budget(2.0, "month", ledger, wallclock=clock)
    spend(ledger, ts(2025, 1, 31, 23, 59), 1.5)
    spend(ledger, ts(2025, 2, 1, 0, 1), 1.5)
    assert budget.status()["spent_usd"] == pytest.approx(1.5)
    with pytest.raises(BudgetExceededError):
        budget.reserve(0.6)
    clock.now = ts(2025, 3, 1)
    assert budget.status()["spent_usd"] == 0.0


def test_spending_is_a_running_total_not_a_rescan() -> None:
    ledger = Ledger(None)
    budget = Budget(100.0, None, ledger)
    for _ in range(50):
        spend(ledger, ts(2025, 1, 1), 0.01)
    assert budget.status()["spent_usd"] == pytest.approx(0.5)
    calls: list[int] = []
    real_costs = ledger.costs

    def counting_costs(start: int = 0) -> Any:
        calls.append(start)
        return real_costs(start)

    ledger.costs = counting_costs  # type: ignore[method-assign]
    budget.status()
    assert calls == []          # nothing new: the ledger is not read
    spend(ledger, ts(2025, 1, 1), 0.01)
    assert budget.status()["spent_usd"] == pytest.approx(0.51)
    assert calls == [50]        # only the new record was read


def test_spending_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        spend(ledger, ts(2025, 1, 1), 0.9)
    with Ledger(path) as ledger, pytest.raises(BudgetExceededError):
        Budget(1.0, "total", ledger).reserve(0.2)


def test_zero_limit_and_bad_config() -> None:
    ledger = Ledger(None)
    budget = Budget(0, None, ledger)
    budget.reserve(0.0)
    with pytest.raises(BudgetExceededError):
        budget.reserve(0.0001)
    assert budget.status()["used_pct"] == 0.0
    with pytest.raises(ConfigError, match="period"):
        Budget(1.0, "week", ledger)
    with pytest.raises(ConfigError, match="non-negative"):
        Budget(-1.0, None, ledger)
