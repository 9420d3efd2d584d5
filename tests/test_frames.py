"""frames: stable columns and dtypes (empty or not), UTC times, summaries, health/events/latency frames."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from llmkit import frames
from llmkit._config import ProviderConfig
from llmkit._events import EventLog
from llmkit.ledger.store import Ledger, LedgerRecord
from llmkit.providers.mock import MockProvider
from llmkit.routing.health import HealthMonitor

T0 = datetime(2025, 3, 1, 23, 59, 50, tzinfo=UTC).timestamp()
CONTRACT = ["request_id", "time", "provider", "model", "requested_model", "status", "error_type", "input_tokens",
            "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "priced",
            "latency_s", "attempts", "fallback", "stream", "priority", "started", "metadata"]


def rec(i: int, at: float, **kw: Any) -> LedgerRecord:
    values: dict[str, Any] = dict(
        request_id=f"r{i}", time=at, started=at - 1.5, provider="openai", model="gpt-4o", requested_model="gpt-4o",
        status="ok", error_type=None, error_message=None, input_tokens=1000, output_tokens=100,
        cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, usage_estimated=False, cost_usd=0.01,
        latency_s=1.0, attempts=1, fallback=False, stream=False, priority=0, metadata=None,
    )
    values.update(kw)
    return LedgerRecord(**values)


@pytest.fixture
def ledger() -> Ledger:
    led = Ledger(None)
    for r in [
        rec(1, T0, metadata={"team": "a"}),                                          # day 1
        rec(2, T0 + 2, latency_s=3.0, cache_read_tokens=400),                        # day 1
        rec(3, T0 + 20, provider="anthropic", model="claude-3-haiku-20240307",       # day 2
            requested_model="gpt-4o", fallback=True, attempts=2, cost_usd=0.002, latency_s=2.0),
        rec(4, T0 + 21, provider="local", model="llama3", requested_model="llama3", cost_usd=None,  # unpriced
            stream=True, latency_s=0.5),
        rec(5, T0 + 22, provider=None, model=None, status="error", error_type="AllProvidersFailedError",
            error_message="all failed", input_tokens=0, output_tokens=0, cost_usd=None, latency_s=9.0),
    ]:
        led.append_sync(r)
    return led


def dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {k: str(v) for k, v in df.dtypes.items()}


def test_usage_frame_columns_and_dtypes_empty_and_full(ledger: Ledger) -> None:
    full = frames.usage_frame(ledger)
    empty = frames.usage_frame(Ledger(None))
    assert list(full.columns) == [*frames.USAGE_COLUMNS, "meta.team"]  # one column per metadata key
    assert list(empty.columns) == list(frames.USAGE_COLUMNS)
    assert set(CONTRACT) <= set(full.columns)
    assert dtypes(full) == {**dtypes(empty), "meta.team": dtypes(full)["meta.team"]}
    assert dtypes(full)["time"] == dtypes(full)["started"] == "datetime64[ns, UTC]"
    for col in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "attempts", "priority"):
        assert dtypes(full)[col] == "int64"
    for col in ("priced", "fallback", "stream"):
        assert dtypes(full)[col] == "bool"
    assert dtypes(full)["cost_usd"] == "float64"
    assert len(full) == 5 and len(empty) == 0


def test_usage_frame_values(ledger: Ledger) -> None:
    df = frames.usage_frame(ledger)
    assert df["time"].dt.tz is not None and str(df["time"].dt.tz) == "UTC"
    assert df["time"].iloc[0] == pd.Timestamp("2025-03-01 23:59:50", tz="UTC")
    assert df["started"].iloc[0] == pd.Timestamp("2025-03-01 23:59:48.5", tz="UTC")
    assert df["request_id"].tolist() == ["r1", "r2", "r3", "r4", "r5"]
    assert df["provider"].tolist()[:4] == ["openai", "openai", "anthropic", "local"]
    assert pd.isna(df["provider"].iloc[4])
    assert list(df["provider"].cat.categories) == ["anthropic", "local", "openai"]  # sorted
    assert df["status"].tolist() == ["ok", "ok", "ok", "ok", "error"]
    assert df["priced"].tolist() == [True, True, True, False, False]
    assert math.isnan(df["cost_usd"].iloc[3])  # unpriced is NaN, never 0
    assert df["fallback"].tolist() == [False, False, True, False, False]
    assert json.loads(df["metadata"].iloc[0]) == {"team": "a"} and pd.isna(df["metadata"].iloc[1])
    assert df["error_message"].iloc[4] == "all failed"


def test_cost_summary_by_provider_and_model(ledger: Ledger) -> None:
    s = frames.cost_summary_frame(ledger)
    assert list(s.columns) == ["provider", "model", "requests", "errors", "input_tokens", "output_tokens",
                               "cache_read_tokens", "cache_write_tokens", "cost_usd", "unpriced_requests",
                               "cached_requests", "cost_saved_usd"]
    rows = {(p if isinstance(p, str) else None, m if isinstance(m, str) else None): r
            for p, m, r in zip(s["provider"], s["model"], s.to_dict("records"), strict=True)}
    assert rows[("openai", "gpt-4o")]["requests"] == 2
    assert rows[("openai", "gpt-4o")]["input_tokens"] == 2000
    assert rows[("openai", "gpt-4o")]["cache_read_tokens"] == 400
    assert rows[("openai", "gpt-4o")]["cost_usd"] == pytest.approx(0.02)
    assert rows[("local", "llama3")]["unpriced_requests"] == 1 and math.isnan(rows[("local", "llama3")]["cost_usd"])
    assert rows[(None, None)]["errors"] == 1 and rows[(None, None)]["unpriced_requests"] == 0
    assert s["requests"].sum() == 5


def test_cost_summary_by_provider_day_and_status(ledger: Ledger) -> None:
    by_provider = frames.cost_summary_frame(ledger, by="provider")
    assert by_provider["provider"].tolist()[:3] == ["anthropic", "local", "openai"]
    day = frames.cost_summary_frame(ledger, by="day")
    assert day["day"].tolist() == [pd.Timestamp("2025-03-01", tz="UTC"), pd.Timestamp("2025-03-02", tz="UTC")]
    assert day["requests"].tolist() == [2, 3]
    assert day["cost_usd"].tolist() == pytest.approx([0.02, 0.002])
    month = frames.cost_summary_frame(ledger, by=["month", "status"])
    assert month["month"].tolist() == [pd.Timestamp("2025-03-01", tz="UTC")] * 2
    assert sorted(month["status"].tolist()) == ["error", "ok"]
    with pytest.raises(ValueError, match="cannot group by 'nope'"):
        frames.cost_summary_frame(ledger, by="nope")


def test_cost_summary_empty_has_the_same_dtypes(ledger: Ledger) -> None:
    for by in ("provider", ("provider", "model"), "day"):
        full = frames.cost_summary_frame(ledger, by=by)
        empty = frames.cost_summary_frame(Ledger(None), by=by)
        assert list(empty.columns) == list(full.columns) and len(empty) == 0
        assert dtypes(empty) == dtypes(full)


def test_latency_frame(ledger: Ledger) -> None:
    lat = frames.latency_frame(ledger, freq="10s")
    assert list(lat.columns) == list(frames.LATENCY_COLUMNS)
    first = lat[lat["time"] == pd.Timestamp("2025-03-01 23:59:50", tz="UTC")]
    assert first["provider"].tolist() == ["openai"]
    assert first["requests"].tolist() == [2]
    assert first["latency_p50_s"].tolist() == [2.0] and first["latency_p95_s"].tolist() == pytest.approx([2.9])
    errors = lat[lat["errors"] > 0]
    assert len(errors) == 1 and math.isnan(errors["latency_p50_s"].iloc[0])  # error latencies are excluded
    empty = frames.latency_frame(Ledger(None))
    assert list(empty.columns) == list(lat.columns) and dtypes(empty) == dtypes(lat)


async def test_health_frame_from_monitor_rows() -> None:
    providers = {n: MockProvider(ProviderConfig(name=n, adapter="mock")) for n in ("a", "b")}
    monitor = HealthMonitor(providers, {}, EventLog(), interval=None, wallclock=lambda: T0)
    before = frames.health_frame(monitor.rows())
    providers["b"].set_down()
    await monitor.check()
    monitor.record_request("a", True, 0.25)
    df = frames.health_frame(monitor.rows())
    assert list(df.columns) == list(frames.HEALTH_COLUMNS)
    assert dtypes(df) == dtypes(before) == dtypes(frames.health_frame([]))
    assert df["last_check"].tolist() == [pd.Timestamp("2025-03-01 23:59:50", tz="UTC")] * 2
    assert pd.isna(before["last_check"]).all() and before["last_check_ok"].isna().all()
    assert df["healthy"].tolist() == [True, False]
    assert df["uptime_pct"].tolist() == [100.0, 0.0]
    assert df["latency_p50_s"].iloc[0] == 0.25 and math.isnan(df["latency_p50_s"].iloc[1])
    assert df["breaker_state"].tolist() == ["closed", "closed"]


def test_events_frame() -> None:
    log = EventLog(wallclock=lambda: T0)
    log.emit("attempt", "openai", "r1", model="gpt-4o", outcome="ok", duration_s=0.5)
    log.emit("health_check", "local", ok=False, error="ProviderConnectionError", duration_s=0.01)
    log.emit("breaker", "local", old="closed", new="open", time="clash")
    df = frames.events_frame(log.snapshot())
    assert list(df.columns[:5]) == ["seq", "time", "kind", "provider", "request_id"]
    assert {"model", "outcome", "duration_s", "ok", "error", "old", "new", "detail_time"} <= set(df.columns)
    assert df["seq"].tolist() == [1, 2, 3] and str(df["seq"].dtype) == "int64"
    assert str(df["time"].dtype) == "datetime64[ns, UTC]"
    assert df["duration_s"].tolist()[:2] == [0.5, 0.01]
    assert pd.isna(df["request_id"].iloc[1])
    empty = frames.events_frame([])
    assert list(empty.columns) == ["seq", "time", "kind", "provider", "request_id"]
    assert dtypes(empty) == {k: v for k, v in dtypes(df).items() if k in empty.columns}


def test_core_modules_do_not_import_pandas_or_genai_prices() -> None:
    code = ("import sys, llmkit, llmkit.ledger.pricing, llmkit.ledger.store, llmkit.routing.budget, "
            "llmkit.routing.health; "
            "print(sorted(m for m in ('pandas', 'numpy', 'genai_prices') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_benchmark_quick_smoke_run_prints_its_table() -> None:
    """A smoke run only: timings are the benchmark's business, never asserted in tests."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ledger.py"
    result = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "memory per record" in result.stdout and "column blocks" in result.stdout
