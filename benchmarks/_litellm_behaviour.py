"""The LiteLLM side of ``compare_litellm.py``, run under ``benchmarks/.venv-litellm`` (llmkit not needed).

One LiteLLM ``Router`` with one deployment at ``api_base`` = a fake server on 127.0.0.1, Router defaults
unless a flag says otherwise. Prints one JSON line (the last line of stdout).

    python _litellm_behaviour.py dead --url URL --n 20 [--no-retries]
    python _litellm_behaviour.py ratelimit --url URL --n 20 --rpm 300
    python _litellm_behaviour.py cost --url URL
    python _litellm_behaviour.py syncloop --url URL
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from _common import API_KEY, MESSAGES


def make_router(model: str, **params: Any) -> Any:
    import litellm
    from litellm import Router

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    router_kwargs = params.pop("router_kwargs", {})
    return Router(model_list=[{"model_name": model, "litellm_params": {
        "model": f"openai/{model}", "api_base": ARGS.url, "api_key": API_KEY, **params}}], **router_kwargs)


def err(exc: BaseException) -> str:
    return type(exc).__name__


def dead() -> dict[str, Any]:
    if ARGS.no_retries:  # no Router retries, no OpenAI-SDK retries
        router = make_router("gpt-4o-mini", max_retries=0, router_kwargs={"num_retries": 0})
    else:
        router = make_router("gpt-4o-mini")
    calls = []
    stop_at = time.monotonic() + ARGS.max_seconds
    for _ in range(ARGS.n):
        t0 = time.time()
        try:
            router.completion(model="gpt-4o-mini", messages=MESSAGES)
            outcome = "ok"
        except Exception as exc:
            outcome = err(exc)
        calls.append({"start": t0, "end": time.time(), "outcome": outcome})
        if time.monotonic() > stop_at:
            break
    return {"calls": calls}


async def ratelimit() -> dict[str, Any]:
    router = make_router("gpt-4o-mini", rpm=ARGS.rpm)
    outcomes: list[str] = []

    async def one() -> None:
        try:
            await router.acompletion(model="gpt-4o-mini", messages=MESSAGES)
            outcomes.append("ok")
        except Exception as exc:
            outcomes.append(err(exc))

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(ARGS.n))), ARGS.max_seconds)
    return {"outcomes": outcomes, "seconds": time.perf_counter() - t0}


def cost() -> dict[str, Any]:
    import litellm

    router = make_router("gpt-4o")
    response = router.completion(model="gpt-4o", messages=MESSAGES)
    hidden = (getattr(response, "_hidden_params", None) or {}).get("response_cost")
    try:
        computed = litellm.completion_cost(completion_response=response)
    except Exception as exc:
        computed = f"{err(exc)}: {exc}"[:200]
    return {"hidden_cost": hidden, "completion_cost": computed, "usage": json.loads(response.usage.model_dump_json())}


def syncloop() -> dict[str, Any]:
    router = make_router("gpt-4o-mini")

    async def cell() -> str:
        response = router.completion(model="gpt-4o-mini", messages=MESSAGES)
        return response.choices[0].message.content

    try:
        return {"outcome": "ok", "content": asyncio.run(cell())}
    except Exception as exc:
        return {"outcome": err(exc), "message": str(exc)[:200]}


def main() -> None:
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["dead", "ratelimit", "cost", "syncloop"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--rpm", type=int, default=300)
    parser.add_argument("--no-retries", action="store_true")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    ARGS = parser.parse_args()
    if ARGS.command == "ratelimit":
        result = asyncio.run(ratelimit())
    else:
        result = {"dead": dead, "cost": cost, "syncloop": syncloop}[ARGS.command]()
    from importlib.metadata import version

    print(json.dumps({"version": version("litellm"), **result}, default=str))


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
