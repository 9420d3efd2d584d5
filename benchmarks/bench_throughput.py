"""Throughput at 1, 10 and 50 concurrent callers: llmkit vs raw httpx vs LiteLLM's Router, on loopback.

Every variant sends the same chat completion to the same fast fake OpenAI server (its own process)
from N callers sharing a fixed number of requests. ``cold`` = a fresh client whose first traffic is
the concurrent load (it opens as many connections as it is allowed); ``warm`` = a fresh client that
first ran sequential requests. Rounds alternate the variants; the table shows the median of the
rounds. LiteLLM runs in its own process under ``benchmarks/.venv-litellm`` when that exists.

llmkit caps in-flight requests per provider (``max_concurrency``), queueing the rest in priority
order: the main rows use the project default and ``--max-concurrency``; a sweep at 50 callers shows
the cap's effect on the zero-latency server and on a server that takes ``--latency`` per answer
(where a small cap bounds throughput at cap / latency).

    python benchmarks/bench_throughput.py            # about 10 minutes
    python benchmarks/bench_throughput.py --quick    # CI smoke run, well under a minute
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
    LITELLM_MISSING,
    MESSAGES,
    MODEL,
    Deadline,
    concurrent,
    fake_server,
    goal,
    machine,
    pool_size,
    print_goals,
    provider_connections,
    run_litellm,
    sequential,
    table,
    write_json,
)

LEVELS = (1, 10, 50)
BENCH_CAP = 4  # a second cap for the main rows (--max-concurrency): the best on this zero-latency server


def sniffio_note() -> str:
    try:
        import sniffio  # noqa: F401
    except ImportError:
        return ("note: sniffio is not installed here; httpcore 1.0.x then retries `import sniffio` on every "
                "pool lock (a failed import walks sys.path), which slows llmkit and raw httpx alike")
    return "sniffio: installed"


def load_note() -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return ""
    return f"load average before the run: {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


class Bench:
    def __init__(self, args: argparse.Namespace, url: str) -> None:
        self.args = args
        self.url = url
        self.body = {"model": MODEL, "messages": MESSAGES}

    def n_for(self, level: int) -> int:
        return {1: self.args.n1, 10: self.args.n10, 50: self.args.n50}.get(level, self.args.n50)

    async def raw(self, level: int, mode: str, n: int, url: str | None = None, lib: str = "httpx",
                  max_seconds: float | None = None) -> dict[str, Any]:
        import importlib

        httpx = importlib.import_module(lib)
        endpoint = f"{url or self.url}/chat/completions"
        async with httpx.AsyncClient(headers={"accept": "application/json",
                                              "authorization": f"Bearer {API_KEY}"}, timeout=60.0) as client:
            async def call() -> None:
                resp = await client.post(endpoint, json=self.body)
                resp.raise_for_status()
                resp.json()

            if mode == "warm":
                await sequential(call, self.args.warm_seq)
            row = await concurrent(call, level, n, max_seconds or self.args.max_seconds)
            row["connections"] = pool_size(client)
        return row

    async def llmkit(self, level: int, mode: str, n: int, cap: int, ledger: Any = None,
                     url: str | None = None, max_seconds: float | None = None) -> dict[str, Any]:
        import llmkit

        provider = {"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url or self.url,
                    "models": ["*"], "max_concurrency": cap}
        client = llmkit.Client(providers=[provider], ledger=ledger)
        try:
            async def call() -> None:
                await client.acompletion(model=MODEL, messages=MESSAGES)

            if mode == "warm":
                await sequential(call, self.args.warm_seq)
            row = await concurrent(call, level, n, max_seconds or self.args.max_seconds)
            row["connections"] = provider_connections(client.provider("fake"))
        finally:
            await client.aclose()
        return row


def median_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over rounds (errors summed, connections: the last round's)."""
    out = dict(rows[-1])
    for key in ("rps", "p50", "p95", "seconds", "cpu_per_request"):
        out[key] = statistics.median(r[key] for r in rows)
    out["errors"] = sum(r["errors"] for r in rows)
    out["rounds"] = len(rows)
    out["rps_all"] = [round(r["rps"], 1) for r in rows]
    return out


def variant_specs(args: argparse.Namespace, caps: list[int], level: int, rnd: int
                  ) -> list[tuple[str, str, dict[str, Any]]]:
    """(row name, "raw" or "llmkit", keyword arguments) for one level of one round."""
    specs: list[tuple[str, str, dict[str, Any]]] = []
    for mode in ("cold", "warm"):
        specs.append((f"raw httpx, {mode}", "raw", {"mode": mode}))
        for cap in caps:
            specs.append((f"llmkit cap {cap}, {mode}", "llmkit", {"mode": mode, "cap": cap}))
    if have_httpx2():
        specs.append(("raw httpx2, cold (reference)", "raw", {"mode": "cold", "lib": "httpx2"}))
    if args.sqlite:
        specs.append((f"llmkit cap {args.max_concurrency}, cold, SQLite ledger", "llmkit",
                      {"mode": "cold", "cap": args.max_concurrency,
                       "ledger": os.path.join(args.tmp, f"ledger-{rnd}-{level}.sqlite3")}))
    return specs


