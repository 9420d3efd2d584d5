"""Behaviour side by side: LiteLLM's Router (its defaults) vs llmkit's Client (its defaults), on loopback.

Four scenarios, each bounded in calls and time, against a fake OpenAI server on 127.0.0.1 in a process
of its own (a fresh one for each side, which counts the requests that reached it):

1. dead deployment: the only deployment answers 500; 20 sequential calls (defaults, then no retries)
2. rate limit: 5 requests/second configured (LiteLLM: ``rpm=300``, it has no per-second setting;
   llmkit: ``rate_limit="5/second"``), 20 concurrent calls
3. cached tokens cost: gpt-4o, prompt 2,000 tokens of which 1,000 cached, 500 completion tokens
4. the sync API called inside a running event loop (a notebook cell)

LiteLLM runs in a subprocess with ``benchmarks/.venv-litellm`` (``_litellm_behaviour.py``), offline
(bundled cost map, no telemetry). Without it only llmkit's column is shown.

    python benchmarks/compare_litellm.py [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from _common import (
    API_KEY,
    HERE,
    LITELLM_MISSING,
    MESSAGES,
    ROOT,
    litellm_env,
    litellm_python,
    machine,
    table,
    write_json,
)

CACHED_USAGE = {"prompt_tokens": 2000, "completion_tokens": 500, "total_tokens": 2500,
                "prompt_tokens_details": {"cached_tokens": 1000}}
CORRECT_COST = (1000 * 2.50 + 1000 * 1.25 + 500 * 10.0) / 1e6  # $0.00875


# ----------------------------------------------------------------------------------------------
# the fake server, in its own process, scripted by mode; "dump" on stdin prints request arrival times


def serve(mode: str) -> None:
    sys.path.insert(0, str(ROOT))
    from llmkit.testing import FakeOpenAIServer

    arrivals: list[float] = []

    class Counting(FakeOpenAIServer):
        async def handle(self, request: Any, action: Any, writer: Any) -> bool:
            if self.is_completion(request.path):
                arrivals.append(time.time())
            return await super().handle(request, action, writer)

    server = Counting(max_recorded=0)
    for _ in range(2000):
        if mode == "error500":
            server.enqueue_error(500, message="the server had an error")
        elif mode == "cached":
            server.enqueue("cached reply", usage=CACHED_USAGE)
    server.start()
    print(server.url, flush=True)
    for line in sys.stdin:
        if line.strip() == "dump":
            print(json.dumps(arrivals), flush=True)
    server.stop()


@contextlib.contextmanager
def fake(mode: str) -> Iterator[tuple[str, Any]]:
    """A fake server process in ``mode``; yields (base URL, arrivals()) where arrivals() lists request times."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve", mode], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake server did not start (printed {url!r})")

        def arrivals() -> list[float]:
            proc.stdin.write("dump\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())

        yield url, arrivals
    finally:
        with contextlib.suppress(Exception):
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_litellm(args: list[str], timeout: float) -> dict[str, Any]:
    python = litellm_python()
    if python is None:
        return {"error": LITELLM_MISSING}
    cmd = [python, str(HERE / "_litellm_behaviour.py"), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=litellm_env(), cwd=HERE)
    except subprocess.TimeoutExpired:
        return {"error": f"LiteLLM worker passed its {timeout:g}s time limit"}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"error": "LiteLLM worker failed: " + " | ".join(tail)}


# ----------------------------------------------------------------------------------------------
# llmkit


def client(url: str, **provider: Any) -> Any:
    import llmkit

    return llmkit.Client(providers=[{"name": "fake", "adapter": "openai", "api_key": API_KEY, "base_url": url,
                                     **provider}], ledger=None)


def err(exc: BaseException) -> str:
    name = type(exc).__name__
    inner = getattr(exc, "errors", None)
    return f"{name}({type(inner[-1]).__name__})" if inner else name


def llmkit_dead(url: str, n: int, max_seconds: float, **provider: Any) -> dict[str, Any]:
    calls = []
    stop_at = time.monotonic() + max_seconds
    with client(url, **provider) as c:
        for _ in range(n):
            t0 = time.time()
            try:
                c.completion(model="gpt-4o-mini", messages=MESSAGES)
                outcome = "ok"
            except Exception as exc:
                outcome = err(exc)
            calls.append({"start": t0, "end": time.time(), "outcome": outcome})
            if time.monotonic() > stop_at:
                break
    return {"calls": calls}


def llmkit_ratelimit(url: str, n: int, max_seconds: float) -> dict[str, Any]:
    outcomes: list[str] = []

    async def main(c: Any) -> float:
        async def one() -> None:
            try:
                await c.acompletion(model="gpt-4o-mini", messages=MESSAGES)
                outcomes.append("ok")
            except Exception as exc:
                outcomes.append(err(exc))

        t0 = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(one() for _ in range(n))), max_seconds)
        return time.perf_counter() - t0

    with client(url, rate_limit="5/second") as c:
        seconds = asyncio.run(main(c))
    return {"outcomes": outcomes, "seconds": seconds}


def llmkit_cost(url: str) -> dict[str, Any]:
    with client(url) as c:
        response = c.completion(model="gpt-4o", messages=MESSAGES)
    return {"hidden_cost": response.cost_usd}


def llmkit_syncloop(url: str) -> dict[str, Any]:
    with client(url) as c:
        async def cell() -> str:
            return c.completion(model="gpt-4o-mini", messages=MESSAGES).content

        try:
            return {"outcome": "ok", "content": asyncio.run(cell())}
        except Exception as exc:
            return {"outcome": err(exc), "message": str(exc)[:200]}


