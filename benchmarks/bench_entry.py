"""What the way into a request costs, on the mock adapter (no HTTP), alternating in one process.

``service.execute`` awaited directly, the same in a task of its own on the caller's loop (as ``acompletion``
ran it until the fifth round; it now runs in the caller's task), the whole ``client.acompletion``, and the
argument checks alone (``client._request``). Microseconds a call, medians of the rounds. A diagnostic, not
a goal.

    python benchmarks/bench_entry.py             # ~15 s
    python benchmarks/bench_entry.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import MESSAGES, machine, table

MODEL = "m"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000, help="calls a variant a round")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    rounds, calls = (2, 200) if args.quick else (args.rounds, args.calls)

    import llmkit
    from llmkit._validate import build_request

    client = llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None, health_interval=None,
                           cache=False)
    service = client._service

    async def run() -> dict[str, list[float]]:
        loop = asyncio.get_running_loop()

        async def direct() -> None:
            await service.execute(build_request(MODEL, MESSAGES))

        async def own_task() -> None:  # (a task and a shield, as ``_own_task`` did before the fifth round)
            task = loop.create_task(service.execute(build_request(MODEL, MESSAGES)))
            await asyncio.shield(task)

        async def acompletion() -> None:
            await client.acompletion(MODEL, MESSAGES)

        async def checks() -> None:
            client._request(MODEL, MESSAGES)

        variants: dict[str, Callable[[], Awaitable[None]]] = {
            "service.execute awaited directly": direct,
            "the same in a task of its own (a task and a shield)": own_task,
            "client.acompletion": acompletion,
            "client._request alone (argument checks)": checks,
        }
        out: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, call in variants.items():
                t = time.perf_counter()
                for _ in range(calls):
                    await call()
                out[name].append((time.perf_counter() - t) / calls * 1e6)
        return out

    try:
        results = asyncio.run(run())
    finally:
        client.close()
    rows = [(name, f"{statistics.median(v):,.1f} µs") for name, v in results.items()]
    print(table(("way in", "per call (median)"), rows,
                title=f"The way into a request, mock adapter, {rounds} rounds of {calls} ({machine()})"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
