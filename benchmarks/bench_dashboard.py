"""Dashboard refresh cost with a large ledger: the store must read only what is new (target < 50 ms a refresh).

    python benchmarks/bench_dashboard.py           # 100,000 ledger records, 100 new records a tick
    python benchmarks/bench_dashboard.py --quick   # a smoke run: 10,000 records, fewer ticks

Measures, on a client whose in-memory ledger already holds N records (spread over the last hour, four
providers, 5% errors, a few unpriced):

- the first refresh (a new browser session reads the whole ledger once);
- steady refreshes of the store alone and of the whole app (store + every view: KPI and card HTML,
  bokeh streams, the Tabulator), each tick after ``--new`` more records and a published time bucket.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import llmkit
from llmkit.ledger.store import LedgerRecord

TARGET_MS = 50.0
PROVIDERS = [("openai", "gpt-4o-mini"), ("anthropic", "claude-3-5-haiku-20241022"), ("local", "llama3.2"),
             ("mock", "mock-small")]


def make_record(i: int, t: float) -> LedgerRecord:
    provider, model = PROVIDERS[i % len(PROVIDERS)]
    error = i % 20 == 0
    return LedgerRecord(
        request_id=f"bench-{i}", time=t, started=t - 0.4, provider=provider, model=model, requested_model=model,
        status="error" if error else "ok", error_type="ServerError" if error else None,
        error_message="[openai] internal server error" if error else None, input_tokens=800 + i % 300,
        output_tokens=200 + i % 100, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
        usage_estimated=False, cost_usd=None if provider == "local" else 0.0004 + (i % 50) * 1e-6,
        latency_s=0.2 + (i % 40) / 100, attempts=2 if error else 1, fallback=i % 30 == 0, stream=i % 4 == 0,
        priority=i % 3, metadata=None)


def build_client(n: int, now: float) -> tuple[llmkit.Client, int]:
    providers = [{"name": p, "adapter": "mock", "models": ["*"], "priority": k} for k, (p, _) in enumerate(PROVIDERS)]
    client = llmkit.Client(providers=providers, ledger=None, health_interval=None, budget_usd=100.0)
    ledger = client._service.ledger
    span = 3600.0
    for i in range(n):
        ledger.append_sync(make_record(i, now - span + span * i / n))
    return client, n


def stats(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[max(0, round(0.95 * len(ordered)) - 1)], ordered[-1]


def run(n: int, new_per_tick: int, ticks: int) -> list[tuple[str, float, float, float]]:
    from llmkit.dashboard import DashboardStore, create_app

    clock = [time.time()]
    client, next_id = build_client(n, clock[0])
    try:
        rows: list[tuple[str, float, float, float]] = []
        store = DashboardStore(client, clock=lambda: clock[0])
        t0 = time.perf_counter()
        store.refresh()
        first = (time.perf_counter() - t0) * 1000
        rows.append((f"first refresh (reads all {n:,})", first, first, first))

        app = create_app(client, clock=lambda: clock[0])  # its own store, first read done in the constructor
        ledger = client._service.ledger
        for name, refresh in (("store.refresh()", store.refresh), ("app.refresh() (store + views)", app.refresh)):
            samples = []
            for _ in range(ticks):
                clock[0] += 1.0  # one bucket (2 s) published every other tick
                for _ in range(new_per_tick):
                    ledger.append_sync(make_record(next_id, clock[0] - 0.1))
                    next_id += 1
                t0 = time.perf_counter()
                refresh()
                samples.append((time.perf_counter() - t0) * 1000)
            rows.append((f"{name}, +{new_per_tick}/tick", *stats(samples)))
        store.refresh()
        assert store.requests == len(ledger) == app.store.requests  # type: ignore[attr-defined]
        return rows
    finally:
        client.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 10,000 records, 20 ticks")
    parser.add_argument("--records", type=int, default=None, help="ledger records before measuring (100,000)")
    parser.add_argument("--new", type=int, default=100, help="new records per tick (100)")
    parser.add_argument("--ticks", type=int, default=None, help="refreshes measured per scenario (100)")
    args = parser.parse_args()
    n = args.records or (10_000 if args.quick else 100_000)
    ticks = args.ticks or (20 if args.quick else 100)
    rows = run(n, args.new, ticks)
    print(f"dashboard refresh cost, ledger of {n:,} records (target < {TARGET_MS:g} ms a steady refresh)")
    print(f"{'scenario':<44} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}  target")
    ok = True
    for i, (name, median, p95, worst) in enumerate(rows):
        steady = i > 0
        verdict = ("ok" if p95 < TARGET_MS else "SLOW") if steady else "(once per session)"
        ok &= not steady or p95 < TARGET_MS
        print(f"{name:<44} {median:>10.2f} {p95:>8.2f} {worst:>8.2f}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
