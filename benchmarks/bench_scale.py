"""1,000 concurrent callers on a slow (200 ms) loopback server, no rate limit configured: bounded by the server?

Goal (issue 16): llmkit, with a provider configured with nothing but its URL (the default
``max_concurrency``, no ``rate_limit``), reaches at least 90% of 1,000 / 0.2 s = 5,000 req/s, i.e.
4,500 req/s. The server is ``_fast_server.py`` (an asyncio-Protocol OpenAI fake in its own process, a
timer per request, no task or thread), cheap enough that it is not the bound. Side by side, in alternating
rounds against the same server process:

- ``asyncio streams``: a minimal HTTP/1.1 client on bare asyncio streams (one keep-alive connection a
  caller, no HTTP library): what the server and this machine carry at all.
- ``raw httpx, one client``: one ``httpx.AsyncClient``, its pool sized for every caller (1,000), the same
  headers and body as llmkit sends.
- ``raw httpx, pools of 4``: 250 clients of 4 connections taken in turn (httpcore's pool does work for
  every connection it holds on each request, encode/httpcore#1035: this is raw httpx at its best).
- ``llmkit (defaults)``: ``client.acompletion`` with the memory ledger.

Each row prints req/s, its share of the ideal 5,000, latency, the client process's CPU per request
(all threads; the GIL makes ~1 / that the most one process can carry), and the server's CPU share.
Every variant makes one call before it is timed (llmkit's first call imports its pricing tables). A run is
60,000 requests or 12 s, whichever ends first (callers finish the call they are in), so every variant runs
~12 s: well past the ramp-up of opening 1,000 connections (which costs the bare client ~5% in a 2 s run),
and the slow ones do not take minutes.

    python benchmarks/bench_scale.py            # ~2-3 minutes
    python benchmarks/bench_scale.py --quick    # CI smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    API_KEY,
    MESSAGES,
    MODEL,
    concurrent,
    fast_server,
    goal,
    machine,
    pool_size,
    print_goals,
    process_cpu,
    provider_connections,
    table,
    write_json,
)

HEADERS = {"content-type": "application/json", "accept": "application/json", "authorization": f"Bearer {API_KEY}"}
PAYLOAD = {"model": MODEL, "messages": MESSAGES}
BODY = json.dumps(PAYLOAD, separators=(",", ":")).encode()  # what httpx's ``json=`` sends


async def streams_run(url: str, callers: int, n: int, seconds: float) -> dict[str, Any]:
    """A minimal HTTP/1.1 client on asyncio streams: a request pre-rendered, the answer read by its
    ``content-length`` and parsed as JSON; idle keep-alive connections are reused, new ones opened."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    head = "".join(f"{k}: {v}\r\n" for k, v in HEADERS.items())
    request = (f"POST {parts.path}/chat/completions HTTP/1.1\r\nhost: {parts.netloc}\r\n{head}"
               f"content-length: {len(BODY)}\r\n\r\n").encode() + BODY
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    opened: list[asyncio.StreamWriter] = []

    async def call() -> None:
        if idle:
            reader, writer = idle.pop()
        else:
            reader, writer = await asyncio.open_connection(host, port)
            opened.append(writer)
        writer.write(request)
        status_and_headers = (await reader.readuntil(b"\r\n\r\n")).lower()
        if not status_and_headers.startswith(b"http/1.1 200"):
            raise RuntimeError(status_and_headers[:40].decode())
        at = status_and_headers.index(b"content-length:") + 15
        length = int(status_and_headers[at:status_and_headers.index(b"\r\n", at)])
        json.loads(await reader.readexactly(length))
        idle.append((reader, writer))

    try:
        await call()  # warm up, like every variant
        row = await concurrent(call, callers, n, max_seconds=seconds)
        row["connections"] = len(opened)
        return row
    finally:
        for writer in opened:
            writer.close()


