"""Shared helpers of the benchmarks: the fake server in its own process, stats, tables, LiteLLM's venv.

Standard library only at import time: the LiteLLM worker imports this module under the interpreter of
``benchmarks/.venv-litellm``, where llmkit itself is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LITELLM_VENV = HERE / ".venv-litellm"
LITELLM_MISSING = "LiteLLM: not installed (run benchmarks/setup_litellm.sh)"
MODEL = "gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
API_KEY = "sk-bench-0000"


# ----------------------------------------------------------------------------------------------
# the fake server, in a process of its own


@contextlib.contextmanager
def fake_server(latency: float = 0.0, python: str | None = None) -> Iterator[str]:
    """Start ``python -m llmkit.testing serve`` on 127.0.0.1 in a subprocess; yield its base URL (``.../v1``)."""
    cmd = [python or sys.executable, "-m", "llmkit.testing", "serve", "--flavor", "openai", "--host", "127.0.0.1",
           "--port", "0", "--latency", repr(latency)]
    with server_process(cmd) as (url, _):
        yield url


@contextlib.contextmanager
def fast_server(latency: float = 0.0, workers: int = 1) -> Iterator[tuple[str, int]]:
    """Start ``_fast_server.py`` (a minimal asyncio-Protocol OpenAI fake, far cheaper per request than
    ``llmkit.testing``) on 127.0.0.1 in a subprocess; yield its base URL and process id."""
    cmd = [sys.executable, str(HERE / "_fast_server.py"), "--latency", repr(latency), "--workers", str(workers)]
    with server_process(cmd) as started:
        yield started


@contextlib.contextmanager
def server_process(cmd: Sequence[str]) -> Iterator[tuple[str, int]]:
    """Run a server command that prints its ``http://127.0.0.1:...`` URL first; yield (URL, process id)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the fake server did not start (printed {url!r}, exit code {proc.poll()})")
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process and its live children have used so far; None off Linux."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        total = 0
        for p in pids:
            fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of proc(5))
        return total / ticks
    except (OSError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------------------------
# stats and tables


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear interpolation between closest ranks."""
    if not samples:
        return float("nan")
    data = sorted(samples)
    k = (len(data) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """n, p50, p95 and mean of ``samples`` (seconds)."""
    return {"n": len(samples), "p50": percentile(samples, 50), "p95": percentile(samples, 95),
            "mean": statistics.fmean(samples) if samples else float("nan")}


def us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f} µs"


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:,.2f} ms"


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None) -> str:
    """A plain-text table with right-aligned columns (the first left-aligned)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(out)


def machine() -> str:
    return f"Python {platform.python_version()}, {platform.system()} {platform.machine()}, {os.cpu_count()} CPUs"


class Deadline:
    """A wall-clock budget for one benchmark: ``left()`` seconds remain, ``expired`` past it."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


# ----------------------------------------------------------------------------------------------
# drivers shared by llmkit, raw httpx and LiteLLM (so all three see the same workload)


async def sequential(call: Any, n: int, max_seconds: float = 60.0) -> list[float]:
    """Await ``call()`` up to ``n`` times one after another; the latency of each, in seconds."""
    out: list[float] = []
    stop_at = time.perf_counter() + max_seconds
    for _ in range(n):
        t = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t)
        if t > stop_at:
            break
    return out


async def concurrent(call: Any, concurrency: int, n: int, max_seconds: float = 60.0) -> dict[str, Any]:
    """``concurrency`` callers share ``n`` calls (stopping early past ``max_seconds``).

    Returns requests/s, latency p50/p95 (each call, seconds), the CPU time this process spent per request
    (all its threads; far less sensitive than wall time to other processes on a shared machine) and
    the error count.
    """
    import asyncio

    latencies: list[float] = []
    errors: list[str] = []
    tickets = iter(range(n))
    stop_at = time.perf_counter() + max_seconds

    async def caller() -> None:
        for _ in tickets:
            t = time.perf_counter()
            try:
                await call()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
            latencies.append(time.perf_counter() - t)
            if t > stop_at:
                break

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"concurrency": concurrency, "requests": len(latencies), "seconds": elapsed,
            "rps": len(latencies) / elapsed, "p50": percentile(latencies, 50), "p95": percentile(latencies, 95),
            "cpu_per_request": cpu / max(1, len(latencies)),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def pool_size(httpx_client: Any) -> int | None:
    """Connections an ``httpx.AsyncClient``'s pool holds now (private attributes: None if they moved)."""
    try:
        return len(httpx_client._transport._pool.connections)
    except Exception:
        return None


def provider_connections(provider: Any) -> int | None:
    """Connections an llmkit HTTP provider holds now, over all its pools (None if that is not visible)."""
    pools = getattr(provider, "_pools", None)
    if pools:
        sizes = [pool_size(entry[0]) for entry in pools]
        return None if None in sizes else sum(s for s in sizes if s is not None)
    client = getattr(provider, "client_if_any", lambda: None)()
    return pool_size(client) if client is not None else None


# ----------------------------------------------------------------------------------------------
# results: every benchmark can write its figures (and its goals) as JSON for run_all.py


def goal(name: str, target: str, measured: str, met: bool | None) -> dict[str, Any]:
    """One row of the goals table; ``met`` None means not measurable in this run (e.g. no LiteLLM)."""
    return {"goal": name, "target": target, "measured": measured, "met": met}


def met_text(met: bool | None) -> str:
    return "n/a" if met is None else "met" if met else "NOT met"


def print_goals(goals: Sequence[dict[str, Any]]) -> None:
    print()
    print(table(["goal", "target", "measured", "result"],
                [[g["goal"], g["target"], g["measured"], met_text(g["met"])] for g in goals], title="Goals"))


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str))


# ----------------------------------------------------------------------------------------------
# LiteLLM, in its own venv


def litellm_python() -> str | None:
    """The interpreter of ``benchmarks/.venv-litellm`` when LiteLLM is installed there, else None."""
    python = LITELLM_VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    if not python.exists():
        return None
    if not any((LITELLM_VENV / "lib").glob("python*/site-packages/litellm/__init__.py")) and \
            not (LITELLM_VENV / "Lib/site-packages/litellm/__init__.py").exists():
        return None
    return str(python)


def litellm_env() -> dict[str, str]:
    """Keep LiteLLM offline: the bundled model-cost map, no telemetry."""
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False",
            "LITELLM_LOG": "ERROR", "PYTHONPATH": str(HERE)}


def run_litellm(args: Sequence[str], timeout: float) -> dict[str, Any]:
    """Run ``_litellm_worker.py ARGS`` under LiteLLM's venv; its JSON result, or ``{"error": ...}``."""
    python = litellm_python()
    if python is None:
        return {"error": LITELLM_MISSING}
    cmd = [python, str(HERE / "_litellm_worker.py"), *args]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=litellm_env(), cwd=HERE)
    except subprocess.TimeoutExpired:
        return {"error": f"LiteLLM worker passed its {timeout:g}s time limit"}
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        return {"error": "LiteLLM worker failed: " + " | ".join(tail)}
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": f"LiteLLM worker printed no result: {done.stdout[-300:]!r}"}
