"""DashboardStore: incremental reads, cost accumulation, latency buckets, breaker timeline, no secrets."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit.dashboard.store import DashboardStore, Rolling, percentile
from llmkit.ledger.store import LedgerRecord
from llmkit.testing import FakeOpenAIServer

pytest.importorskip("param")

MSG = [{"role": "user", "content": "Hello"}]
PRICES = {"m": {"input": 1.0, "output": 2.0}}


def providers(**primary: Any) -> list[dict[str, Any]]:
    return [
        {"name": "primary", "adapter": "mock", "max_retries": 0, "pricing": PRICES,
         "breaker": {"fail_max": 2, "reset_timeout": 30.0}, **primary},
        {"name": "backup", "adapter": "mock", "priority": 1, "pricing": {"m": {"input": 3.0, "output": 5.0}}},
    ]


@pytest.fixture
def client() -> Iterator[llmkit.Client]:
    with llmkit.Client(providers=providers(), ledger=None, health_interval=None) as c:
        yield c


def record(client: llmkit.Client, n: int, t: float, latency: float, provider: str = "primary",
           status: str = "ok", cost: float | None = 0.001) -> None:
    """Append a finished request with a chosen time and latency to the client's own ledger."""
    client._service.ledger.append_sync(LedgerRecord(
        request_id=f"synthetic-{n}", time=t, started=t - latency, provider=provider, model="m",
        requested_model="m", status=status, error_type=None if status == "ok" else "ServerError",
        error_message=None, input_tokens=10, output_tokens=5, cache_read_tokens=0, cache_write_tokens=0,
        reasoning_tokens=0, usage_estimated=False, cost_usd=cost, latency_s=latency, attempts=1, fallback=False,
        stream=False, priority=0, metadata=None))


def test_rolling_buffer_hands_out_only_what_is_new() -> None:
    buf: Rolling[int] = Rolling(3)
    assert buf.since(0) == ([], 0, False)
    for i in range(2):
        buf.append(i)
    assert buf.since(0) == ([0, 1], 2, False)
    assert buf.since(2) == ([], 2, False)
    for i in range(2, 6):
        buf.append(i)
    assert buf.since(2) == ([3, 4, 5], 6, True)  # 2 fell out of the buffer: the reader is told
    assert buf.since(4) == ([4, 5], 6, False)


def test_percentile_matches_numpy_linear() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 0.95) == pytest.approx(4.8)
    assert math.isnan(percentile([], 0.5))


