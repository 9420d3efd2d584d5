"""1,000 concurrent callers on a slow (200 ms) loopback server, no rate limit configured: bounded by the server?

llmkit with a provider configured with nothing but its URL (the default ``max_concurrency``, no
``rate_limit``) and, side by side in the same run, raw ``httpx.AsyncClient`` pools of 4 connections taken in turn
(the check that the fake server and this machine can carry the load at all). Goal (issue 16): llmkit
reaches at least 90% of 1,000 / 0.2 s = 5,000 req/s, i.e. 4,500 req/s; the ratio to raw httpx shows
how much of any shortfall is llmkit's own.

    python benchmarks/bench_scale.py            # ~1 minute
    python benchmarks/bench_scale.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    API_KEY,
    MESSAGES,
    MODEL,
    concurrent,
    fake_server,
    goal,
    machine,
    print_goals,
    provider_connections,
    table,
    write_json,
)


async def raw_run(url: str, callers: int, n: int) -> dict[str, Any]:
    """Raw httpx at its best here: pools of 4 connections taken in turn (one pool of 1,000 connections
    spends milliseconds of CPU a request in httpcore's pool bookkeeping, encode/httpcore#1035)."""
    import itertools

    import httpx

    headers = {"accept": "application/json", "authorization": f"Bearer {API_KEY}"}
    clients = [httpx.AsyncClient(headers=headers, timeout=60.0,
                                 limits=httpx.Limits(max_connections=4, max_keepalive_connections=4))
               for _ in range(max(1, callers // 4))]
    turn = itertools.cycle(clients)
    try:
        async def call() -> None:
            resp = await next(turn).post(f"{url}/chat/completions", json={"model": MODEL, "messages": MESSAGES})
            resp.raise_for_status()
            resp.json()

        return await concurrent(call, callers, n, max_seconds=120.0)
    finally:
        for client in clients:
            await client.aclose()


async def llmkit_run(url: str, callers: int, n: int) -> dict[str, Any]:
    import llmkit

    provider = {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url, "models": ["*"]}
    client = llmkit.Client(providers=[provider], ledger=None, health_interval=None)
    try:
        async def call() -> None:
            await client.acompletion(model=MODEL, messages=MESSAGES)

        row = await concurrent(call, callers, n, max_seconds=120.0)
        row["connections"] = provider_connections(client.provider("fake"))
        row["cap"] = client.provider("fake").config.max_concurrency
    finally:
        await client.aclose()
    return row


def run(args: argparse.Namespace) -> dict[str, Any]:
    ideal = args.callers / args.latency
    rows: dict[str, list[dict[str, Any]]] = {"raw httpx (pools of 4)": [], "llmkit (defaults)": []}
    load0 = os.getloadavg()[0]
    with fake_server(latency=args.latency) as url:
        for _ in range(args.rounds):  # alternate, so drift in the machine's load hits both alike
            rows["raw httpx (pools of 4)"].append(asyncio.run(raw_run(url, args.callers, args.n)))
            rows["llmkit (defaults)"].append(asyncio.run(llmkit_run(url, args.callers, args.n)))
    rps = {name: statistics.median(r["rps"] for r in rs) for name, rs in rows.items()}
    print(f"{args.callers:,} concurrent callers, {args.latency * 1e3:,.0f} ms loopback server, "
          f"{args.n:,} requests a run, {args.rounds} rounds ({machine()}, load average {load0:.1f} at the start)")
    out = []
    for name, rs in rows.items():
        last = rs[-1]
        out.append([name, f"{rps[name]:,.0f}", f"{rps[name] / ideal:.0%}",
                    f"{statistics.median(r['p50'] for r in rs) * 1e3:,.0f} ms",
                    f"{statistics.median(r['cpu_per_request'] for r in rs) * 1e6:,.0f} µs",
                    sum(r["errors"] for r in rs), last.get("connections", "")])
    print(table(["variant", "req/s (median)", "of ideal", "p50", "CPU/request", "errors", "conns"], out))
    mine, raw = rps["llmkit (defaults)"], rps["raw httpx (pools of 4)"]
    errors = sum(r["errors"] for rs in rows.values() for r in rs)
    goals = [
        goal(f"{args.callers:,} callers, {args.latency * 1e3:,.0f} ms server, no rate limit: llmkit req/s",
             f"≥ {0.9 * ideal:,.0f}/s (90% of {ideal:,.0f})", f"{mine:,.0f}/s", mine >= 0.9 * ideal and not errors),
        goal(f"{args.callers:,} callers: the server's capacity (raw httpx, same run)",
             f"≥ {0.9 * ideal:,.0f}/s", f"{raw:,.0f}/s", raw >= 0.9 * ideal),
        goal(f"{args.callers:,} callers: llmkit vs raw httpx (bounded only by the server)", "≥ 90%",
             f"{mine / raw:.0%}", mine >= 0.9 * raw),
    ]
    print_goals(goals)
    return {"benchmark": "scale", "machine": machine(), "rows": rows, "ideal": ideal, "goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: 200 callers, few requests")
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency (s)")
    parser.add_argument("--n", type=int, default=5_000, help="requests a run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.callers, args.n, args.rounds = 200, 2_000, 1
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
