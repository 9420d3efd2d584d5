"""Rate-limit exactness and cost: llmkit's rolling windows vs a leaky bucket that starts full (aiolimiter).

On a virtual-time loop (no real waiting), 40 requests go through "10/minute" with a burst of 10, and 20
requests of 200 tokens through a 1000 tokens/minute limit: the figure is the most starts (or tokens) in
any 60 s window. Then the CPU cost of one ``acquire`` when the limit never binds. aiolimiter is not a
dependency of llmkit any more; its column is shown when it is installed.

    python benchmarks/bench_rate_window.py
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from llmkit._config import RateLimit
from llmkit._loop import VirtualTimeLoop
from llmkit.routing.limits import Throttle

try:
    from aiolimiter import AsyncLimiter
except ImportError:  # pragma: no cover
    AsyncLimiter = None


def most_in_window(times: list[tuple[float, int]], window: float = 60.0) -> int:
    return max(sum(n for u, n in times if t <= u < t + window) for t, _ in times)


async def llmkit_starts(requests: int, rate: RateLimit | None, tpm: int | None, tokens: int) -> int:
    loop = asyncio.get_running_loop()
    throttle = Throttle(rate, tpm, loop.time)
    times = []
    for _ in range(requests):
        await throttle.acquire(0, tokens)
        times.append((loop.time(), tokens if tpm else 1))
    return most_in_window(times)


async def bucket_starts(requests: int, capacity: int, tokens: int) -> int:
    assert AsyncLimiter is not None
    loop = asyncio.get_running_loop()
    limiter = AsyncLimiter(capacity, 60.0)
    times = []
    for _ in range(requests):
        await limiter.acquire(tokens)
        times.append((loop.time(), tokens))
    return most_in_window(times)


def virtual(coro: object) -> int:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)  # type: ignore[arg-type]
    finally:
        loop.close()


async def acquire_cost(n: int = 50_000) -> float:
    loop = asyncio.get_running_loop()
    throttle = Throttle(RateLimit(10**9, 1.0, burst=10**9), 10**12, loop.time)
    t = time.perf_counter()
    for _ in range(n):
        await throttle.acquire(0, 100)
    return (time.perf_counter() - t) / n * 1e6


async def bucket_cost(n: int = 50_000) -> float:
    assert AsyncLimiter is not None
    limiter, tokens = AsyncLimiter(10**9, 1.0), AsyncLimiter(10**12, 60.0)
    t = time.perf_counter()
    for _ in range(n):
        await limiter.acquire()
        await tokens.acquire(100)
    return (time.perf_counter() - t) / n * 1e6


def main() -> None:
    rows = [
        ("10/minute, burst 10: most starts in 60 s (limit 10)",
         virtual(llmkit_starts(40, RateLimit(10, 60.0, burst=10), None, 0)),
         virtual(bucket_starts(40, 10, 1)) if AsyncLimiter else None),
        ("1000 tokens/minute, 200 a request: most tokens in 60 s (limit 1000)",
         virtual(llmkit_starts(20, None, 1000, 200)),
         virtual(bucket_starts(20, 1000, 200)) if AsyncLimiter else None),
    ]
    print(f"{'':72} {'llmkit':>8} {'bucket':>8} {'ratio':>6}")
    for name, ours, theirs in rows:
        ratio = f"{theirs / ours:.1f}x" if theirs else "-"
        print(f"{name:72} {ours:>8} {theirs if theirs is not None else '-':>8} {ratio:>6}")
    ours_us = asyncio.run(acquire_cost())
    theirs_us = asyncio.run(bucket_cost()) if AsyncLimiter else None
    ratio = f"{ours_us / theirs_us:.1f}x" if theirs_us else "-"
    print(f"{'acquire() when the limit never binds, requests + tokens (us)':72} {ours_us:>8.2f} "
          f"{theirs_us if theirs_us is None else round(theirs_us, 2)!s:>8} {ratio:>6}")


if __name__ == "__main__":
    main()
