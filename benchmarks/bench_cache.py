"""The response cache: hit latency vs a miss, the lookup's cost on a miss, hits/s under load, a 100k-entry file.

All on loopback: a fake OpenAI server in a process of its own answers the misses; the cache is a SQLite
file in a temp dir. Measured side by side, in interleaved rounds so drift hits every variant alike:

- a miss with the cache off, a miss with the cache on (every call a new question: lookup, then the
  answer is stored), and a warm hit (sync ``completion``), with ``ledger=None`` and with the SQLite ledger;
- the lookup alone on a miss (``ResponseCache.lookup`` on new questions, on the client's own loop);
- hits per second with 50 concurrent ``acompletion`` callers;
- a file of 100,000 entries (10,000 with ``--quick``): its size, and the time to open it and answer a
  first lookup, next to the same for a file of 1,000 entries (opening is O(1): no scan).

    python benchmarks/bench_cache.py            # ~1 minute
    python benchmarks/bench_cache.py --quick    # CI smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import API_KEY, MESSAGES, MODEL, goal, machine, print_goals, summarize, table, us, write_json

GOAL_HIT_S = 200e-6
GOAL_HIT_RATIO = 3.0
GOAL_LOOKUP_S = 50e-6
GOAL_HITS_PER_S = 10_000


def provider(url: str) -> dict[str, Any]:
    return {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url, "models": ["*"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from _common import fake_server

    import llmkit

    rounds, per_round, warmup = (3, 40, 30) if args.quick else (args.rounds, args.per_round, args.warmup)
    entries_big, entries_small = (10_000, 1_000) if args.quick else (args.entries, 1_000)
    fresh = (f"question {i}" for i in itertools.count())

    with fake_server() as url, tempfile.TemporaryDirectory(prefix="llmkit-bench-cache-") as tmp:
        os.environ["LLMKIT_DATA_DIR"] = tmp
        clients = {
            "memory ledger": llmkit.Client([provider(url)], ledger=None, cache=Path(tmp) / "a.sqlite3",
                                           health_interval=None),
            "SQLite ledger": llmkit.Client([provider(url)], ledger=Path(tmp) / "ledger.sqlite3",
                                           cache=Path(tmp) / "b.sqlite3", health_interval=None),
        }

        def miss_off(c: llmkit.Client) -> Callable[[], Any]:
            return lambda: c.completion(MODEL, MESSAGES, cache=False)

        def miss_on(c: llmkit.Client) -> Callable[[], Any]:
            return lambda: c.completion(MODEL, [{"role": "user", "content": next(fresh)}])

        def hit(c: llmkit.Client) -> Callable[[], Any]:
            return lambda: c.completion(MODEL, MESSAGES)

        variants: dict[str, Callable[[], Any]] = {}
        for label, c in clients.items():
            c.completion(MODEL, MESSAGES)  # the entry every hit finds
            variants[f"miss, cache off ({label})"] = miss_off(c)
            variants[f"miss, cache on ({label})"] = miss_on(c)
            variants[f"hit ({label})"] = hit(c)

        def measure(call: Callable[[], Any], n: int) -> list[float]:
            out = []
            for _ in range(n):
                t = time.perf_counter()
                call()
                out.append(time.perf_counter() - t)
            return out

        for call in variants.values():
            measure(call, warmup)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, call in variants.items():
                samples[name] += measure(call, per_round)
        assert all(clients["memory ledger"].completion(MODEL, MESSAGES).cached for _ in range(3))

        lookups = lookup_on_miss(clients["memory ledger"], rounds * per_round)
        n_hits = 2_000 if args.quick else args.hits
        mock = llmkit.Client([{"name": "mock", "adapter": "mock"}], ledger=None, cache=Path(tmp) / "c.sqlite3",
                             health_interval=None)
        mock.completion(MODEL, MESSAGES)
        hits_per_s = concurrent_calls(clients["memory ledger"], 50, n_hits, hit=True)
        hits_per_s_sqlite = concurrent_calls(clients["SQLite ledger"], 50, n_hits, hit=True)
        pipeline_per_s = concurrent_calls(mock, 50, n_hits, hit=False)
        info = clients["memory ledger"].cache_info()
        for c in [*clients.values(), mock]:
            c.close()
        files = {n: big_file(Path(tmp) / f"big-{n}.sqlite3", n) for n in (entries_small, entries_big)}

    stats = {name: summarize(s) for name, s in samples.items()}
    rows = [[name, s["n"], us(s["p50"]), us(s["p95"])] for name, s in stats.items()]
    print(f"Response cache, sequential sync completion, loopback fake OpenAI server in its own process ({machine()})")
    print(table(["variant", "calls", "p50", "p95"], rows))
    look = summarize(lookups)
    print(f"\nlookup alone on a miss (key + SQLite read, on the client's loop): p50 {us(look['p50'])}, "
          f"p95 {us(look['p95'])} over {look['n']} lookups")
    print()
    print(table(["50 concurrent acompletion callers", "calls", "per second", "p50", "CPU/call"],
                [[label, res["requests"], f"{res['rps']:,.0f}", us(res["p50"]), us(res["cpu_per_request"])]
                 for label, res in (("hits (memory ledger)", hits_per_s), ("hits (SQLite ledger)", hits_per_s_sqlite),
                                    ("reference: mock pipeline, cache off, no HTTP", pipeline_per_s))]))
    print("CPU/call: this process's CPU time (all threads) per call, steadier than wall time on a busy machine.")
    print(f"cache after the run: {info['entries']} entries, {info['size_bytes']:,} bytes of answers")
    print()
    print(table(["entries", "file size", "bytes/entry", "open + first lookup", "info()"],
                [[f"{n:,}", f"{f['file_bytes'] / 1e6:,.1f} MB", f"{f['file_bytes'] / n:,.0f}",
                  us(f["open_s"]), us(f["info_s"])] for n, f in files.items()],
                title="A large cache file (each entry a ~600-byte answer)"))

    goals = []
    for label in clients:
        h, m = stats[f"hit ({label})"]["p50"], stats[f"miss, cache off ({label})"]["p50"]
        goals.append(goal(f"hit p50, sync completion ({label})", "≤ 200 µs", us(h), h <= GOAL_HIT_S))
        goals.append(goal(f"hit vs miss, p50 ({label})", "≥ 3x faster", f"{m / h:.1f}x ({us(h)} vs {us(m)})",
                          m / h >= GOAL_HIT_RATIO))
    goals.append(goal("lookup added to a miss, p50", "≤ 50 µs", us(look["p50"]), look["p50"] <= GOAL_LOOKUP_S))
    for label in clients:
        on, off = stats[f"miss, cache on ({label})"]["p50"], stats[f"miss, cache off ({label})"]["p50"]
        goals.append(goal(f"  miss end to end, cache on - off, p50 ({label})", "-", f"{(on - off) * 1e6:+,.0f} µs",
                          None))
    goals.append(goal("hits/s, 50 concurrent async callers (memory ledger)", "≥ 10,000/s",
                      f"{hits_per_s['rps']:,.0f}/s", hits_per_s["rps"] >= GOAL_HITS_PER_S))
    goals.append(goal("hits/s, 50 concurrent async callers (SQLite ledger)", "≥ 10,000/s",
                      f"{hits_per_s_sqlite['rps']:,.0f}/s", hits_per_s_sqlite["rps"] >= GOAL_HITS_PER_S))
    small, big = files[entries_small], files[entries_big]
    goals.append(goal(f"open + first lookup, {entries_big:,} vs {entries_small:,} entries", "O(1)",
                      f"{us(big['open_s'])} vs {us(small['open_s'])}; {big['file_bytes'] / 1e6:,.1f} MB",
                      big["open_s"] < max(5 * small["open_s"], 0.005)))
    print_goals(goals)
    return {"benchmark": "cache", "machine": machine(), "stats": stats, "lookup": look, "hits_per_s": hits_per_s,
            "pipeline_per_s": pipeline_per_s,
            "hits_per_s_sqlite": hits_per_s_sqlite, "files": {str(k): v for k, v in files.items()}, "goals": goals}


def lookup_on_miss(client: Any, n: int) -> list[float]:
    """``ResponseCache.lookup`` timed on the client's loop for ``n`` questions it has never seen."""
    from llmkit._validate import build_request

    service = client._service  # diagnostic: the cache's own step, without the call around it
    requests = [build_request(MODEL, [{"role": "user", "content": f"never asked {i}"}]) for i in range(n)]

    async def go() -> list[float]:
        out = []
        for request in requests:
            t = time.perf_counter()
            assert service.cache.lookup(request) is None
            out.append(time.perf_counter() - t)
        return out

    return client._loop.run(go())  # type: ignore[no-any-return]


