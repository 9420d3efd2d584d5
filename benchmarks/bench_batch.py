"""``client.map`` over many rows: latency-bound, rate-limited, and CPU-bound (the mock), side by side.

1. 1,000 rows against a loopback fake OpenAI server (its own process) answering in 100 ms, no rate
   limit set: the default concurrency must not throttle it. Goal: at most 2 s.
2. The same server with ``rate_limit="50/second"`` on the provider: paced at the limit (within 5%),
   and never more than 50 starts in any rolling second (a server enforcing it would send no 429).
3. 100,000 rows on the in-process mock (no HTTP): at least 5,000 rows/s, RSS growth at most 300 MB,
   and the progress bar (tqdm, drawn to a null device) costing under 5%.

    python benchmarks/bench_batch.py            # ~1 minute
    python benchmarks/bench_batch.py --quick    # CI smoke run (fewer rows)
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import API_KEY, MODEL, fake_server, goal, machine, print_goals, table, write_json

PRICES = {MODEL: {"input": 0.15, "output": 0.6}}


def rss_mb() -> float:
    """This process's resident memory now (MB), from /proc (peak from getrusage where /proc is missing)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def latency_bound(url: str, rows: int) -> dict[str, Any]:
    """``rows`` rows against the server at ``url``: a cold run (the pool opens its connections), then warm."""
    import llmkit

    provider = {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url, "models": ["*"],
                "pricing": PRICES}
    out: dict[str, Any] = {"rows": rows}
    with llmkit.Client([provider], ledger=None, health_interval=None) as client:
        client.map(["warm up"], model=MODEL, progress=False, cache=False)
        for run in ("cold", "warm"):
            t0, c0 = time.perf_counter(), time.process_time()
            frame = client.map([f"Classify review number {i}" for i in range(rows)], model=MODEL, progress=False,
                               cache=False)
            out[run] = time.perf_counter() - t0
            out[f"{run}_cpu"] = time.process_time() - c0  # this process only (the server runs in its own)
            out[f"{run}_ok"] = int((frame["status"] == "ok").sum())
    return out


def paced(rows: int) -> dict[str, Any]:
    """``rows`` rows with ``rate_limit="50/second"``; arrival times recorded by an in-process fake server."""
    import llmkit
    from llmkit.testing import FakeOpenAIServer

    arrivals: list[float] = []

    def reply(body: Any) -> str:
        arrivals.append(time.monotonic())
        return "positive"

    with FakeOpenAIServer(reply=reply, latency=0.1) as server:
        provider = {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": server.url,
                    "models": ["*"], "pricing": PRICES, "rate_limit": "50/second"}
        with llmkit.Client([provider], ledger=None, health_interval=None) as client:
            t0 = time.perf_counter()
            frame = client.map([f"Classify review number {i}" for i in range(rows)], model=MODEL, progress=False,
                               cache=False)
            elapsed = time.perf_counter() - t0
    arrivals.sort()
    most, j = 0, 0
    for i, t in enumerate(arrivals):  # most arrivals within any rolling second
        while arrivals[j] <= t - 1.0:
            j += 1
        most = max(most, i - j + 1)
    span = arrivals[-1] - arrivals[0]
    return {"rows": rows, "seconds": elapsed, "ok": int((frame["status"] == "ok").sum()),
            "rate": (len(arrivals) - 1) / span if span else float("nan"), "most_per_second": most}


def gathered(rows: int) -> tuple[float, float]:
    """Reference: the same mock rows as ``asyncio.gather`` of ``acompletion`` in batches of 100 (rows/s)."""
    import asyncio

    import llmkit

    with llmkit.Client([{"name": "mock", "adapter": "mock", "pricing": PRICES}], ledger=None,
                       health_interval=None) as client:
        async def go() -> tuple[float, float]:
            t0, c0 = time.perf_counter(), time.process_time()
            for start in range(0, rows, 100):
                await asyncio.gather(*(client.acompletion(MODEL, [{"role": "user", "content": f"Classify: review {i}"}])
                                       for i in range(start, min(rows, start + 100))))
            return rows / (time.perf_counter() - t0), (time.process_time() - c0) / rows

        return asyncio.run(go())


