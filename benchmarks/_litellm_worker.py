"""The LiteLLM side of the benchmarks, run by ``_common.run_litellm`` under ``benchmarks/.venv-litellm``.

LiteLLM's Router with one deployment ``openai/gpt-4o-mini`` at ``api_base`` = the fake server, driven by
the same ``_common`` drivers as llmkit and raw httpx. Prints one JSON line (the last line of stdout).

    python _litellm_worker.py overhead --url URL --warmup 200 --n 2000
    python _litellm_worker.py throughput --url URL --levels 1,10,50 --ns 1000,2000,2000 --warm-seq 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from _common import API_KEY, MESSAGES, MODEL, concurrent, sequential, summarize


def make_router() -> Any:
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    try:  # a fresh Router should also mean fresh HTTP clients (LiteLLM caches them process-wide)
        litellm.in_memory_llm_clients_cache.flush_cache()
    except Exception:
        pass
    return Router(model_list=[{"model_name": MODEL, "litellm_params": {
        "model": f"openai/{MODEL}", "api_base": ARGS.url, "api_key": API_KEY}}])


async def overhead() -> dict[str, Any]:
    router = make_router()

    async def call() -> None:
        await router.acompletion(model=MODEL, messages=MESSAGES)

    await sequential(call, ARGS.warmup, ARGS.max_seconds)
    cpu0 = time.process_time()
    samples = await sequential(call, ARGS.n, ARGS.max_seconds)
    cpu = time.process_time() - cpu0
    return {"litellm": {**summarize(samples), "cpu_per_call": cpu / max(1, len(samples))}}


async def throughput() -> dict[str, Any]:
    rows = []
    levels = [int(x) for x in ARGS.levels.split(",")]
    counts = [int(x) for x in ARGS.ns.split(",")] if ARGS.ns else [ARGS.n] * len(levels)
    for level, n in zip(levels, counts, strict=True):
        for mode in ("cold", "warm"):
            router = make_router()

            async def call(router: Any = router) -> None:
                await router.acompletion(model=MODEL, messages=MESSAGES)

            if mode == "warm":
                await sequential(call, ARGS.warm_seq, ARGS.max_seconds)
            row = await concurrent(call, level, n, ARGS.max_seconds)
            rows.append({"mode": mode, **row})
    return {"rows": rows}


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["overhead", "throughput"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--levels", default="1,10,50")
    parser.add_argument("--ns", default="", help="requests a run for each level (default: --n for all)")
    parser.add_argument("--warm-seq", type=int, default=200)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    ARGS = parser.parse_args()
    t0 = time.perf_counter()
    import litellm  # noqa: F401  (the import is not part of any measurement)

    import_s = time.perf_counter() - t0
    result = asyncio.run(overhead() if ARGS.command == "overhead" else throughput())
    from importlib.metadata import version

    print(json.dumps({"version": version("litellm"), "import_s": import_s, **result}))


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