def concurrent_calls(client: Any, concurrency: int, n: int, hit: bool) -> dict[str, Any]:
    """``n`` calls of one question by ``concurrency`` callers: all hits, or all sent (``cache=False``)."""
    from _common import concurrent

    options = {} if hit else {"cache": False}  # the clients cache by default

    async def call() -> None:
        resp = await client.acompletion(MODEL, MESSAGES, **options)
        assert resp.cached is hit

    async def go() -> dict[str, Any]:
        await concurrent(call, concurrency, min(n, 500))  # warm up
        return await concurrent(call, concurrency, n)

    return asyncio.run(go())


def big_file(path: Path, n: int) -> dict[str, float]:
    """Write ``n`` entries of realistic size, close, then time opening the file and a first lookup."""
    import hashlib

    from llmkit.cache import Entry, open_backend

    payload = (b'{"v":1,"content":"' + b"x" * 450 + b'","provider":"openai","model":"gpt-4o-mini-2024-07-18",'
               b'"finish_reason":"stop","usage":[20,120,0,0,0,false,false],"cost_usd":7.5e-05,"tool_calls":[],'
               b'"raw":null}')
    backend = open_backend(path)
    for i in range(n):
        backend.store(hashlib.sha256(str(i).encode()).hexdigest(), Entry(payload, 1.0, 7.5e-05))
    backend.info()  # waits for the writer
    backend.close()
    size = sum(os.path.getsize(f"{path}{s}") for s in ("", "-wal") if os.path.exists(f"{path}{s}"))
    key = hashlib.sha256(str(n // 2).encode()).hexdigest()
    t0 = time.perf_counter()
    backend = open_backend(path)
    found = backend.lookup(key, 2.0)
    t1 = time.perf_counter()
    backend.info()
    t2 = time.perf_counter()
    backend.close()
    assert found is not None
    return {"entries": n, "file_bytes": size, "open_s": t1 - t0, "info_s": t2 - t1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: few samples, a 10k-entry file")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--per-round", type=int, default=150, help="calls per variant and round")
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--hits", type=int, default=20_000, help="hits in the concurrent run")
    parser.add_argument("--entries", type=int, default=100_000, help="entries in the large file")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