def have_httpx2() -> bool:
    import importlib.util

    return importlib.util.find_spec("httpx2") is not None


async def warm_process(bench: Bench) -> None:
    """Pay the process-wide one-time costs (imports, genai-prices' table) before any measurement."""
    await bench.raw(1, "cold", 20)
    await bench.llmkit(1, "cold", 20, 4)
    if have_httpx2():
        await bench.raw(1, "cold", 20, lib="httpx2")


def run(args: argparse.Namespace) -> dict[str, Any]:
    from llmkit import ProviderConfig

    project_cap = ProviderConfig(name="x").max_concurrency
    caps = sorted({project_cap, args.max_concurrency})
    deadline = Deadline(args.time_limit)
    print(f"Throughput, loopback fake OpenAI server in its own process ({machine()})")
    print(load_note())
    print(sniffio_note())
    results: dict[tuple[int, str], list[dict[str, Any]]] = {}
    litellm_runs: list[dict[str, Any]] = []
    litellm_error: str | None = None
    sweep: list[dict[str, Any]] = []

    def add(level: int, name: str, row: dict[str, Any]) -> None:
        results.setdefault((level, name), []).append(row)

    with fake_server() as url:
        bench = Bench(args, url)
        runner = asyncio.Runner()
        try:
            runner.run(warm_process(bench))
            for rnd in range(args.rounds):
                if deadline.expired:
                    print(f"time limit reached after {rnd} round(s)")
                    break
                order = list(LEVELS) if rnd % 2 == 0 else list(reversed(LEVELS))
                for level in order:
                    specs = variant_specs(args, caps, level, rnd)
                    if rnd % 2:
                        specs.reverse()
                    for name, kind, kwargs in specs:
                        run_one = bench.raw if kind == "raw" else bench.llmkit
                        add(level, name, runner.run(run_one(level, n=bench.n_for(level), **kwargs)))
                if not args.no_litellm and rnd < args.litellm_rounds:
                    res = run_litellm(["throughput", "--url", url, "--levels", ",".join(map(str, LEVELS)),
                                       "--ns", ",".join(str(bench.n_for(lvl)) for lvl in LEVELS),
                                       "--warm-seq", str(args.warm_seq),
                                       "--max-seconds", str(args.max_seconds)], timeout=args.max_seconds * 8 + 60)
                    if "error" in res:
                        litellm_error = res["error"]
                    else:
                        litellm_runs.append(res)
            if not args.no_sweep and not deadline.expired:
                sweep = runner.run(cap_sweep(args, bench))
        finally:
            runner.close()
    if not args.no_sweep and not deadline.expired and args.latency > 0:
        with fake_server(latency=args.latency) as slow_url:
            runner = asyncio.Runner()
            try:
                sweep += runner.run(cap_sweep(args, Bench(args, slow_url), latency=args.latency))
            finally:
                runner.close()

    if args.no_litellm:
        litellm_error = "LiteLLM: skipped (--no-litellm)"
    for res in litellm_runs:
        for row in res["rows"]:
            add(row["concurrency"], f"LiteLLM {res['version']} Router, {row['mode']}", row)
    merged = {key: median_row(rows) for key, rows in results.items()}
    return report(args, merged, sweep, caps, project_cap, litellm_error)


async def cap_sweep(args: argparse.Namespace, bench: Bench, latency: float = 0.0) -> list[dict[str, Any]]:
    """50 callers, cold clients, one run per cap (and raw httpx for reference), each at most 10 s."""
    rows = []
    n, limit = args.sweep_n, min(10.0, args.max_seconds)
    for cap in args.sweep_caps:
        row = await bench.llmkit(50, "cold", n, cap, max_seconds=limit)
        rows.append({"latency": latency, "variant": f"llmkit cap {cap}", **row})
    for mode in ("cold", "warm"):
        row = await bench.raw(50, mode, n, max_seconds=limit)
        rows.append({"latency": latency, "variant": f"raw httpx, {mode}", **row})
    return rows