async def httpx_run(url: str, callers: int, n: int, seconds: float, pool: int) -> dict[str, Any]:
    """Raw httpx: clients of ``pool`` connections taken in turn (one client when ``pool >= callers``)."""
    import itertools

    import httpx

    clients = [httpx.AsyncClient(headers=HEADERS, timeout=60.0,
                                 limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool))
               for _ in range(max(1, -(-callers // pool)))]
    turn = itertools.cycle(clients)
    target = f"{url}/chat/completions"
    try:
        async def call() -> None:
            resp = await next(turn).post(target, json=PAYLOAD)
            resp.raise_for_status()
            resp.json()

        await call()  # warm up, like every variant
        row = await concurrent(call, callers, n, max_seconds=seconds)
        row["connections"] = sum(pool_size(c) or 0 for c in clients)
        return row
    finally:
        for client in clients:
            await client.aclose()


async def llmkit_run(url: str, callers: int, n: int, seconds: float) -> dict[str, Any]:
    import llmkit

    provider = {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url, "models": ["*"]}
    client = llmkit.Client(providers=[provider], ledger=":memory:", health_interval=None)
    try:
        async def call() -> None:
            await client.acompletion(model=MODEL, messages=MESSAGES)

        await call()  # warm up: the first call imports the pricing tables (~150 ms of CPU)
        row = await concurrent(call, callers, n, max_seconds=seconds)
        row["connections"] = provider_connections(client.provider("fake"))
        row["cap"] = client.provider("fake").config.max_concurrency
    finally:
        await client.aclose()
    return row


Runner = Callable[[str, int, int, float], Coroutine[Any, Any, dict[str, Any]]]
STREAMS = "asyncio streams (no HTTP library)"
ONE_CLIENT = "raw httpx, one client (a connection a caller)"
POOLS_OF_4 = "raw httpx, pools of 4 in turn"
LLMKIT = "llmkit (defaults)"


def variants(callers: int) -> dict[str, Runner]:
    return {
        STREAMS: streams_run,
        ONE_CLIENT: lambda url, c, n, s: httpx_run(url, c, n, s, pool=max(callers, 1)),
        POOLS_OF_4: lambda url, c, n, s: httpx_run(url, c, n, s, pool=4),
        LLMKIT: llmkit_run,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    ideal = args.callers / args.latency
    runners = variants(args.callers)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
    load0 = os.getloadavg()[0]
    with fast_server(latency=args.latency, workers=args.workers) as (url, pid):
        for _ in range(args.rounds):  # alternate, so drift in the machine's load hits every variant alike
            for name, runner in runners.items():
                cpu0 = process_cpu(pid)
                row = asyncio.run(runner(url, args.callers, args.n, args.seconds))
                cpu1 = process_cpu(pid)
                row["server_cpu"] = (cpu1 - cpu0) / row["seconds"] if cpu0 is not None and cpu1 is not None else None
                rows[name].append(row)
    load1 = os.getloadavg()[0]
    rps = {name: statistics.median(r["rps"] for r in rs) for name, rs in rows.items()}
    print(f"{args.callers:,} concurrent callers, {args.latency * 1e3:,.0f} ms loopback server "
          f"(_fast_server.py, {args.workers} process{'es' if args.workers > 1 else ''}), {args.n:,} requests or "
          f"{args.seconds:g} s a run, "
          f"{args.rounds} rounds ({machine()}, load average {load0:.1f} at the start, {load1:.1f} at the end)")
    out = []
    for name, rs in rows.items():
        cpu = statistics.median(r["cpu_per_request"] for r in rs)
        server = [r["server_cpu"] for r in rs if r["server_cpu"] is not None]
        out.append([name, f"{rps[name]:,.0f}", " / ".join(f"{r['rps']:,.0f}" for r in rs), f"{rps[name] / ideal:.0%}",
                    f"{statistics.median(r['p50'] for r in rs) * 1e3:,.0f} ms",
                    f"{cpu * 1e6:,.0f} µs", f"{1 / cpu:,.0f}/s" if cpu else "",
                    f"{statistics.median(server):.0%}" if server else "?",
                    sum(r["errors"] for r in rs), rs[-1].get("connections", "")])
    print(table(["variant", "req/s (median)", "each round", f"of {ideal:,.0f}", "p50", "client CPU/req", "1 / CPU",
                 "server CPU", "errors", "conns"], out))
    first_error = next((r["first_error"] for rs in rows.values() for r in rs if r["first_error"]), None)
    if first_error:
        print(f"first error: {first_error}")
    mine, floor = rps[LLMKIT], rps[STREAMS]
    raw = max(rps[ONE_CLIENT], rps[POOLS_OF_4])
    best_raw = ONE_CLIENT if rps[ONE_CLIENT] >= rps[POOLS_OF_4] else POOLS_OF_4
    errors = sum(r["errors"] for rs in rows.values() for r in rs)
    target = f"≥ {0.9 * ideal:,.0f}/s (90% of {ideal:,.0f})"
    print(f"\nllmkit / raw httpx: {mine / rps[ONE_CLIENT]:.0%} of one client, {mine / rps[POOLS_OF_4]:.0%} of "
          f"pools of 4; raw httpx at its best is {raw / ideal:.0%} of {ideal:,.0f} req/s on this machine")
    goals = [
        goal(f"{args.callers:,} callers, {args.latency * 1e3:,.0f} ms server, no rate limit: llmkit req/s",
             target, f"{mine:,.0f}/s", mine >= 0.9 * ideal and not errors),
        goal(f"{args.callers:,} callers: the server and machine (bare asyncio client, same run)",
             target, f"{floor:,.0f}/s", floor >= 0.9 * ideal),
        goal(f"{args.callers:,} callers: raw httpx's own ceiling here (best: {best_raw})",
             target, f"{raw:,.0f}/s", raw >= 0.9 * ideal),
        goal(f"{args.callers:,} callers: llmkit vs raw httpx at its best (same run)", "≥ 90%",
             f"{mine / raw:.0%}", mine >= 0.9 * raw and not errors),
    ]
    print_goals(goals)
    return {"benchmark": "scale", "machine": machine(), "rows": rows, "ideal": ideal, "goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: 200 callers, few requests")
    parser.add_argument("--callers", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2, help="server latency (s)")
    parser.add_argument("--n", type=int, default=60_000, help="requests a run (at most)")
    parser.add_argument("--seconds", type=float, default=12.0, help="a run's callers stop starting calls after this")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="server processes (SO_REUSEADDR, one socket)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.callers, args.n, args.rounds, args.seconds = 200, 2_000, 1, 3.0
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
