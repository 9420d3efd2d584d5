"""Per-call overhead of llmkit's full pipeline vs raw httpx, sequential, on a loopback fake server.

llmkit (breaker, limiter, retry, pricing, ledger: memory ``ledger=None`` and the SQLite default in a
temp dir; sync ``completion`` and async ``acompletion``) and a raw ``httpx.AsyncClient`` posting the
same body with the same headers to the same fast fake OpenAI server (a separate process), one call at
a time, measured side by side in rounds so drift hits every variant alike. Overhead = p50 - raw p50.
LiteLLM's Router joins when ``benchmarks/.venv-litellm`` exists (run in its own process, same server).

    python benchmarks/bench_overhead.py            # ~2 minutes
    python benchmarks/bench_overhead.py --quick    # CI smoke run, a few seconds
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import (
    API_KEY,
    LITELLM_MISSING,
    MESSAGES,
    MODEL,
    goal,
    machine,
    print_goals,
    run_litellm,
    summarize,
    table,
    us,
    write_json,
)

GOAL_ASYNC_S = 100e-6  # issue 16: async on the caller's loop
GOAL_SYNC_S = 250e-6  # issue 16: sync, in a script and inside a running loop (Jupyter)
GOAL_SQLITE_S = 50e-6  # issue 16: the durable SQLite ledger over the memory ledger, same way in


def provider(url: str) -> dict[str, Any]:
    return {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url, "models": ["*"]}


def raw_headers() -> dict[str, str]:
    """What llmkit's OpenAI adapter sends (content-type is set by httpx for json=)."""
    return {"accept": "application/json", "authorization": f"Bearer {API_KEY}"}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    import llmkit

    rounds, per_round, warmup = (4, 50, 30) if args.quick else (args.rounds, args.per_round, args.warmup)
    from _common import fake_server

    with fake_server() as url, tempfile.TemporaryDirectory(prefix="llmkit-bench-") as tmp:
        os.environ["LLMKIT_DATA_DIR"] = tmp  # ledger="default" -> <tmp>/ledger.sqlite3
        runner = asyncio.Runner()
        raw = runner.run(_make_raw(httpx))
        body = {"model": MODEL, "messages": MESSAGES}
        endpoint = f"{url}/chat/completions"

        def raw_call_of(client: Any) -> Callable[[], Any]:
            async def call() -> None:
                resp = await client.post(endpoint, json=body)
                resp.raise_for_status()
                resp.json()
            return call

        raw_call = raw_call_of(raw)
        raw2 = None
        if importlib.util.find_spec("httpx2") is not None:  # pydantic's httpx fork, installed with genai-prices
            raw2 = runner.run(_make_raw(importlib.import_module("httpx2")))

        memory = llmkit.Client(providers=[provider(url)], ledger=None)
        sqlite = llmkit.Client(providers=[provider(url)])  # the default ledger, in the temp dir

        def sync_call(client: llmkit.Client) -> Callable[[], None]:
            def call() -> None:
                client.completion(model=MODEL, messages=MESSAGES)
            return call

        def async_call(client: llmkit.Client) -> Callable[[], Any]:
            async def call() -> None:
                await client.acompletion(model=MODEL, messages=MESSAGES)
            return call

        service = memory._service  # diagnostic: the pipeline on its own loop, no thread hop

        async def pipeline_only(n: int) -> list[float]:
            from llmkit._validate import build_request

            out = []
            for _ in range(n):
                t = time.perf_counter()
                await service.execute(build_request(MODEL, MESSAGES))
                out.append(time.perf_counter() - t)
            return out

        variants: dict[str, tuple[str, Callable[[], Any]]] = {
            "raw httpx.AsyncClient": ("async", raw_call),
            "llmkit completion (ledger=None)": ("sync", sync_call(memory)),
            "llmkit acompletion (ledger=None)": ("async", async_call(memory)),
            "llmkit completion in a running loop (ledger=None)": ("sync-in-loop", sync_call(memory)),
            "llmkit completion (SQLite ledger)": ("sync", sync_call(sqlite)),
            "llmkit acompletion (SQLite ledger)": ("async", async_call(sqlite)),
            "llmkit completion in a running loop (SQLite ledger)": ("sync-in-loop", sync_call(sqlite)),
        }
        if raw2 is not None:
            variants["  raw httpx2.AsyncClient (reference)"] = ("async", raw_call_of(raw2))

        def measure(kind: str, call: Callable[[], Any], n: int) -> list[float]:
            if kind == "async":
                async def loop() -> list[float]:
                    out = []
                    for _ in range(n):
                        t = time.perf_counter()
                        await call()
                        out.append(time.perf_counter() - t)
                    return out
                return runner.run(loop())
            if kind == "sync-in-loop":  # a blocking call from a coroutine, as in a Jupyter cell
                async def blocking() -> list[float]:
                    out = []
                    for _ in range(n):
                        t = time.perf_counter()
                        call()
                        out.append(time.perf_counter() - t)
                    return out
                return runner.run(blocking())
            out = []
            for _ in range(n):
                t = time.perf_counter()
                call()
                out.append(time.perf_counter() - t)
            return out

        for kind, call in variants.values():  # warm up: connections, genai-prices' lazy import, the loop
            measure(kind, call, warmup)
        memory._loop.run(pipeline_only(warmup))
        own = "  llmkit pipeline on its own loop (no thread hop)"
        samples: dict[str, list[float]] = {name: [] for name in [*variants, own]}
        cpu = dict.fromkeys(samples, 0.0)
        for _ in range(rounds):
            for name, (kind, call) in variants.items():
                c0 = time.process_time()
                samples[name] += measure(kind, call, per_round)
                cpu[name] += time.process_time() - c0
            c0 = time.process_time()
            samples[own] += memory._loop.run(pipeline_only(per_round))
            cpu[own] += time.process_time() - c0
        ledger_rows = len(sqlite._service.ledger)
        memory.close()
        sqlite.close()
        runner.run(raw.aclose())
        if raw2 is not None:
            runner.run(raw2.aclose())
        runner.close()

        litellm: dict[str, Any]
        if args.no_litellm:
            litellm = {"error": "LiteLLM: skipped (--no-litellm)"}
        else:
            litellm = run_litellm(["overhead", "--url", url, "--warmup", str(warmup),
                                   "--n", str(rounds * per_round)], timeout=240)

    stats = {name: {**summarize(s), "cpu_per_call": cpu[name] / max(1, len(s))} for name, s in samples.items()}
    if "litellm" in litellm:
        stats[f"LiteLLM {litellm['version']} Router.acompletion"] = litellm["litellm"]
    base = stats["raw httpx.AsyncClient"]["p50"]
    base_cpu = stats["raw httpx.AsyncClient"]["cpu_per_call"]
    rows = []
    for name, s in stats.items():
        is_raw = name.strip().startswith("raw")
        over = "" if is_raw else f"{(s['p50'] - base) * 1e6:+,.0f} µs"
        cpu_text = f"{s['cpu_per_call'] * 1e6:,.0f} µs" if "cpu_per_call" in s else ""
        cpu_over = (f"{(s['cpu_per_call'] - base_cpu) * 1e6:+,.0f} µs"
                    if "cpu_per_call" in s and not is_raw else "")
        rows.append([name, s["n"], us(s["p50"]), us(s["p95"]), over, f"{s['p50'] / base:.2f}x", cpu_text, cpu_over])
    print(f"Per-call overhead, sequential, loopback fake OpenAI server in its own process ({machine()})")
    print(table(["variant", "calls", "p50", "p95", "overhead (p50)", "vs raw", "CPU/call", "extra CPU"], rows))
    print("CPU/call: this process's CPU time (all threads) per call; far steadier than wall time on a busy machine.")
    if "error" in litellm:
        print(litellm["error"] if litellm["error"] != LITELLM_MISSING else LITELLM_MISSING)
    print(f"SQLite ledger rows written: {ledger_rows}")

    goals = []
    for name, (kind, _) in variants.items():
        if name.startswith("llmkit") and "SQLite" not in name:
            over = stats[name]["p50"] - base
            limit = GOAL_ASYNC_S if kind == "async" else GOAL_SYNC_S
            goals.append(goal(f"overhead p50 over raw httpx: {name}", f"≤ {limit * 1e6:,.0f} µs",
                              f"{over * 1e6:,.0f} µs", over <= limit))
    for name in variants:
        if name.startswith("llmkit") and "SQLite" in name:
            extra = stats[name]["p50"] - stats[name.replace("SQLite ledger", "ledger=None")]["p50"]
            goals.append(goal(f"SQLite ledger over memory ledger, p50: {name.replace(' (SQLite ledger)', '')}",
                              f"≤ +{GOAL_SQLITE_S * 1e6:,.0f} µs", f"{extra * 1e6:+,.0f} µs", extra <= GOAL_SQLITE_S))
    print_goals(goals)
    return {"benchmark": "overhead", "machine": machine(), "stats": stats, "goals": goals,
            "litellm_error": litellm.get("error")}


async def _make_raw(httpx: Any) -> Any:
    return httpx.AsyncClient(headers=raw_headers(), timeout=60.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: few samples")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=200, help="calls per variant and round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
