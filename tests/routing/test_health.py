"""HealthMonitor: active checks feed breakers and events; passive stats over a rolling window."""

from __future__ import annotations

import asyncio

import pytest

from llmkit._config import BreakerConfig, ProviderConfig
from llmkit._events import EventLog
from llmkit.providers.mock import MockProvider
from llmkit.routing.breaker import Breaker
from llmkit.routing.health import MAX_SAMPLES, HealthMonitor, percentile


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Hanging(MockProvider):
    async def health_check(self) -> None:
        await asyncio.Event().wait()


class Buggy(MockProvider):
    async def health_check(self) -> None:
        raise RuntimeError("adapter bug")


def setup(*names: str, interval: float | None = None, cls: type[MockProvider] = MockProvider,
          **kw: object) -> tuple[HealthMonitor, dict[str, MockProvider], dict[str, Breaker], EventLog, FakeClock]:
    clock = FakeClock()
    wall = FakeClock(1_700_000_000.0)
    events = EventLog(wallclock=wall)
    providers = {n: cls(ProviderConfig(name=n, adapter="mock")) for n in names}
    breakers = {n: Breaker(n, BreakerConfig(fail_max=2, reset_timeout=10), clock=clock, events=EventLog())
                for n in names}
    monitor = HealthMonitor(providers, breakers, events, interval=interval, clock=clock, wallclock=wall, **kw)  # type: ignore[arg-type]
    return monitor, providers, breakers, events, clock


def row(monitor: HealthMonitor, name: str) -> dict[str, object]:
    return next(r for r in monitor.rows() if r["provider"] == name)


def test_rows_before_anything_happened() -> None:
    monitor, *_ = setup("a", "b")
    rows = monitor.rows()
    assert [r["provider"] for r in rows] == ["a", "b"]
    assert rows[0] == {
        "provider": "a", "adapter": "mock", "breaker_state": "closed", "healthy": True, "uptime_pct": None,
        "last_check": None, "last_check_ok": None, "last_error": None, "requests": 0, "errors": 0,
        "error_rate": None, "latency_p50_s": None, "latency_p95_s": None, "fail_count": 0, "retry_in_s": None,
    }


async def test_checks_emit_events_and_drive_the_breaker() -> None:
    monitor, providers, breakers, events, clock = setup("a", "b")
    await monitor.check()
    checks = events.snapshot("health_check")
    assert [(e.provider, e.detail["ok"], e.detail["error"]) for e in checks] == [("a", True, None),
                                                                                   ("b", True, None)]
    assert checks[0].detail["duration_s"] == 0.0
    assert row(monitor, "a")["uptime_pct"] == 100.0
    assert row(monitor, "a")["last_check"] == 1_700_000_000.0

    providers["b"].set_down()
    clock.now += 30
    await monitor.check("b")
    assert breakers["b"].fail_count == 1 and breakers["b"].state == "closed"
    r = row(monitor, "b")
    assert r["healthy"] is False and r["last_check_ok"] is False
    assert r["last_error"] == "ProviderConnectionError: [b] mock: connection refused"
    assert r["uptime_pct"] == 50.0
    last = events.snapshot("health_check")[-1]
    assert (last.provider, last.detail["ok"], last.detail["error"]) == ("b", False, "ProviderConnectionError")

    clock.now += 30
    await monitor.check("b")  # second failure: fail_max=2 opens the breaker
    r = row(monitor, "b")
    assert r["breaker_state"] == "open" and r["fail_count"] == 2 and r["retry_in_s"] == 10.0
    assert r["uptime_pct"] == pytest.approx(100 / 3)
    assert row(monitor, "a")["healthy"] is True  # only b was checked

    providers["b"].set_down(False)
    clock.now += 4
    assert row(monitor, "b")["retry_in_s"] == 6.0
    await monitor.check("b")  # a passing check half-opens the breaker at once: the next real call probes
    r = row(monitor, "b")
    assert r["breaker_state"] == "half_open" and r["healthy"] is True and r["uptime_pct"] == 50.0
    probe = breakers["b"].admit()
    breakers["b"].report(None, probe)  # the probe succeeded: now it closes
    assert row(monitor, "b")["breaker_state"] == "closed"


