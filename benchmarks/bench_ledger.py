"""Ledger benchmark: a ledger file with 1,000,000 records next to an empty one, in one run (issue 12).

    python benchmarks/bench_ledger.py           # 1M records (made with executemany in ~1 min), 300k requests
    python benchmarks/bench_ledger.py --quick   # a CI smoke run: 50k records, 4k requests (targets scaled)

Side by side, empty vs big: ``Client()`` construction time and process RSS after it (each in fresh
processes, median), ``cost_summary(scope="all")``, ``usage(since="1d")`` (a 100th of the records are
in the last day), ``usage(scope="all")``; then the RSS of one session making many requests on the mock
(file ledger: bounded window; memory-only ledger for comparison), memory per record, SQLite append
throughput and event-loop lag while the writer commits.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import ROOT, goal, machine, print_goals, write_json

from llmkit._types import new_request_id
from llmkit.ledger import blocks
from llmkit.ledger import queries as ledger_queries
from llmkit.ledger.migrations import migrate
from llmkit.ledger.queries import fold
from llmkit.ledger.store import FIELDS, Ledger, LedgerRecord

PROVIDERS = [("openai", "gpt-4o-2024-08-06", "gpt-4o", 0.0042), ("anthropic", "claude-3-5-sonnet-20241022",
             "claude-3-5-sonnet", 0.006), ("local", "llama3", "llama3", None)]
DAY = 86400.0


# -- a big ledger, fast ---------------------------------------------------------------------------


def make_ledger(path: Path, n: int, days: int = 100) -> tuple[float, float]:
    """``n`` records spread evenly over the last ``days`` days (so a day holds n/days), 1,000 per session,
    metadata on half, 5% errors; written with executemany in one transaction, then packed into column
    blocks. Returns (seconds to write, seconds to pack)."""
    t0 = time.perf_counter()
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    migrate(db)
    now, span = time.time(), days * DAY

    def rows() -> Any:
        for i in range(n):
            provider, model, requested, cost = PROVIDERS[i % 3]
            t = now - span + span * (i + 0.5) / n
            error = i % 20 == 0
            meta = f'{{"experiment":"ab-{i % 7}","row":{i}}}' if i % 2 else None
            yield (f"req-{i:09d}", t, t - 0.8, provider, model, requested, "error" if error else "ok",
                   "ServerError" if error else None, "internal server error" if error else None,
                   1200 + i % 500, 300 + i % 200, (i % 4) * 256, 0, 0, 0, cost, 0.8 + (i % 50) / 100,
                   2 if error else 1, int(i % 33 == 0), int(i % 5 == 0), 0, meta, None, f"sess-{i // 1000}",
                   "completion", 0, 0.0, 0)

    db.execute("BEGIN")
    db.executemany(f"INSERT INTO requests ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})", rows())
    db.execute("COMMIT")
    fold(db)  # into the day totals, as the sessions that wrote them would have at close
    made = time.perf_counter() - t0
    t0 = time.perf_counter()
    blocks.pack(db)  # column blocks, as the sessions' writers would have while idle (a read far behind does it too)
    packed = time.perf_counter() - t0
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    return made, packed


# -- construction, in fresh processes ------------------------------------------------------------

OPEN = """
import json, resource, sys, time
import llmkit
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
before = rss()
t0 = time.perf_counter()
client = llmkit.Client(ledger=sys.argv[1], health_interval=None)
seconds = time.perf_counter() - t0
after = rss()
client.close()
print(json.dumps({"seconds": seconds, "rss_growth": after - before, "rss": after}))
"""


def open_in_fresh_processes(path: Path, runs: int) -> dict[str, float]:
    out = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(runs):
        done = subprocess.run([sys.executable, "-c", OPEN, str(path)], capture_output=True, text=True, env=env,
                              check=True)
        out.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in out) for k in out[0]}


# -- queries -------------------------------------------------------------------------------------


def timed(fn: Any, runs: int = 3) -> tuple[float, float, Any]:
    """(first call s, best s, last result)."""
    times, result = [], None
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times[0], min(times), result


def queries(path: Path, runs: int, compare_rows: bool = False) -> dict[str, Any]:
    import llmkit

    with llmkit.Client(ledger=str(path), health_interval=None) as client:
        summary = timed(lambda: client.cost_summary(scope="all"), runs)
        day = timed(lambda: client.usage(since="1d"), runs)
        by_day = timed(lambda: client.cost_summary(by="day", scope="all"), runs)
        meta = timed(lambda: client.cost_summary(by="meta.experiment", since="7d"), 1)
        full = timed(lambda: client.usage(scope="all"), 1)
    rows = (0.0, 0.0)
    if compare_rows:  # the same read from the rows alone (no blocks): what the first version's layout costs
        copy = path.with_name("rows-only.sqlite3")
        src, dst = sqlite3.connect(path), sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.execute("DELETE FROM request_blocks")
        dst.commit()
        dst.close()
        behind, ledger_queries.PACK_ON_READ = ledger_queries.PACK_ON_READ, 10**12  # read, don't pack
        try:
            with llmkit.Client(ledger=str(copy), health_interval=None) as client:
                rows = timed(lambda: len(client.usage(scope="all")), 1)[:2]
        finally:
            ledger_queries.PACK_ON_READ = behind
            copy.unlink()
    return {"rows_only": rows, "summary": summary[:2], "summary_rows": int(summary[2]["requests"].sum()),
            "day": day[:2], "day_rows": len(day[2]), "by_day": by_day[:2], "meta_7d": meta[:2],
            "all": full[:2], "all_rows": len(full[2])}


# -- one long session ----------------------------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def session_memory(ledger: str | None, n: int, checkpoints: int = 4) -> dict[str, Any]:
    """RSS growth after each n/checkpoints requests of one client on the mock (gathered acompletion);
    run in a fresh process (``--session``) so one run's freed memory does not hide the next one's."""
    import llmkit

    client = llmkit.Client([{"name": "m", "adapter": "mock", "max_concurrency": 256}], ledger=ledger,
                           health_interval=None, max_events=1000)
    msgs = [{"role": "user", "content": "hi"}]

    async def batch(k: int) -> None:
        await asyncio.gather(*(client.acompletion(model="m", messages=msgs) for _ in range(k)))

    gc.collect()
    base = rss_bytes()
    points = []
    step = n // checkpoints
    size = min(500, step)
    t0 = time.perf_counter()
    for c in range(checkpoints):
        for _ in range(step // size):
            asyncio.run(batch(size))
        gc.collect()
        points.append(((c + 1) * step, rss_bytes() - base))
    rate = n / (time.perf_counter() - t0)
    held = len(client.monitor.records_from(0)[1]["request_id"])
    client.close()
    return {"points": points, "rate": rate, "held": held}


def session_in_fresh_process(ledger: str | None, n: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--session", ledger or ":none:", "--requests", str(n)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


# -- the first version's measures, kept ------------------------------------------------------------


def record(i: int, now: float) -> LedgerRecord:
    provider, model, requested, cost = PROVIDERS[i % 3]
    error = i % 20 == 0
    return LedgerRecord(
        request_id=new_request_id(), time=now + i * 0.01, started=now + i * 0.01 - 0.8, provider=provider,
        model=model, requested_model=requested, status="error" if error else "ok",
        error_type="ServerError" if error else None, error_message="[openai] internal server error" if error else None,
        input_tokens=1200 + i % 500, output_tokens=300 + i % 200, cache_read_tokens=(i % 4) * 256,
        cache_write_tokens=0, reasoning_tokens=0, usage_estimated=False, cost_usd=cost, latency_s=0.8 + (i % 50) / 100,
        attempts=2 if error else 1, fallback=i % 33 == 0, stream=i % 5 == 0, priority=0,
        metadata={"team": "search", "experiment": "ab-7"} if i % 2 else None,
    )


def bytes_per_record(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    ledger = Ledger(None)
    now = time.time()
    for i in range(n):
        ledger.append_sync(record(i, now))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


async def _append_concurrently(ledger: Ledger, records: list[LedgerRecord], concurrency: int) -> None:
    it = iter(records)

    async def worker() -> None:
        for r in it:
            await ledger.append(r)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def append_and_lag(n: int) -> tuple[float, float]:
    """(async appends/s at 64 concurrent, event-loop lag p99 s) on a temp SQLite file."""
    now = time.time()
    records = [record(i, now) for i in range(n)]

    async def run() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        with tempfile.TemporaryDirectory() as tmp:
            ledger = Ledger(Path(tmp) / "bench.sqlite3")
            t0 = time.perf_counter()
            work = asyncio.ensure_future(_append_concurrently(ledger, records, 64))
            lags: list[float] = []
            while not work.done():
                expected = loop.time() + 0.001
                await asyncio.sleep(0.001)
                lags.append(max(0.0, loop.time() - expected))
            await work
            rate = n / (time.perf_counter() - t0)
            ledger.close()
        lags.sort()
        return rate, lags[int(len(lags) * 0.99) - 1] if lags else 0.0

    return asyncio.run(run())


def append_cost(n: int) -> dict[str, float]:
    """p50 µs of one awaited ``Ledger.append`` (calls spaced out: committed inline) on files with the
    schema before this issue (m001-m003, as on main) and with m004, two of each, interleaved in one loop; and of one
    budget check (``Budget.reserve`` + ``release``) on a memory ledger and on a file."""
    from llmkit.ledger import migrations
    from llmkit.routing.budget import Budget

    def rec(i: int) -> LedgerRecord:
        t = time.time()
        return LedgerRecord(f"a-{i}", t, t - 0.5, "openai", "gpt-4o", "gpt-4o", "ok", None, None, 1200, 300, 0, 0, 0,
                            False, 0.0042, 0.5, 1, False, False, 0, {"experiment": "x"} if i % 2 else None)

    def open_ledger(path: Path, first_version: bool) -> Ledger:
        keep = migrations.MIGRATIONS
        if first_version:
            migrations.MIGRATIONS = [m for m in keep if m.__name__ < "m004"]
        try:
            return Ledger(path)
        finally:
            migrations.MIGRATIONS = keep

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ledgers = [(name, open_ledger(Path(tmp) / f"{name}-{k}.sqlite3", name == "before m004"))
                   for k in range(2) for name in (("before m004", "with m004") if k else ("with m004", "before m004"))]
        samples: dict[str, list[float]] = {"before m004": [], "with m004": []}

        async def run() -> None:
            for i in range(n):
                for j, (name, ledger) in enumerate(ledgers):
                    await asyncio.sleep(0.0003)  # spaced out, as sequential calls are: inline commits
                    t0 = time.perf_counter()
                    await ledger.append(rec(4 * i + j))
                    samples[name].append(time.perf_counter() - t0)

        asyncio.run(run())
        for name, values in samples.items():
            out[f"append {name}"] = statistics.median(values) * 1e6
        current = next(led for name, led in ledgers if name == "with m004")
        for name, ledger in (("memory ledger", Ledger(None)), ("ledger file", current)):
            budget = Budget(100.0, "month", ledger)
            times = []
            for _ in range(n):
                t0 = time.perf_counter()
                budget.release(budget.reserve(0.001))
                times.append(time.perf_counter() - t0)
            out[f"budget check, {name}"] = statistics.median(times) * 1e6
        for _, ledger in ledgers:
            ledger.close()
    return out


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.records or (50_000 if args.quick else 1_000_000)
    requests = args.requests or (4_000 if args.quick else 300_000)
    scale = n / 1_000_000
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-ledger-") as tmp:
        empty, big = Path(tmp) / "empty.sqlite3", Path(tmp) / "big.sqlite3"
        make_ledger(empty, 0)
        made, packed = make_ledger(big, n)
        size = big.stat().st_size / 2**20
        print(f"made a ledger of {n:,} records in {made:.1f} s, packed its column blocks in {packed:.1f} s "
              f"({size:,.0f} MiB in all)")
        runs = 3 if args.quick else 5
        opened = {"empty": open_in_fresh_processes(empty, runs), "big": open_in_fresh_processes(big, runs)}
        q = {"empty": queries(empty, 3), "big": queries(big, 3, compare_rows=True)}
        file_session = session_in_fresh_process(str(Path(tmp) / "session.sqlite3"), requests)
        memory_session = session_in_fresh_process(None, requests)
    per_record = bytes_per_record(10_000 if args.quick else 100_000)
    rate, lag = append_and_lag(3_000 if args.quick else 30_000)
    per_call = append_cost(300 if args.quick else 2_000)

    def side(name: str, f: Any) -> None:
        print(f"{name:<52} {f('empty'):>14} {f('big'):>14}")

    print(f"\n{'':<52} {'empty':>14} {f'{n:,} records':>14}")
    side("Client() construction (median, fresh process)", lambda k: f"{opened[k]['seconds'] * 1e3:,.1f} ms")
    side("process RSS growth over construction", lambda k: f"{opened[k]['rss_growth'] / 2**20:,.1f} MiB")
    side('cost_summary(scope="all"), first / best',
         lambda k: f"{q[k]['summary'][0]:.3f}/{q[k]['summary'][1]:.3f} s")
    side('cost_summary(by="day", scope="all"), best', lambda k: f"{q[k]['by_day'][1]:.3f} s")
    side('usage(since="1d"), first / best', lambda k: f"{q[k]['day'][0]:.3f}/{q[k]['day'][1]:.3f} s")
    side('  rows returned', lambda k: f"{q[k]['day_rows']:,}")
    side('cost_summary(by="meta.experiment", since="7d")', lambda k: f"{q[k]['meta_7d'][0]:.3f} s")
    side('usage(scope="all") (column blocks + rows past them)', lambda k: f"{q[k]['all'][0]:.3f} s")
    side('  the same read from the rows alone (no blocks)', lambda k: f"{q[k]['rows_only'][0]:.3f} s")
    print("\nRSS growth of one session on the mock, after k requests (file ledger | ledger=None):")
    for (k, grown), (_, mem) in zip(file_session["points"], memory_session["points"], strict=True):
        print(f"  {k:>9,}: {grown / 2**20:8.1f} MiB | {mem / 2**20:8.1f} MiB")
    print(f"  records held in memory at the end: {file_session['held']:,} | {memory_session['held']:,}; "
          f"{file_session['rate']:,.0f} | {memory_session['rate']:,.0f} req/s")
    print(f"memory per record (ledger=None, tracemalloc): {per_record:,.0f} B")
    print(f"SQLite async append, 64 concurrent: {rate:,.0f} /s; event-loop lag p99 meanwhile {lag * 1e3:.2f} ms")
    print("per call, p50 (interleaved): " + "; ".join(f"{k} {v:,.1f} µs" for k, v in per_call.items()))

    construct = opened["big"]["seconds"] - opened["empty"]["seconds"]
    rss = opened["big"]["rss_growth"] - opened["empty"]["rss_growth"]
    session_growth = file_session["points"][-1][1]
    goals = [
        goal(f"Client() with {n:,} records vs empty", "≤ +50 ms", f"{construct * 1e3:+,.1f} ms", construct <= 0.05),
        goal(f"RSS after Client(), {n:,} records vs empty", "≤ +20 MB", f"{rss / 1e6:+,.1f} MB", rss <= 20e6),
        goal(f'cost_summary(scope="all") at {n:,}', "≤ 0.5 s", f"{q['big']['summary'][0]:.3f} s",
             q["big"]["summary"][0] <= 0.5),
        goal(f'usage(since="1d"): {q["big"]["day_rows"]:,} of {n:,}', "≤ 0.2 s", f"{q['big']['day'][0]:.3f} s",
             q["big"]["day"][0] <= 0.2),
        goal(f'usage(scope="all") at {n:,}', f"≤ {3 * scale:g} s", f"{q['big']['all'][0]:.2f} s",
             q["big"]["all"][0] <= 3 * scale),
        goal(f"RSS growth of a session of {requests:,} requests (file ledger)", "≤ 100 MB",
             f"{session_growth / 1e6:,.1f} MB", session_growth <= 100e6),
        goal("memory per record (ledger=None)", "< 500 B", f"{per_record:,.0f} B", per_record < 500),
        goal("event-loop lag p99 while the ledger writes", "< 5 ms", f"{lag * 1e3:.2f} ms", lag < 0.005),
        goal("ledger append per call, with m004 vs before", "no worse",
             f"{per_call['append with m004']:,.1f} vs {per_call['append before m004']:,.1f} µs", None),
    ]
    print_goals(goals)
    return {"benchmark": "ledger", "machine": machine(), "records": n, "opened": opened, "queries": q,
            "session_file": file_session, "session_memory": memory_session, "bytes_per_record": per_record,
            "append_rate": rate, "lag_p99": lag, "per_call_us": per_call, "goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run (fewer records and requests)")
    parser.add_argument("--records", type=int, default=0, help="records in the big ledger")
    parser.add_argument("--requests", type=int, default=0, help="requests of the long session")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--session", help=argparse.SUPPRESS)  # internal: one long session, in this process
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.session:
        print(json.dumps(session_memory(None if args.session == ":none:" else args.session, args.requests)))
        return 0
    result = run(args)
    write_json(args.json, result)
    return 1 if args.check and any(g["met"] is False for g in result["goals"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
