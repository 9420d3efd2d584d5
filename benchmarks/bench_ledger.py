"""Ledger benchmark: memory per record, usage_frame build time, SQLite append throughput, vs targets.

    python benchmarks/bench_ledger.py           # 100k records for memory, 1M for usage_frame
    python benchmarks/bench_ledger.py --quick   # a CI smoke run with fewer records (targets scaled)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
import time
import tracemalloc
from pathlib import Path

from llmkit._types import new_request_id
from llmkit.ledger.store import Ledger, LedgerRecord

PROVIDERS = [("openai", "gpt-4o-2024-08-06", "gpt-4o"), ("anthropic", "claude-3-5-sonnet-20241022", "gpt-4o"),
             ("local", "llama3", "llama3")]


def record(i: int, now: float) -> LedgerRecord:
    """A realistic mix: 3 providers, 5% errors with a message, metadata on half, a few unpriced."""
    provider, model, requested = PROVIDERS[i % 3]
    error = i % 20 == 0
    return LedgerRecord(
        request_id=new_request_id(), time=now + i * 0.01, started=now + i * 0.01 - 0.8, provider=provider,
        model=model, requested_model=requested, status="error" if error else "ok",
        error_type="ServerError" if error else None, error_message="[openai] internal server error" if error else None,
        input_tokens=1200 + i % 500, output_tokens=300 + i % 200, cache_read_tokens=(i % 4) * 256,
        cache_write_tokens=0, reasoning_tokens=0, usage_estimated=False,
        cost_usd=None if provider == "local" else 0.0042 + (i % 100) * 1e-6, latency_s=0.8 + (i % 50) / 100,
        attempts=2 if error else 1, fallback=i % 33 == 0, stream=i % 5 == 0, priority=0,
        metadata={"team": "search", "experiment": "ab-7"} if i % 2 else None,
    )


def fill(ledger: Ledger, n: int) -> None:
    now = time.time()
    for i in range(n):
        ledger.append_sync(record(i, now))


def bytes_per_record(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ledger = Ledger(None)
    fill(ledger, n)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(ledger) == n
    return (after - before) / n


def usage_frame_seconds(n: int) -> tuple[float, float]:
    """(first call, best of 3) seconds to build usage_frame over n records."""
    from llmkit import frames

    ledger = Ledger(None)
    fill(ledger, n)
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        df = frames.usage_frame(ledger)
        runs.append(time.perf_counter() - t0)
        assert len(df) == n
        del df
    return runs[0], min(runs)


async def _append_concurrently(ledger: Ledger, records: list[LedgerRecord], concurrency: int) -> None:
    it = iter(records)

    async def worker() -> None:
        for r in it:
            await ledger.append(r)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def append_throughput(n_sync: int, n_async: int) -> tuple[float, float, float, float]:
    """(sync appends/s, async appends/s at 64 concurrent, rows per commit, reload s) on a temp SQLite file."""
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.sqlite3"
        ledger = Ledger(path)
        t0 = time.perf_counter()
        fill(ledger, n_sync)
        sync_rate = n_sync / (time.perf_counter() - t0)
        writer = ledger._writer
        assert writer is not None
        commits_before = writer.commits
        records = [record(i, now) for i in range(n_async)]
        t0 = time.perf_counter()
        asyncio.run(_append_concurrently(ledger, records, 64))
        async_rate = n_async / (time.perf_counter() - t0)
        per_commit = n_async / max(1, writer.commits - commits_before)
        ledger.close()
        t0 = time.perf_counter()
        reopened = Ledger(path)
        reload_s = time.perf_counter() - t0
        assert len(reopened) == n_sync + n_async
        reopened.close()
    return sync_rate, async_rate, per_commit, reload_s


async def _max_lag(work: asyncio.Future[None] | None, period: float = 0.001) -> tuple[float, float]:
    """(p99, max) lateness of a 1 ms ticker on this loop while ``work`` runs (or for 0.5 s without work)."""
    loop = asyncio.get_running_loop()
    lags: list[float] = []
    end = loop.time() + 0.5
    while (work is not None and not work.done()) or (work is None and loop.time() < end):
        expected = loop.time() + period
        await asyncio.sleep(period)
        lags.append(max(0.0, loop.time() - expected))
    lags.sort()
    return lags[int(len(lags) * 0.99) - 1] if lags else 0.0, lags[-1] if lags else 0.0


def loop_stall(n: int) -> tuple[float, float, float, float]:
    """Does writing to SQLite stall the event loop? Ticker lateness (p99, max) idle, then during n async
    appends at 64 concurrent (the writes run on the ledger's writer thread)."""
    now = time.time()
    records = [record(i, now) for i in range(n)]

    async def run() -> tuple[float, float, float, float]:
        idle = await _max_lag(None)
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger(Path(tmp) / "stall.sqlite3")
            work = asyncio.ensure_future(_append_concurrently(ledger, records, 64))
            busy = await _max_lag(work)
            await work
            ledger.close()
        return (*idle, *busy)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer records (a CI smoke run)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args()
    n_mem, n_frame, n_sync, n_async = (10_000, 100_000, 300, 3_000) if args.quick else (
        100_000, 1_000_000, 2_000, 30_000)
    frame_target = 2.0 * n_frame / 1_000_000

    per_record = bytes_per_record(n_mem)
    first, best = usage_frame_seconds(n_frame)
    sync_rate, async_rate, per_commit, reload_s = append_throughput(n_sync, n_async)
    idle_p99, _idle_max, busy_p99, busy_max = loop_stall(n_async)

    rows = [
        (f"memory per record ({n_mem:,} records, tracemalloc)", f"{per_record:,.0f} B", "< 500 B",
         per_record < 500),
        (f"usage_frame, {n_frame:,} records (first call)", f"{first:.3f} s", f"< {frame_target:g} s",
         first < frame_target),
        (f"usage_frame, {n_frame:,} records (best of 3)", f"{best:.3f} s", f"< {frame_target:g} s",
         best < frame_target),
        (f"SQLite append_sync, one at a time ({n_sync:,})", f"{sync_rate:,.0f} /s", "-", None),
        (f"SQLite async append, 64 concurrent ({n_async:,})", f"{async_rate:,.0f} /s", "-", None),
        ("  rows per group commit", f"{per_commit:,.1f}", "-", None),
        (f"reopen + reload {n_sync + n_async:,} records", f"{reload_s:.3f} s", "-", None),
        ("event-loop lag p99, idle (1 ms ticker)", f"{idle_p99 * 1000:.2f} ms", "-", None),
        (f"event-loop lag p99, during {n_async:,} appends", f"{busy_p99 * 1000:.2f} ms", "< 5 ms",
         busy_p99 < 0.005),
        (f"event-loop lag max, during {n_async:,} appends", f"{busy_max * 1000:.2f} ms", "-", None),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'metric':<{width}}  {'measured':>12}  {'target':>8}  ok")
    for name, measured, target, ok in rows:
        flag = "" if ok is None else ("yes" if ok else "NO")
        print(f"{name:<{width}}  {measured:>12}  {target:>8}  {flag}")
    if args.check and any(ok is False for *_, ok in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