async def test_checks_leave_the_window() -> None:
    monitor, providers, _, _, clock = setup("a", window_s=60)
    providers["a"].set_down()
    await monitor.check()
    clock.now += 61
    r = row(monitor, "a")
    assert r["uptime_pct"] is None              # no check in the window any more
    assert r["last_check_ok"] is False and r["healthy"] is False  # but the last one still failed


async def test_check_one_unknown_provider() -> None:
    monitor, *_ = setup("a")
    with pytest.raises(KeyError, match="nope"):
        await monitor.check("nope")


async def test_check_timeout_and_adapter_bugs_fail_the_check() -> None:
    monitor, _, breakers, events, _ = setup("slow", cls=Hanging, check_timeout=0)
    await monitor.check()
    e = events.snapshot("health_check")[-1]
    assert e.detail["ok"] is False and e.detail["error"] == "ProviderTimeoutError"
    assert breakers["slow"].fail_count == 1

    monitor, _, breakers, events, _ = setup("bug", cls=Buggy)
    await monitor.check()
    # a stray exception from an adapter is a failed check (counted by the breaker), its text kept scrubbed
    event = events.snapshot("health_check")[-1]
    assert event.detail["error"] == "ProviderConnectionError"
    assert "RuntimeError: adapter bug" in event.detail["error_message"]
    assert "RuntimeError: adapter bug" in row(monitor, "bug")["last_error"]
    assert breakers["bug"].fail_count == 1


def test_passive_stats_and_percentiles() -> None:
    monitor, _, _, _, clock = setup("a", window_s=300)
    for i in range(1, 11):
        monitor.record_request("a", True, i / 10)  # 0.1 .. 1.0
        clock.now += 1
    r = row(monitor, "a")
    assert r["requests"] == 10 and r["errors"] == 0 and r["error_rate"] == 0.0
    assert r["latency_p50_s"] == pytest.approx(0.55)
    assert r["latency_p95_s"] == pytest.approx(0.955)
    assert r["uptime_pct"] is None  # requests are not checks

    for _ in range(16):
        monitor.record_request("a", False, 30.0)  # errors do not enter the latency percentiles
    r = row(monitor, "a")
    assert r["requests"] == 26 and r["errors"] == 16
    assert r["error_rate"] == pytest.approx(16 / 26) and r["healthy"] is False
    assert r["latency_p95_s"] == pytest.approx(0.955)

    clock.now += 301
    r = row(monitor, "a")
    assert r["requests"] == 0 and r["error_rate"] is None and r["latency_p50_s"] is None and r["healthy"] is True


def test_few_requests_do_not_make_a_provider_unhealthy() -> None:
    monitor, *_ = setup("a")
    for ok in (False, False, False, True):
        monitor.record_request("a", ok, 0.1)
    r = row(monitor, "a")
    assert r["error_rate"] == 0.75 and r["healthy"] is True
    monitor.record_request("a", False, 0.1)
    assert row(monitor, "a")["healthy"] is False  # 5 requests, 80% errors


def test_stats_stay_bounded_under_heavy_traffic() -> None:
    monitor, _, _, _, clock = setup("a", window_s=300)
    for i in range(50_000):
        monitor.record_request("a", i % 10 != 0, 0.5)
        clock.now += 0.005  # 250 s: all inside the 300 s window
    stats = monitor._stats["a"]
    assert len(stats.latencies) == MAX_SAMPLES and len(stats.buckets) <= 257
    r = row(monitor, "a")
    assert r["requests"] == 50_000 and r["errors"] == 5_000


async def test_periodic_checks_run_each_interval_until_stopped() -> None:
    sleeps: list[float] = []
    third = asyncio.Event()

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            third.set()
            await asyncio.Event().wait()  # parked here until stop() cancels the task

    monitor, _, _, events, _ = setup("a", "b", interval=30.0, sleep=fake_sleep)
    monitor.start()
    monitor.start()  # idempotent
    await third.wait()
    assert monitor.running
    assert sleeps == [30.0, 30.0, 30.0]
    assert len(events.snapshot("health_check")) == 6  # three rounds, two providers
    await monitor.stop()
    assert not monitor.running
    await monitor.stop()  # idempotent


async def test_no_interval_means_no_task() -> None:
    monitor, *_ = setup("a", interval=None)
    monitor.start()
    assert not monitor.running
    await monitor.stop()


def test_percentile_helper() -> None:
    assert percentile([], 0.5) is None
    assert percentile([2.0], 0.95) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