def report(args: argparse.Namespace, merged: dict[tuple[int, str], dict[str, Any]], sweep: list[dict[str, Any]],
           caps: list[int], project_cap: int, litellm_error: str | None) -> dict[str, Any]:
    def f_rps(r: dict[str, Any]) -> str:
        return f"{r['rps']:,.0f}"

    for level in LEVELS:
        rows = [(name, r) for (lvl, name), r in merged.items() if lvl == level]
        if not rows:
            continue
        raw_warm = merged.get((level, "raw httpx, warm"))
        lit = next((r for name, r in rows if name.startswith("LiteLLM") and name.endswith("cold")), None)
        out = []
        for name, r in rows:
            out.append([name, f_rps(r), f"{r['p50'] * 1e3:,.2f} ms", f"{r['p95'] * 1e3:,.2f} ms",
                        f"{r['cpu_per_request'] * 1e6:,.0f} µs",
                        r.get("connections") if r.get("connections") is not None else "",
                        f"{r['rps'] / raw_warm['rps']:.2f}x" if raw_warm else "",
                        f"{r['rps'] / lit['rps']:.2f}x" if lit else "", r["errors"]])
        print()
        print(table(["variant", "req/s", "p50", "p95", "CPU/req", "conns", "vs raw warm", "vs LiteLLM cold", "errors"],
                    out,
                    title=f"{level} concurrent caller(s), {rows[0][1]['requests']} requests a run, "
                          f"median of {rows[0][1]['rounds']} round(s)"))
    if litellm_error:
        print(litellm_error if litellm_error != LITELLM_MISSING else LITELLM_MISSING)
    if sweep:
        print()
        out = [[f"{s['latency'] * 1e3:g} ms", s["variant"], s["requests"], f"{s['rps']:,.0f}",
                f"{s['p50'] * 1e3:,.2f} ms", f"{s['p95'] * 1e3:,.2f} ms", f"{s['cpu_per_request'] * 1e6:,.0f} µs",
                s.get("connections") or ""]
               for s in sweep]
        print(table(["server latency", "variant (50 callers, cold)", "requests", "req/s", "p50", "p95", "CPU/req",
                     "conns"], out,
                    title="max_concurrency sweep (one run each)"))

    goals = []
    chosen = args.max_concurrency
    for mode in ("cold", "warm"):
        raw = merged.get((50, f"raw httpx, {mode}"))
        for cap in caps:
            mine = merged.get((50, f"llmkit cap {cap}, {mode}"))
            if raw and mine:
                label = "project default" if cap == project_cap else "benchmark cap"
                ratio = mine["rps"] / raw["rps"]
                goals.append(goal(f"50 callers, {mode}: llmkit (cap {cap}, {label}) vs raw httpx",
                                  "≥ 1.3x", f"{ratio:.2f}x ({mine['rps']:,.0f} vs {raw['rps']:,.0f} req/s)",
                                  ratio >= 1.3))
    lit = next((r for (lvl, name), r in merged.items() if lvl == 50 and name.startswith("LiteLLM")
                and name.endswith("cold")), None)
    for cap in caps:
        mine = merged.get((50, f"llmkit cap {cap}, cold"))
        if mine is None:
            continue
        if lit is None:
            goals.append(goal(f"50 callers: llmkit (cap {cap}) vs LiteLLM Router req/s", "≥ 5x", "LiteLLM not run",
                              None))
            continue
        ratio = mine["rps"] / lit["rps"]
        goals.append(goal(f"50 callers, cold: llmkit (cap {cap}) vs LiteLLM Router req/s", "≥ 5x",
                          f"{ratio:.2f}x ({mine['rps']:,.0f} vs {lit['rps']:,.0f})", ratio >= 5.0))
        goals.append(goal(f"50 callers, cold: llmkit (cap {cap}) vs LiteLLM Router p50", "lower",
                          f"{mine['p50'] * 1e3:,.1f} vs {lit['p50'] * 1e3:,.1f} ms", mine["p50"] < lit["p50"]))
    print_goals(goals)
    return {"benchmark": "throughput", "machine": machine(), "chosen_cap": chosen, "project_cap": project_cap,
            "results": [{"concurrency": lvl, "variant": name, **r} for (lvl, name), r in merged.items()],
            "sweep": sweep, "goals": goals, "litellm_error": litellm_error}


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run: few requests, one round, no sweep")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--n1", type=int, default=1000, help="requests a run at 1 caller")
    parser.add_argument("--n10", type=int, default=2000, help="requests a run at 10 callers")
    parser.add_argument("--n50", type=int, default=2000, help="requests a run at 50 callers (and LiteLLM's runs)")
    parser.add_argument("--warm-seq", type=int, default=200, help="sequential requests that warm a 'warm' client")
    parser.add_argument("--max-concurrency", type=int, default=BENCH_CAP,
                        help="llmkit's per-provider cap for the main rows (besides the project default)")
    parser.add_argument("--sweep-caps", default="2,4,8,16,32,64")
    parser.add_argument("--sweep-n", type=int, default=1500)
    parser.add_argument("--latency", type=float, default=0.05, help="server latency of the second sweep (s)")
    parser.add_argument("--no-sweep", action="store_true")
    parser.add_argument("--sqlite", action="store_true", help="also run llmkit with the SQLite ledger")
    parser.add_argument("--no-litellm", action="store_true")
    parser.add_argument("--litellm-rounds", type=int, default=2, help="rounds that also run LiteLLM (it is slow)")
    parser.add_argument("--max-seconds", type=float, default=30.0, help="time limit of one run")
    parser.add_argument("--time-limit", type=float, default=600.0, help="no new round after this many seconds")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.n1, args.n10, args.n50, args.warm_seq = 1, 100, 200, 300, 30
        args.no_sweep, args.max_seconds = True, 10.0
    args.sweep_caps = [int(c) for c in str(args.sweep_caps).split(",")]
    with tempfile.TemporaryDirectory(prefix="llmkit-bench-") as tmp:
        args.tmp = tmp
        write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
