"""Embedding a column: ``client.embed`` vs a hand-written raw-httpx loop over the same batches.

A fake OpenAI server in its own process answers ``POST /v1/embeddings`` after ``--latency`` seconds
(a stand-in for the provider's time). The baseline is what a notebook user writes by hand: one
``httpx.post`` per batch of ``--batch`` texts, one after another. ``client.embed`` sends the same
batches through llmkit's routing (limits, breakers, retries, ledger), ``--concurrency`` at a time,
then a second run is served from its per-text cache. Goal: embed is faster than the hand loop.

    python benchmarks/bench_embed.py            # 10,000 texts
    python benchmarks/bench_embed.py --quick    # CI smoke run: 1,000 texts
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import API_KEY, fake_server, goal, machine, print_goals, table, write_json

MODEL = "text-embedding-3-small"


def raw_loop(url: str, texts: list[str], batch: int) -> float:
    import httpx

    start = time.perf_counter()
    with httpx.Client(headers={"authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        vectors: list[Any] = []
        for i in range(0, len(texts), batch):
            resp = client.post(f"{url}/embeddings", json={"model": MODEL, "input": texts[i:i + batch]})
            resp.raise_for_status()
            vectors += [d["embedding"] for d in resp.json()["data"]]
    assert len(vectors) == len(texts)
    return time.perf_counter() - start


def llmkit_embed(url: str, texts: list[str], batch: int, concurrency: int) -> tuple[float, float, int]:
    import pandas as pd

    import llmkit

    series = pd.Series(texts)
    with llmkit.Client([{"name": "openai", "adapter": "openai", "api_key": API_KEY, "base_url": url,
                         "models": [MODEL], "max_concurrency": concurrency}], ledger=None,
                       health_interval=None, cache=":memory:") as client:  # a cold start every run
        start = time.perf_counter()
        first = client.embed(series, model=MODEL, batch_size=batch, max_concurrency=concurrency, progress=False)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        again = client.embed(series, model=MODEL, batch_size=batch, progress=False)
        warm = time.perf_counter() - start
        assert first.index.equals(series.index) and again.attrs["embed"]["requests"] == 0
        return cold, warm, int(first.attrs["embed"]["requests"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    texts = [f"review {i}: the product number {i % 313} was fine" for i in range(args.n)]
    with fake_server(latency=args.latency) as url:
        raw_loop(url, texts[: args.batch], args.batch)  # warm the server
        raw = raw_loop(url, texts, args.batch)
        cold, warm, requests = llmkit_embed(url, texts, args.batch, args.concurrency)
    n = len(texts)
    print(f"Embedding {n:,} texts in batches of {args.batch}, server latency {args.latency * 1000:g} ms "
          f"({machine()})")
    print(table(["variant", "seconds", "texts/s", "requests"], [
        ["raw httpx, sequential batches", f"{raw:.2f}", f"{n / raw:,.0f}", str(-(-n // args.batch))],
        [f"client.embed, {args.concurrency} concurrent", f"{cold:.2f}", f"{n / cold:,.0f}", str(requests)],
        ["client.embed again (per-text cache)", f"{warm:.3f}", f"{n / warm:,.0f}", "0"],
    ]))
    ratio = raw / cold
    print(f"\nclient.embed vs the hand loop: {ratio:.1f}x")
    goals = [goal("embed a column vs a raw-httpx batch loop", "faster (> 1x)", f"{ratio:.1f}x", ratio > 1.0)]
    print_goals(goals)
    return {"benchmark": "embed", "machine": machine(), "results": {"raw_s": raw, "embed_s": cold,
                                                                    "cached_s": warm, "texts": n}, "goals": goals}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a CI smoke run")
    parser.add_argument("--n", type=int, default=10_000, help="texts to embed")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--latency", type=float, default=0.1, help="server seconds per request")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = 1_000
    write_json(args.json, run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
