"""Shared state on Redis: the cost per call of shared limits + breaker, and one limit across processes.

1. Overhead: sequential calls on the mock adapter through a client with a (never binding) rate limit and
   its breaker, local vs shared on a redis-server on loopback; the p50 difference is what sharing costs
   per call (goal: at most 300 µs).
2. One limit, four processes: 4 processes x 200 requests at "20/second" shared; each records when its
   calls ran (the system-wide monotonic clock). The figures: the most calls in any 1 s window (goal: never
   above 20) and the total time (goal: within 10% of 800/20 = 40 s). ``--quick`` sends 4 x 15.
3. ``embed`` of 3,000 texts all cached in Redis (``cache="redis"``), next to the same on ``":memory:"``, with a
   completion sent meanwhile: the lookups are batched (one script call per 1,000 texts) and run off the
   client's loop, so the completion does not wait for them (goal: its latency at most 50 ms). ``--quick``
   embeds 1,000.

It starts its own redis-server (``llmkit.testing.redis_server``) and skips, saying so, when none is installed.

    python benchmarks/bench_shared.py [--quick] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import goal, machine, percentile, print_goals, table, us, write_json

import llmkit
from llmkit.testing.redis_server import RedisServer

MESSAGES = [{"role": "user", "content": "hi"}]
NEVER_BINDS = {"count": 1_000_000, "period": "second", "burst": 1_000_000}


def latencies(shared_state: str, n: int) -> tuple[list[float], list[float]]:
    """Per-call latencies of a local and a shared client, measured in alternating rounds (so that a change
    in the machine's load hits both alike)."""
    provider = {"name": "m", "adapter": "mock", "rate_limit": NEVER_BINDS, "max_retries": 0}
    out: tuple[list[float], list[float]] = ([], [])
    with llmkit.Client(providers=[provider], ledger=None, health_interval=None) as local, \
            llmkit.Client(providers=[provider], ledger=None, health_interval=None, shared_state=shared_state) as shared:
        clients = (local, shared)
        for c in clients:
            for _ in range(max(20, n // 10)):  # warm up: connections, scripts
                c.completion(model="x", messages=MESSAGES)
        rounds = 10
        for _ in range(rounds):
            for c, samples in zip(clients, out, strict=True):
                for _ in range(n // rounds):
                    t = time.perf_counter()
                    c.completion(model="x", messages=MESSAGES)
                    samples.append(time.perf_counter() - t)
        states = [e.detail["state"] for e in shared.event_list("shared_state")]
        assert states == ["up"], f"Redis went away during the run: {states}"
    return out


def worker(url: str, requests: int, start_at: float) -> None:
    """One of the processes on the shared limit: prints its calls' end times (monotonic) as JSON."""
    provider = {"name": "m", "adapter": "mock", "rate_limit": "20/second", "max_retries": 0}
    times = []
    with llmkit.Client(providers=[provider], ledger=None, health_interval=None, shared_state=url,
                       namespace="bench") as c:
        c.completion(model="warm-up", messages=MESSAGES, provider="m")
        time.sleep(max(0.0, start_at - time.time()))
        for _ in range(requests):
            c.completion(model="x", messages=MESSAGES)
            times.append(time.monotonic())
    print(json.dumps(times))


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def one_limit(url: str, processes: int, requests: int) -> dict[str, Any]:
    start_at = time.time() + 3.0
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", url, str(requests), repr(start_at)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    times: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=requests * processes / 20 * 2 + 60)
        if proc.returncode != 0:
            raise RuntimeError(f"a worker failed (exit code {proc.returncode})")
        times += json.loads(out.strip().splitlines()[-1])
    times.sort()
    ideal = len(times) / 20  # the yardstick: 800 / 20 = 40 s
    return {"calls": len(times), "most_in_1s": most_in_window(times, 1.0), "seconds": times[-1] - times[0],
            "ideal_seconds": ideal}


def cached_embed(url: str, n: int) -> dict[str, float]:
    """Seconds for an ``embed`` of ``n`` texts all cached, and a completion's latency sent meanwhile, per cache."""
    import threading

    provider = {"name": "m", "adapter": "mock", "models": ["*"], "options": {"embedding_dimensions": 64}}
    texts = [f"text {i}" for i in range(n)]
    out: dict[str, float] = {}
    for cache in (":memory:", "redis"):
        with llmkit.Client([provider], ledger=None, health_interval=None, cache=cache, shared_state=url,
                           namespace="bench-embed") as client:
            client.embed(texts, model="e", progress=False)  # fills the cache
            started = threading.Event()
            latency: list[float] = []

            def probe(client: llmkit.Client = client, started: threading.Event = started,
                      latency: list[float] = latency) -> None:
                started.wait()
                t0 = time.perf_counter()
                client.completion(model="x", messages=MESSAGES, cache=False)
                latency.append(time.perf_counter() - t0)

            thread = threading.Thread(target=probe)
            thread.start()
            t0 = time.perf_counter()
            started.set()
            again = client.embed(texts, model="e", progress=False)
            out[f"{cache}_embed_s"] = time.perf_counter() - t0
            thread.join()
            out[f"{cache}_completion_s"] = latency[0]
            assert again.attrs["embed"]["cached"] == n
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    if not RedisServer.available():
        print("redis-server is not installed: bench_shared skipped (apt-get install redis-server)")
        return {"benchmark": "shared", "machine": machine(), "skipped": "no redis-server", "goals": [
            goal("shared limits+breaker overhead p50", "≤ 300 µs", "no redis-server", None)]}
    n = 300 if args.quick else 3000
    per_process = 15 if args.quick else 200
    with RedisServer() as server:
        local, shared = latencies(server.url, n)
        overhead = percentile(shared, 50) - percentile(local, 50)
        print(table(["client", "p50", "p95"], [
            ["local limits + breaker", us(percentile(local, 50)), us(percentile(local, 95))],
            ["shared on Redis (loopback)", us(percentile(shared, 50)), us(percentile(shared, 95))],
            ["difference", us(overhead), us(percentile(shared, 95) - percentile(local, 95))],
        ], title=f"Sequential calls on the mock adapter ({n} each, in alternating rounds)"))
        limit = one_limit(server.url, 4, per_process)
        texts = 1000 if args.quick else 3000
        embed = cached_embed(server.url, texts)
    print()
    print(table(["processes x requests", "most in any 1 s", "total time", "ideal n/20"], [
        [f"4 x {per_process}", limit["most_in_1s"], f"{limit['seconds']:.2f} s", f"{limit['ideal_seconds']:.2f} s"],
    ], title='One shared "20/second" limit'))
    print()
    print(table(["cache", "embed, all cached", "a completion meanwhile"], [
        [name, f"{embed[name + '_embed_s'] * 1000:.1f} ms", f"{embed[name + '_completion_s'] * 1000:.1f} ms"]
        for name in (":memory:", "redis")], title=f"embed of {texts} texts served from the per-text cache"))
    ratio = limit["seconds"] / limit["ideal_seconds"]
    goals = [
        goal("shared limits+breaker overhead p50", "≤ 300 µs", us(overhead), overhead <= 300e-6),
        goal(f'4 x {per_process} at "20/second" shared: most in any 1 s', "≤ 20", str(limit["most_in_1s"]),
             limit["most_in_1s"] <= 20),
        goal(f"4 x {per_process}: total time vs {limit['ideal_seconds']:.1f} s", "within 10%", f"{ratio:.3f}x",
             abs(ratio - 1) <= 0.10),
        goal(f"a completion during a cached embed of {texts} texts on Redis", "≤ 50 ms",
             f"{embed['redis_completion_s'] * 1000:.1f} ms", embed["redis_completion_s"] <= 0.05),
    ]
    print_goals(goals)
    return {"benchmark": "shared", "machine": machine(), "overhead_p50_s": overhead,
            "local_p50_s": percentile(local, 50), "shared_p50_s": percentile(shared, 50), "limit": limit,
            "embed": embed, "goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: fewer calls, 4 x 15 requests")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--worker", nargs=3, metavar=("URL", "REQUESTS", "START_AT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), float(args.worker[2]))
        return 0
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