def mock_rows(rows: int, progress: Any) -> dict[str, Any]:
    import pandas as pd

    import llmkit

    series = pd.Series([f"review {i}: the food was fine" for i in range(rows)], name="review")
    with llmkit.Client([{"name": "mock", "adapter": "mock", "pricing": PRICES}], ledger=None,
                       health_interval=None) as client:
        client.map(series.iloc[:500], model=MODEL, prompt="Classify: {}", progress=False, cache=False)  # warm up
        rss0 = rss_mb()
        t0, c0 = time.perf_counter(), time.process_time()
        out = client.map(series, model=MODEL, prompt="Classify: {}", progress=progress, cache=False)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        rss1 = rss_mb()
        ok = int((out["status"] == "ok").sum())
        del out
    return {"rows": rows, "seconds": elapsed, "rps": rows / elapsed, "ok": ok, "rss_growth_mb": rss1 - rss0,
            "cpu_per_row": cpu / rows}


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with fake_server(latency=0.1) as url:
        results["latency"] = latency_bound(url, args.rows)
    results["paced"] = paced(args.paced_rows)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - kept open for both runs
    try:
        quiet, shown = [], []
        for _ in range(args.rounds):  # interleaved, so a change in the machine's load hits both alike
            quiet.append(mock_rows(args.mock_rows, False))
            shown.append(mock_rows(args.mock_rows, {"file": devnull, "mininterval": 0.1}))
    finally:
        devnull.close()
    reference, reference_cpu = gathered(args.mock_rows)
    best_quiet = max(quiet, key=lambda r: r["rps"])
    best_shown = max(shown, key=lambda r: r["rps"])
    results["mock"] = {"progress_off": quiet, "progress_on": shown, "gathered_acompletion_rps": reference,
                       "gathered_acompletion_cpu_per_row": reference_cpu}
    lat, pace = results["latency"], results["paced"]
    # the bar's cost in CPU time a row (wall time on a shared machine moves more than the bar costs)
    cpu_off = statistics.median(r["cpu_per_row"] for r in quiet)
    cpu_on = statistics.median(r["cpu_per_row"] for r in shown)
    cost = cpu_on / cpu_off - 1.0
    wall_cost = 1.0 - best_shown["rps"] / best_quiet["rps"]
    growth = max(r["rss_growth_mb"] for r in quiet + shown)
    load = os.getloadavg()[0]

    print(f"client.map benchmark ({machine()}, load average {load:.1f})")
    print(table(["run", "rows", "seconds", "rows/s", "ok", "note"], [
        ["loopback fake, 100 ms, no rate limit: cold", lat["rows"], f"{lat['cold']:.2f}",
         f"{lat['rows'] / lat['cold']:,.0f}", lat["cold_ok"], f"opens its connections; CPU {lat['cold_cpu']:.2f} s"],
        ["loopback fake, 100 ms, no rate limit: warm", lat["rows"], f"{lat['warm']:.2f}",
         f"{lat['rows'] / lat['warm']:,.0f}", lat["warm_ok"], f"CPU {lat['warm_cpu']:.2f} s"],
        ["loopback fake, 100 ms, rate_limit 50/second", pace["rows"], f"{pace['seconds']:.2f}",
         f"{pace['rate']:,.1f}", pace["ok"], f"most arrivals in any second: {pace['most_per_second']}"],
        *[[f"mock, progress {'on' if r in shown else 'off'}", r["rows"], f"{r['seconds']:.2f}", f"{r['rps']:,.0f}",
           r["ok"], f"RSS +{r['rss_growth_mb']:.0f} MB, CPU {r['cpu_per_row'] * 1e6:.0f} µs a row"]
          for r in quiet + shown],
        ["mock, gathered acompletion (reference)", args.mock_rows, "", f"{reference:,.0f}", "",
         f"no map, CPU {reference_cpu * 1e6:.0f} µs a row"],
    ]))
    scale = lat["rows"] / 1000
    goals = [
        goal(f"{lat['rows']:,} rows, 100 ms server, no rate limit (best of cold / warm)", f"≤ {2 * scale:g} s",
             f"{lat['cold']:.2f} / {lat['warm']:.2f} s",
             min(lat["cold"], lat["warm"]) <= 2.0 * scale and lat["cold_ok"] == lat["warm_ok"] == lat["rows"]),
        goal("rate_limit 50/second: pace", "50/s ± 5%, ≤ 50 in any second",
             f"{pace['rate']:.1f}/s, most {pace['most_per_second']} in a second",
             abs(pace["rate"] - 50) <= 2.5 and pace["most_per_second"] <= 50 and pace["ok"] == pace["rows"]),
        goal(f"{args.mock_rows:,} rows on the mock", "≥ 5,000 rows/s", f"{best_quiet['rps']:,.0f} rows/s "
             f"({1 / best_quiet['cpu_per_row']:,.0f}/s by CPU time; gathered acompletion: {reference:,.0f}/s)",
             best_quiet["rps"] >= 5000),
        goal("RSS growth over the mock run", "≤ 300 MB", f"{growth:.0f} MB", growth <= 300),
        goal("cost of the progress bar (CPU a row; wall time)", "< 5%",
             f"{100 * cost:+.1f}% ({100 * wall_cost:+.1f}% wall)", cost < 0.05),
    ]
    print_goals(goals)
    return {"benchmark": "batch", "machine": machine(), "results": results, "goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run")
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--paced-rows", type=int, default=300)
    parser.add_argument("--mock-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.paced_rows, args.mock_rows, args.rounds = 1000, 100, 10_000, 1
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
