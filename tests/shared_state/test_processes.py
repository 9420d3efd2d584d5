"""Shared state across real processes: one rate limit, one breaker, one budget on a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from llmkit.testing import FakeOpenAIServer

WORKER = Path(__file__).with_name("worker.py")


class TimedServer(FakeOpenAIServer):
    """A fake OpenAI server that records when each completion request arrived (monotonic seconds)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.arrivals: list[float] = []

    async def handle(self, request: Any, action: Any, writer: Any) -> bool:
        if self.is_completion(request.path):
            self.arrivals.append(time.monotonic())
        return await super().handle(request, action, writer)


def start_workers(specs: list[dict[str, Any]]) -> list[subprocess.Popen[str]]:
    return [subprocess.Popen([sys.executable, str(WORKER), json.dumps(spec)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for spec in specs]


def results(procs: list[subprocess.Popen[str]], timeout: float = 60.0) -> list[dict[str, Any]]:
    out = []
    for proc in procs:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
        assert proc.returncode == 0, stderr[-3000:]
        out.append(json.loads(stdout.strip().splitlines()[-1]))
    return out


def most_in_any_window(times: list[float], window: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_the_window_counter() -> None:
    assert most_in_any_window([0.0, 0.5, 0.99, 1.0, 1.5], 1.0) == 3
    assert most_in_any_window([], 1.0) == 0


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_two_processes_on_one_limit_never_exceed_it_in_any_window(redis_url: str) -> None:
    limit, each = 6, 9
    with TimedServer() as server:
        spec = {"redis": redis_url, "base_url": server.url, "requests": each, "start_at": time.time() + 3,
                "provider": {"rate_limit": f"{limit}/second"}}
        outs = results(start_workers([spec, spec]))
        arrivals = list(server.arrivals)
    assert [o["ok"] for o in outs] == [each, each]
    assert len(arrivals) == 2 * each
    # each process alone would send 6 a second: together 12 in a second if the limit were not shared
    assert most_in_any_window(arrivals, 1.0) <= limit
    assert max(arrivals) - min(arrivals) >= (2 * each - limit) / limit * 0.9
    assert all(o["shared_events"][:1] == ["up"] for o in outs)


@pytest.mark.timeout(120)
def test_a_breaker_opened_in_one_process_is_open_in_another(redis_url: str) -> None:
    with TimedServer() as server:
        for _ in range(3):
            server.enqueue_error(500)
        spec = {"redis": redis_url, "base_url": server.url, "requests": 3,
                "provider": {"breaker": {"fail_max": 3, "reset_timeout": 60}}}
        [first] = results(start_workers([spec]))
        assert first["errors"] == {"ServerError": 3}
        shared = redis.Redis.from_url(redis_url, decode_responses=True)
        try:  # the first process's reports all reached Redis before it closed
            assert shared.hgetall("llmkit:breaker:{p}")["state"] == "open"
        finally:
            shared.close()
        sent = len(server.arrivals)
        [second] = results(start_workers([{**spec, "requests": 2}]))
        assert len(server.arrivals) == sent == 3  # the second process sent nothing: the breaker was open
    assert second["errors"] == {"CircuitOpenError": 2} and second["breaker_state"] == "open"


@pytest.mark.timeout(120)
def test_a_shared_budget_is_never_overspent_by_more_than_one_request(redis_url: str) -> None:
    price = {"gpt-4o": {"input": 1000.0, "output": 1000.0}}  # USD per million tokens: about 1-3 cents a call
    budget = 0.5
    with TimedServer() as server:
        spec = {"redis": redis_url, "base_url": server.url, "requests": 200, "budget_usd": budget,
                "stop_on": "BudgetExceededError", "provider": {"pricing": price}}
        outs = results(start_workers([spec, spec, spec]))
    spent = sum(o["cost"] for o in outs)
    calls = sum(o["ok"] for o in outs)
    biggest = 40 * 1000.0 / 1e6  # no call here uses more than 40 tokens
    assert all(o["errors"] == {"BudgetExceededError": 1} for o in outs)
    assert calls > 0 and spent <= budget + biggest
    # alone, each process would have spent the whole budget
    assert spent < 2 * budget * 0.75
    shared = redis.Redis.from_url(redis_url, decode_responses=True)
    try:  # every settle reached Redis before its process closed
        assert float(shared.get("llmkit:budget:total:total:spent") or 0) == pytest.approx(spent, rel=1e-6)
        assert shared.hlen("llmkit:budget:total:total:held") == 0  # no reservation left behind
    finally:
        shared.close()