def test_refresh_reads_only_new_ledger_rows(client: llmkit.Client, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = client._service.ledger
    starts: list[int] = []
    columns = ledger.columns_at
    monkeypatch.setattr(ledger, "columns_at", lambda start=0: starts.append(start) or columns(start))
    store = DashboardStore(client)
    store.refresh()
    assert (store.requests, starts) == (0, [])
    for _ in range(5):
        client.completion(model="m", messages=MSG)
    store.refresh()
    store.refresh()  # nothing new: the ledger is not read again
    for _ in range(3):
        client.completion(model="m", messages=MSG)
    store.refresh()
    assert starts == [0, 5]
    assert store.requests == 8 and store.version == 4
    assert len(store.recent) == 8


def test_totals_and_cost_by_provider_and_model_match_the_client(client: llmkit.Client) -> None:
    store = DashboardStore(client)
    for i in range(6):
        client.completion(model="m", messages=[{"role": "user", "content": "x" * (10 * i + 1)}])
    client.provider("primary").set_down(True)
    for _ in range(3):
        client.completion(model="m", messages=MSG)  # primary fails, backup answers: fallbacks
    store.refresh()
    usage = client.usage()
    assert store.requests == len(usage) == 9
    assert store.cost_usd == pytest.approx(usage["cost_usd"].sum())
    assert store.cost_usd > 0
    assert (store.input_tokens, store.output_tokens) == (usage["input_tokens"].sum(), usage["output_tokens"].sum())
    summary = client.cost_summary().set_index(["provider", "model"])
    table = store.cost_table()
    by_cost = sorted(summary.index, key=lambda k: -summary.loc[k, "cost_usd"])
    assert [(r["provider"], r["model"]) for r in table] == by_cost
    for row in table:
        assert row["cost_usd"] == pytest.approx(summary.loc[(row["provider"], row["model"]), "cost_usd"])
        assert row["requests"] == summary.loc[(row["provider"], row["model"]), "requests"]
    assert store.fallbacks == 3


def test_cumulative_cost_over_time_per_provider(client: llmkit.Client) -> None:
    store = DashboardStore(client, bucket_s=10.0)
    t0 = 1_000_000.0 * 10  # a bucket boundary
    store.refresh(now=t0)  # empty ledger: the timeline starts here
    record(client, 1, t0 + 1, 0.1, cost=0.5)
    record(client, 2, t0 + 2, 0.1, provider="backup", cost=0.25)
    record(client, 3, t0 + 15, 0.1, cost=1.0)
    record(client, 4, t0 + 16, 0.1, cost=None)  # unpriced: adds nothing
    store.refresh(now=t0 + 30)
    rows = list(store.timeline)
    assert [r["time"] for r in rows] == [t0 + 10, t0 + 20]
    assert [r["cost|primary"] for r in rows] == [0.5, 1.5]
    assert [r["cost|backup"] for r in rows] == [0.25, 0.25]
    assert [r["requests"] for r in rows] == [2, 2]
    assert store.cost_usd == 1.75


def test_latency_percentiles_per_bucket_and_provider(client: llmkit.Client) -> None:
    store = DashboardStore(client, bucket_s=5.0)
    t0 = 200_000.0 * 5
    store.refresh(now=t0)
    for i, latency in enumerate([0.1, 0.2, 0.3, 0.4, 1.0]):
        record(client, i, t0 + 1 + i * 0.1, latency)
    record(client, 10, t0 + 2, 9.0, status="error")  # failed requests do not count toward latency
    record(client, 11, t0 + 6, 0.05, provider="backup")
    store.refresh(now=t0 + 5.1)  # the first bucket ended, but within the grace: nothing published yet
    assert len(store.timeline) == 0
    store.refresh(now=t0 + 11)
    first, second = list(store.timeline)
    assert first["p50|primary"] == pytest.approx(0.3)
    assert first["p95|primary"] == pytest.approx(0.88)
    assert math.isnan(first["p50|backup"])
    assert (first["requests"], first["errors"], first["eps"]) == (6, 1, 0.2)
    assert second["p50|backup"] == pytest.approx(0.05) and math.isnan(second["p50|primary"])


def test_late_records_count_in_the_next_bucket(client: llmkit.Client) -> None:
    store = DashboardStore(client, bucket_s=1.0)
    store.refresh(now=5000.0)
    store.refresh(now=5003.0)  # publishes buckets ending 5001 and 5002
    record(client, 1, 5000.5, 0.2)  # finished in a published bucket, written late
    store.refresh(now=5004.0)
    assert [r["requests"] for r in store.timeline] == [0, 0, 1]


def test_a_long_gap_publishes_at_most_max_points(client: llmkit.Client) -> None:
    store = DashboardStore(client, bucket_s=1.0, max_points=50)
    store.refresh(now=10_000.0)
    record(client, 1, 10_000.5, 0.1, cost=0.5)
    store.refresh(now=20_000.0)
    rows = list(store.timeline)
    assert len(rows) == 50
    assert rows[-1]["time"] == 19_999.0
    assert rows[-1]["cost|primary"] == 0.5  # the skipped bucket's cost is still in the running total


def test_breaker_timeline_closed_open_half_open_closed(fake_time: Any) -> None:
    with llmkit.Client(providers=providers(), ledger=None, health_interval=None, clock=fake_time.clock,
                       sleep=fake_time.sleep) as client:
        wall = [1_700_000_000.0]
        store = DashboardStore(client, clock=lambda: wall[0])
        store.refresh()
        assert store.breaker_states == {"primary": "closed", "backup": "closed"}
        client.provider("primary").set_down(True)
        for _ in range(3):
            client.completion(model="m", messages=MSG)
        store.refresh()
        assert store.breaker_states["primary"] == "open"
        fake_time.advance(31.0)  # past reset_timeout: the breaker would let a probe through
        wall[0] += 31.0
        store.refresh()
        assert store.breaker_states["primary"] == "half_open"
        assert list(store.transitions)[-1].derived
        client.provider("primary").set_down(False)
        client.check_health("primary")  # a passing check half-opens it...
        client.completion(model="m", messages=MSG)  # ...and the next call, the probe, closes it
        wall[0] += 1.0
        store.refresh()
        assert store.breaker_states == {"primary": "closed", "backup": "closed"}
        assert [(t.old, t.new) for t in store.transitions] == [
            ("closed", "open"), ("open", "half_open"), ("half_open", "closed")]
        segments = [s for s in store.breaker_segments() if s["provider"] == "primary"]
        assert [s["state"] for s in segments] == ["closed", "open", "half_open", "closed"]
        assert all(a["end"] == b["start"] for a, b in itertools.pairwise(segments))
        assert all(s["start"] <= s["end"] for s in segments)
        assert [s["state"] for s in store.breaker_segments() if s["provider"] == "backup"] == ["closed"]


def test_queue_depth_health_and_budget_are_read_each_refresh() -> None:
    with llmkit.Client(providers=providers(), ledger=None, health_interval=None, budget_usd=1.0) as client:
        store = DashboardStore(client)
        client.completion(model="m", messages=MSG)
        client.check_health()
        store.refresh()
        assert store.budget is not None and store.budget["spent_usd"] == pytest.approx(store.cost_usd)
        assert [h["provider"] for h in store.health] == ["primary", "backup"]
        assert store.health[0]["uptime_pct"] == 100.0 and store.health[0]["last_check"] is not None
        assert (store.queue_depth, store.in_flight) == (0, 0)
        assert list(store.samples)[-1]["queue_depth"] == 0


def test_recent_requests_hold_no_prompt_text_by_default(client: llmkit.Client) -> None:
    client.completion(model="m", messages=[{"role": "user", "content": "my secret prompt"}])
    store = DashboardStore(client)
    store.refresh()
    (row,) = list(store.recent)
    assert "prompt" not in row
    assert "my secret prompt" not in repr(row)


def test_recent_requests_show_prompts_when_the_client_stores_them() -> None:
    with llmkit.Client(providers=providers(), ledger=None, health_interval=None, store_prompts=True) as client:
        client.completion(model="m", messages=[{"role": "user", "content": "shown prompt"}])
        store = DashboardStore(client)
        store.refresh()
        assert "shown prompt" in next(iter(store.recent))["prompt"]


def test_no_api_key_reaches_the_store() -> None:
    key = "sk-wrong-key-0123456789abcdefXYZ"
    with FakeOpenAIServer(api_key="sk-the-right-one-000000000000") as server:  # a 401 echoes the key sent
        config = [{"name": "openai", "adapter": "openai", "api_key": key, "base_url": server.url,
                   "models": ["gpt-4o-mini"], "max_retries": 0}]
        with llmkit.Client(providers=config, ledger=None, health_interval=None) as client:
            with pytest.raises(llmkit.AuthenticationError):
                client.completion(model="gpt-4o-mini", messages=MSG)
            client.check_health()
            store = DashboardStore(client)
            store.refresh()
    state = repr([list(store.recent), store.cost_table(), store.health, list(store.timeline)])
    assert store.errors == 1 and next(iter(store.recent))["error"] == "AuthenticationError"
    assert key not in state and key[3:15] not in state


def test_records_that_left_the_memory_window_are_skipped_not_counted_twice(tmp_path: Path) -> None:
    """A file-backed client keeps only its newest ``memory_records`` in memory; a dashboard that fell
    behind reads from the oldest still held and keeps an exact cursor (issue 12)."""
    with llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=str(tmp_path / "l.sqlite3"),
                       health_interval=None, memory_records=4) as c:
        store = DashboardStore(c)
        store.refresh()
        for _ in range(3):
            c.completion(model="m", messages=MSG)
        store.refresh()
        for _ in range(20):
            c.completion(model="m", messages=MSG)
        store.refresh()
        held = 23 - c.monitor.records_from(0)[0]
        assert store.requests == 3 + held  # the ones gone from memory are skipped, none counted twice
        c.completion(model="m", messages=MSG)
        store.refresh()
        assert store.requests == 4 + held
