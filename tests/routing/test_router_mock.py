"""Routing scenarios on in-process providers, with virtual time (no test waits for real time)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

import llmkit
from llmkit import Request, Response
from llmkit._loop import VirtualTimeLoop
from llmkit.providers.base import Provider

MSG = [{"role": "user", "content": "hello"}]


class Recording(Provider):
    """Records the loop time at which each call starts; answers at once (or after ``latency``)."""

    adapter = "recording"
    starts: list[tuple[str, float, int]] = []

    async def complete(self, request: Request) -> Response:
        loop = asyncio.get_running_loop()
        Recording.starts.append((self.name, loop.time(), request.priority))
        latency = float(self.config.options.get("latency", 0))
        if latency:
            await asyncio.sleep(latency)
        return self.response(request, content=f"{self.name}:{request.model}")


@pytest.fixture(autouse=True)
def _reset_recording() -> None:
    Recording.starts = []


def vclient(providers: list[dict[str, Any]], **kw: Any) -> llmkit.Client:
    return llmkit.Client(providers, ledger=None, health_interval=None, loop_factory=VirtualTimeLoop, **kw)


def test_rate_limit_waits_and_never_exceeds_the_window() -> None:
    with vclient([{"name": "r", "adapter": Recording, "rate_limit": "5/second"}]) as c:
        async def burst() -> list[Response]:
            return await asyncio.gather(*(c.acompletion("m", MSG) for _ in range(20)))

        responses = c._loop.run(burst())
    assert len(responses) == 20 and all(r.content == "r:m" for r in responses)
    times = sorted(t for _, t, _ in Recording.starts)
    assert len(times) == 20
    for t in times:  # any one-second window [t, t+1) holds at most 5 starts
        assert sum(1 for u in times if t <= u < t + 1.0) <= 5
    assert times[-1] - times[0] >= 3.0  # 20 starts at 5/s take at least ~3.8 s of (virtual) time


def test_rate_limit_per_minute_is_not_a_burst() -> None:
    with vclient([{"name": "r", "adapter": Recording, "rate_limit": "100/minute"}]) as c:
        async def burst() -> None:
            await asyncio.gather(*(c.acompletion("m", MSG) for _ in range(150)))

        c._loop.run(burst())
    times = sorted(t for _, t, _ in Recording.starts)
    for t in times:
        assert sum(1 for u in times if t <= u < t + 60.0) <= 100


def test_explicit_burst_allows_back_to_back_starts() -> None:
    rl = {"count": 5, "period": "second", "burst": 5}
    with vclient([{"name": "r", "adapter": Recording, "rate_limit": rl}]) as c:
        async def burst() -> None:
            await asyncio.gather(*(c.acompletion("m", MSG) for _ in range(5)))

        c._loop.run(burst())
    times = [t for _, t, _ in Recording.starts]
    assert max(times) - min(times) < 1e-6


def test_priority_zero_starts_before_priority_ten_when_saturated() -> None:
    provider = {"name": "r", "adapter": Recording, "max_concurrency": 1,
                "options": {"latency": 0.5}}
    with vclient([provider]) as c:
        async def mixed() -> None:
            low = [c.acompletion("m", MSG, priority=10) for _ in range(5)]
            high = [c.acompletion("m", MSG, priority=0) for _ in range(5)]
            first = asyncio.ensure_future(low[0])
            await asyncio.sleep(0.01)  # the first low-priority request holds the only slot
            await asyncio.gather(first, *low[1:], *high)

        c._loop.run(mixed())
    order = [p for _, _, p in Recording.starts]
    assert order[0] == 10
    assert order[1:6] == [0] * 5
    assert order[6:] == [10] * 4


def test_rate_limited_queue_serves_priorities_in_order() -> None:
    with vclient([{"name": "r", "adapter": Recording, "rate_limit": "2/second"}]) as c:
        async def mixed() -> None:
            reqs = [c.acompletion("m", MSG, priority=10) for _ in range(4)]
            reqs += [c.acompletion("m", MSG, priority=0) for _ in range(4)]
            await asyncio.gather(*reqs)

        c._loop.run(mixed())
    order = [p for _, _, p in Recording.starts]
    # the first low-priority request starts at once and the second is already at the head of the line,
    # waiting in the limiter; every priority-0 request then starts before the remaining priority-10 ones
    assert order == [10, 10, 0, 0, 0, 0, 10, 10]


def test_completion_async_returns_ids_and_results_by_priority() -> None:
    provider = {"name": "r", "adapter": Recording, "max_concurrency": 1,
                "options": {"latency": 0.1}}
    with vclient([provider]) as c:
        ids = [c.completion_async("m", MSG, priority=5) for _ in range(3)]
        assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 3
        for i in ids:
            assert c.get_result(i, timeout=30).id == i
        with pytest.raises(KeyError):
            c.get_result(ids[0])  # already fetched
        with pytest.raises(KeyError):
            c.get_result("no-such-id")


def test_get_result_timeout_keeps_the_request_running() -> None:
    gate = {"name": "m", "adapter": "mock", "options": {"latency": 3600.0}}
    with llmkit.Client([gate], ledger=None, health_interval=None) as c:  # a real loop: the hour never passes
        rid = c.completion_async("m", MSG)
        with pytest.raises(TimeoutError):
            c.get_result(rid, timeout=0.01)
        assert c.in_flight() == 1
        assert c.cancel(rid) is True
        with pytest.raises(Exception) as info:
            c.get_result(rid, timeout=5)
        assert type(info.value).__name__ == "CancelledError"


def test_thousand_mixed_requests_each_end_exactly_once() -> None:
    providers = [
        {"name": "a", "adapter": "mock", "priority": 0, "max_retries": 1,
         "options": {"failure_rate": 0.3, "seed": 7, "latency": [0.0, 0.05],
                     "failure_kinds": ["server", "rate_limit", "timeout", "connection", "bad_request"]}},
        {"name": "b", "adapter": "mock", "priority": 1, "max_retries": 1,
         "options": {"failure_rate": 0.2, "seed": 8, "latency": [0.0, 0.05],
                     "failure_kinds": ["overloaded", "auth", "quota", "context_window"]}},
    ]
    with vclient(providers, timeout=120) as c:
        rng = random.Random(3)
        ids = [c.completion_async("gpt-4", [{"role": "user", "content": f"q{i}"}], priority=rng.randint(0, 3))
               for i in range(1000)]
        outcomes: dict[str, str] = {}
        for rid in ids:
            try:
                outcomes[rid] = c.get_result(rid, timeout=60).provider
            except llmkit.LLMError as exc:
                outcomes[rid] = type(exc).__name__
        usage = c._service.ledger
        assert len(usage) == 1000
        assert sorted(usage.request_ids()) == sorted(ids)
    assert len(outcomes) == 1000
    assert {"a", "b"} <= set(outcomes.values())
    assert set(outcomes.values()) - {"a", "b"} <= {"BadRequestError", "AllProvidersFailedError"}


def test_fallback_chain_uses_equivalent_models() -> None:
    providers = [
        {"name": "openai", "adapter": "mock", "models": ["gpt-4"], "max_retries": 0},
        {"name": "anthropic", "adapter": "mock", "models": ["claude-3-opus-20240229"]},
    ]
    with vclient(providers, fallbacks={"gpt-4": ["claude-3-opus-20240229"]}) as c:
        c.provider("openai").fail_next(1, "server")
        resp = c.completion("gpt-4", MSG)
        assert (resp.provider, resp.model) == ("anthropic", "claude-3-opus-20240229")
        assert [(a.provider, a.model, a.outcome) for a in resp.attempts] == [
            ("openai", "gpt-4", "error"), ("anthropic", "claude-3-opus-20240229", "ok")]
        assert resp.fallback


def test_model_never_sent_to_a_provider_that_does_not_serve_it() -> None:
    with vclient([{"name": "only-claude", "adapter": "mock", "models": ["claude-*"]}]) as c:
        with pytest.raises(llmkit.NoProviderError, match="gpt-4"):
            c.completion("gpt-4", MSG)
        assert c.provider("only-claude").calls == 0  # type: ignore[attr-defined]


def test_retries_back_off_exponentially_then_fall_back() -> None:
    providers = [{"name": "a", "adapter": "mock", "max_retries": 3}, {"name": "b", "adapter": "mock", "priority": 1}]
    sleeps: list[float] = []

    async def sleep(s: float) -> None:
        sleeps.append(s)

    with vclient(providers, sleep=sleep) as c:
        c.provider("a").fail_next(4, "server")
        resp = c.completion("m", MSG)
    assert resp.provider == "b"
    assert [a.outcome for a in resp.attempts] == ["error"] * 4 + ["ok"]
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2] <= 8.25
    assert 0.5 <= sleeps[0] <= 0.75


def test_overall_timeout_bounds_retries_and_queue() -> None:
    provider = {"name": "slow", "adapter": "mock", "timeout": 5, "max_retries": 10,
                "options": {"latency": 10.0}}
    with vclient([provider]) as c:
        with pytest.raises(llmkit.RequestTimeoutError, match="12s deadline"):
            c.completion("m", MSG, timeout=12)
        rows = c._service.ledger.columns()
        assert list(rows["status"]) == ["error"] and list(rows["error_type"]) == ["RequestTimeoutError"]


def test_queue_depth_counts_a_request_as_soon_as_it_is_queued() -> None:
    slow = {"name": "slow", "adapter": "mock", "max_concurrency": 1, "options": {"latency": 3600.0}}
    with llmkit.Client([slow], ledger=None, health_interval=None) as c:  # a real loop: the hour never passes
        ids = [c.completion_async("m", MSG) for _ in range(3)]
        assert c.in_flight() == 3
        assert c.queue_depth() in (2, 3)  # at most one holds the only slot
        for rid in ids:
            c.cancel(rid)


@pytest.mark.timeout(60)
def test_completion_async_never_drops_a_result_and_refuses_past_max_results() -> None:
    """Unfetched results are all kept; one past ``max_results`` is refused with ResultLimitError."""
    with vclient([{"name": "r", "adapter": Recording}], max_results=50) as c:
        ids = [c.completion_async("m", MSG) for _ in range(50)]
        with pytest.raises(llmkit.ResultLimitError, match="max_results=50"):
            c.completion_async("m", MSG)
        assert len(Recording.starts) <= 50  # the refused one was never sent
        assert [c.get_result(i, timeout=30).id for i in ids] == ids  # the oldest ones were not dropped
        assert c.get_result(c.completion_async("m", MSG), timeout=30).content == "r:m"  # room again