# ----------------------------------------------------------------------------------------------
# describing results


def describe_dead(result: dict[str, Any], arrivals: list[float]) -> str:
    if "error" in result:
        return result["error"]
    calls = result["calls"]
    hits = [sum(1 for a in arrivals if c["start"] <= a <= c["end"]) for c in calls]
    half = len(calls) // 2
    late = calls[half:]
    late_hits = sum(hits[half:])
    late_ms = sorted((c["end"] - c["start"]) * 1e3 for c in late)[len(late) // 2]
    outcomes = sorted({c["outcome"] for c in late})
    return (f"{len(arrivals)} reqs reached server for {len(calls)} calls; last {len(late)} calls: "
            f"{late_hits} reqs, p50 {late_ms:.1f} ms, {'/'.join(outcomes)}")


def describe_rate(result: dict[str, Any], arrivals: list[float]) -> str:
    if "error" in result:
        return result["error"]
    ok = result["outcomes"].count("ok")
    rejected = sorted({o for o in result["outcomes"] if o != "ok"})
    arrivals = sorted(arrivals)
    peak = max((sum(1 for b in arrivals if a <= b < a + 1.0) for a in arrivals), default=0)
    return (f"{ok} ok, {len(result['outcomes']) - ok} rejected{' (' + '/'.join(rejected) + ')' if rejected else ''}"
            f", {result['seconds']:.2f} s, peak {peak} reqs in 1 s at server")


def describe_cost(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    cost = result["hidden_cost"]
    if not isinstance(cost, (int, float)):
        return f"no cost ({cost!r})"
    verdict = "correct" if abs(cost - CORRECT_COST) < 1e-9 else f"off by {cost - CORRECT_COST:+.5f}"
    text = f"${cost:.5f} ({verdict})"
    other = result.get("completion_cost")
    if other is not None and other != cost:
        text += f"; completion_cost() {other if isinstance(other, str) else f'${other:.5f}'}"
    return text


def describe_sync(result: dict[str, Any]) -> str:
    if "error" in result:
        return result["error"]
    if result["outcome"] == "ok":
        return "ok (reply returned)"
    return f"{result['outcome']}: {result.get('message', '')[:80]}"


# ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 calls a scenario instead of 20")
    parser.add_argument("--json", help="write the results as JSON")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    n = 10 if args.quick else 20
    limit = 60.0 if args.quick else 120.0
    have_litellm = litellm_python() is not None
    version = ""
    rows: list[list[str]] = []
    raw: dict[str, Any] = {}

    def side(mode: str, run: Any, describe: Any, counted: bool) -> tuple[dict[str, Any], str]:
        with fake(mode) as (url, arrivals):
            result = run(url)
            return result, describe(result, arrivals()) if counted else describe(result)

    def litellm_side(mode: str, argv: list[str], describe: Any, counted: bool) -> str:
        nonlocal version
        if not have_litellm:
            return ""
        result, text = side(mode, lambda url: run_litellm([argv[0], "--url", url, *argv[1:]], limit + 30),
                            describe, counted)
        version = result.get("version", version)
        raw.setdefault("litellm", {})[" ".join(argv)] = result
        return text

    scenarios = [
        ("1a. dead deployment (500), defaults", "error500", ["dead", "--n", str(n), "--max-seconds", str(limit)],
         lambda url: llmkit_dead(url, n, limit), describe_dead, True,
         "each side's default retries and breaker"),
        ("1b. dead deployment (500), no retries both", "error500",
         ["dead", "--n", str(n), "--no-retries", "--max-seconds", str(limit)],
         lambda url: llmkit_dead(url, n, limit, max_retries=0), describe_dead, True,
         "max_retries=0 (LiteLLM also num_retries=0) to compare breakers alone"),
        (f"2. rate limit 5/s, {n} concurrent", "ok", ["ratelimit", "--n", str(n), "--rpm", "300",
                                                       "--max-seconds", str(limit)],
         lambda url: llmkit_ratelimit(url, n, limit), describe_rate, True,
         "LiteLLM: deployment rpm=300 (no per-second setting), default routing"),
        ("3. cost, gpt-4o 2000 in (1000 cached) + 500 out", "cached", ["cost"],
         llmkit_cost, describe_cost, False, f"correct: ${CORRECT_COST:.5f} ($2.50/$1.25 cached/$10 per M)"),
        ("4. sync call inside asyncio.run (notebook cell)", "ok", ["syncloop"],
         llmkit_syncloop, describe_sync, False, "does the sync API work where a loop already runs"),
    ]
    for name, mode, argv, run_llmkit, describe, counted, note in scenarios:
        print(f"running {name} ...", file=sys.stderr, flush=True)
        lite = litellm_side(mode, argv, describe, counted)
        result, mine = side(mode, run_llmkit, describe, counted)
        raw.setdefault("llmkit", {})[name] = result
        rows.append([name, lite, mine, note] if have_litellm else [name, mine, note])

    print()
    if have_litellm:
        print(table(["scenario", f"LiteLLM {version} Router (defaults)", "llmkit (defaults)", "what it shows"],
                    rows, title="Behaviour vs LiteLLM"))
    else:
        print(LITELLM_MISSING)
        print(table(["scenario", "llmkit (defaults)", "what it shows"], rows, title="Behaviour (llmkit only)"))
    print(f"\n{machine()}; fake OpenAI server on 127.0.0.1 in its own process, a fresh one for each side")
    write_json(args.json, {"rows": rows, "raw": raw, "litellm_version": version})


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
