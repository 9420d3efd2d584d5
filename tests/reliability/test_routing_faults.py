"""Routing under faults (issue 11 items 2, 11, 13, 15): long server pauses, budgets across fallbacks,
exact rolling-window rate limits, and health checks that only half-open a breaker.

In-process providers only; time is injected (``FakeTime`` clock and sleep, or ``VirtualTimeLoop``), so
no test waits for real time. Anything that could wait carries a timeout.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest

import llmkit
from llmkit import Request, Response
from llmkit._config import BreakerConfig, RateLimit
from llmkit._loop import VirtualTimeLoop
from llmkit._types import Usage
from llmkit.providers.base import Provider, prompt_tokens
from llmkit.routing.breaker import Breaker
from llmkit.routing.limits import PausedTooLong, SlidingWindow, Throttle
from llmkit.routing.router import request_tokens

from ..conftest import FakeTime

MSG = [{"role": "user", "content": "hello"}]
HOUR = 3600.0

# -- in-process providers, scripted per provider name ------------------------------------------------

CALLS: list[tuple[str, float]] = []   # (provider, loop time) of every call that reached a provider
SCRIPT: dict[str, list[BaseException]] = {}   # errors a provider raises, one per call, before answering
ALWAYS: dict[str, BaseException] = {}  # an error a provider raises on every call


class Scripted(Provider):
    """After ``options["latency"]`` seconds, raises its scripted errors first, then answers using the
    estimated prompt and ``max_tokens`` output tokens (what the rate limits and the budget estimate)."""

    adapter = "scripted"

    async def complete(self, request: Request) -> Response:
        CALLS.append((self.name, asyncio.get_running_loop().time()))
        latency = float(self.config.options.get("latency", 0.0))
        if latency:
            await asyncio.sleep(latency)
        if self.name in ALWAYS:
            raise ALWAYS[self.name]
        pending = SCRIPT.get(self.name)
        if pending:
            raise pending.pop(0)
        usage = Usage(input_tokens=prompt_tokens(request), output_tokens=request.max_tokens or 0)
        return self.response(request, content=f"from {self.name}", usage=usage)


@pytest.fixture(autouse=True)
def _reset_script() -> Iterator[None]:
    CALLS.clear()
    SCRIPT.clear()
    ALWAYS.clear()
    yield
    CALLS.clear()
    SCRIPT.clear()
    ALWAYS.clear()


def calls(name: str) -> int:
    return sum(1 for n, _ in CALLS if n == name)


def rate_limited(after: float, name: str = "primary") -> llmkit.RateLimitError:
    return llmkit.RateLimitError("slow down", provider=name, status=429, retry_after=after)


def entry(name: str, priority: int = 1, **kw: Any) -> dict[str, Any]:
    return {"name": name, "adapter": Scripted, "models": ["*"], "priority": priority, **kw}


# -- item 2: a retry-after beyond retry_after_cap never parks later requests ----------------------------


@pytest.mark.timeout(30)
def test_long_retry_after_falls_back_at_once_for_later_requests() -> None:
    """A real loop and a real clock: parking on the hour-long pause would hang (and time out)."""
    SCRIPT["primary"] = [rate_limited(HOUR)]
    providers = [entry("primary", 1), entry("backup", 2)]
    with llmkit.Client(providers, ledger=None, health_interval=None, retry_after_cap=60.0) as client:
        first = client.completion("m", MSG)
        assert first.provider == "backup"  # asked to wait an hour: fell back at once
        ids = [client.completion_async("m", MSG) for _ in range(5)]
        later = [client.get_result(i, timeout=10) for i in ids]
    assert [r.provider for r in later] == ["backup"] * 5
    assert calls("primary") == 1  # the paused provider was not contacted again
    for r in later:
        assert [(a.provider, a.outcome, a.error) for a in r.attempts] == [
            ("primary", "skipped", "RateLimitError"), ("backup", "ok", None)]


@pytest.mark.timeout(30)
def test_long_retry_after_with_no_other_candidate_fails_fast_carrying_the_pause(fake_time: FakeTime) -> None:
    SCRIPT["only"] = [rate_limited(HOUR, "only")]
    with llmkit.Client([entry("only")], ledger=None, health_interval=None, retry_after_cap=60.0,
                       clock=fake_time.clock, sleep=fake_time.sleep) as client:
        with pytest.raises(llmkit.RateLimitError) as first:
            client.completion("m", MSG)
        assert first.value.retry_after == HOUR
        fake_time.advance(100.0)
        for _ in range(3):
            with pytest.raises(llmkit.RateLimitError) as later:
                client.completion("m", MSG)
            assert later.value.retry_after == pytest.approx(HOUR - 100.0)
            assert later.value.provider == "only"
            assert "retry_after_cap" in str(later.value)
        health = client.health().iloc[0]
    assert calls("only") == 1  # never contacted while paused
    assert not [s for s in fake_time.sleeps if s > 60.0]  # and nobody sat the pause out
    assert health["breaker_state"] == "closed" and health["fail_count"] == 0


@pytest.mark.timeout(30)
def test_retry_after_within_the_cap_still_waits(fake_time: FakeTime) -> None:
    SCRIPT["only"] = [rate_limited(5.0, "only")]
    with llmkit.Client([entry("only")], ledger=None, health_interval=None, retry_after_cap=60.0,
                       clock=fake_time.clock, sleep=fake_time.sleep) as client:
        resp = client.completion("m", MSG)
    assert resp.provider == "only" and calls("only") == 2
    assert 5.0 in fake_time.sleeps  # waited the server's 5 s, then retried on the same provider


@pytest.mark.timeout(30)
def test_requests_already_waiting_on_the_provider_fall_back_when_the_long_pause_arrives() -> None:
    """Requests queued behind the rate limit when the 429 comes do not sit out the hour either."""
    SCRIPT["primary"] = [rate_limited(HOUR)]
    providers = [entry("primary", 1, rate_limit="1/minute", options={"latency": 1.0}), entry("backup", 2)]
    with llmkit.Client(providers, ledger=None, health_interval=None, retry_after_cap=60.0,
                       loop_factory=VirtualTimeLoop) as client:
        async def burst() -> tuple[list[Response], float]:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            out = await asyncio.gather(*(client.acompletion("m", MSG) for _ in range(3)))
            return list(out), loop.time() - t0

        responses, elapsed = client._loop.run(burst())
    assert [r.provider for r in responses] == ["backup"] * 3
    assert calls("primary") == 1
    assert elapsed <= 61.0  # the queued ones waited for their rate-limit turn (60 s), not the hour
    outcomes = [[(a.provider, a.outcome) for a in r.attempts] for r in responses[1:]]
    assert outcomes == [[("primary", "skipped"), ("backup", "ok")]] * 2


@pytest.mark.timeout(10)
async def test_a_waiter_gives_up_when_the_pause_grows_past_the_cap(fake_time: FakeTime) -> None:
    throttle = Throttle(None, None, fake_time.clock, fake_time.sleep)
    throttle.pause(30.0)
    assert await throttle.acquire(max_pause=60.0) == pytest.approx(30.0)  # a short pause is waited out
    throttle.pause(HOUR)
    with pytest.raises(PausedTooLong) as info:
        await throttle.acquire(max_pause=60.0)
    assert info.value.remaining_s == pytest.approx(HOUR)
    assert throttle.waiting == 0


# -- item 11: the budget is checked for each candidate before it is tried ------------------------------


PRICING_CHEAP = {"small": {"input": 1.0, "output": 1.0}}      # USD per million tokens
PRICING_PRICEY = {"big": {"input": 1000.0, "output": 1000.0}}
MAX_TOKENS = 100


def budget_client(budget: float, latency: float = 0.0, **kw: Any) -> llmkit.Client:
    providers = [
        {"name": "cheap", "adapter": Scripted, "models": ["small"], "priority": 1, "max_retries": 0,
         "pricing": PRICING_CHEAP, "breaker": {"fail_max": 1000, "reset_timeout": 30.0}},
        {"name": "pricey", "adapter": Scripted, "models": ["big"], "priority": 2, "max_retries": 0,
         "pricing": PRICING_PRICEY, "breaker": {"fail_max": 3, "reset_timeout": 30.0},
         "options": {"latency": latency}},
    ]
    return llmkit.Client(providers, fallbacks={"small": ["big"]}, ledger=None, health_interval=None,
                         budget_usd=budget, **kw)


def pricey_estimate(client: llmkit.Client) -> float:
    req = Request(model="big", messages=MSG, max_tokens=MAX_TOKENS)
    estimate = client._service.pricer.estimate("pricey", None, "big", prompt_tokens(req), MAX_TOKENS)
    assert estimate is not None
    return float(estimate)


@pytest.mark.timeout(30)
def test_a_pricier_fallback_is_checked_against_the_budget_before_it_is_sent() -> None:
    ALWAYS["cheap"] = llmkit.ServerError("down", provider="cheap", status=500)
    with budget_client(0.05) as client:
        assert pricey_estimate(client) > 0.05  # the fallback alone would pass the budget
        for _ in range(10):
            with pytest.raises(llmkit.BudgetExceededError) as info:
                client.completion("small", MSG, max_tokens=MAX_TOKENS)
            assert info.value.estimate_usd > 0.05
        usage = client.usage()
        status = client.budget_status()
        pricey = client.health().set_index("provider").loc["pricey"]
    assert calls("pricey") == 0  # never sent: its estimate did not fit
    assert status is not None and status["spent_usd"] == 0.0 and status["reserved_usd"] == 0.0
    assert len(usage) == 10 and set(usage["error_type"]) == {"BudgetExceededError"}
    assert pricey["breaker_state"] == "closed" and pricey["fail_count"] == 0  # a refusal is not a failure


@pytest.mark.timeout(30)
def test_concurrent_fallbacks_never_spend_past_the_budget_by_more_than_one_request() -> None:
    ALWAYS["cheap"] = llmkit.ServerError("down", provider="cheap", status=500)
    # the fallback takes 2 s (virtual): all twenty requests are in flight on it at once
    with budget_client(0.5, latency=2.0, loop_factory=VirtualTimeLoop) as client:
        one = pricey_estimate(client)

        async def burst() -> list[Any]:
            return await asyncio.gather(*(client.acompletion("small", MSG, max_tokens=MAX_TOKENS)
                                          for _ in range(20)), return_exceptions=True)

        results = client._loop.run(burst())
        status = client.budget_status()
    assert status is not None
    assert status["spent_usd"] <= 0.5 + one  # at most one request past the budget (here: none)
    assert status["spent_usd"] <= 0.5
    answered = [r for r in results if isinstance(r, Response)]
    refused = [r for r in results if isinstance(r, llmkit.BudgetExceededError)]
    assert len(answered) + len(refused) == 20 and answered and refused
    assert all(r.provider == "pricey" for r in answered)
    assert calls("pricey") == len(answered) == int(0.5 // one)


@pytest.mark.timeout(30)
def test_a_cheaper_fallback_still_runs_when_it_fits() -> None:
    ALWAYS["pricey"] = llmkit.ServerError("down", provider="pricey", status=500)
    providers = [
        {"name": "pricey", "adapter": Scripted, "models": ["big"], "priority": 1, "max_retries": 0,
         "pricing": PRICING_PRICEY},
        {"name": "cheap", "adapter": Scripted, "models": ["small"], "priority": 2, "max_retries": 0,
         "pricing": PRICING_CHEAP},
    ]
    with llmkit.Client(providers, fallbacks={"big": ["small"]}, ledger=None, health_interval=None,
                       budget_usd=1.0) as client:
        resp = client.completion("big", MSG, max_tokens=MAX_TOKENS)
        status = client.budget_status()
    assert resp.provider == "cheap"
    assert status is not None and status["reserved_usd"] == 0.0 and 0 < status["spent_usd"] < 0.001


# -- item 13: rate limits are exact rolling windows from the first request -----------------------------


def max_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for u in times if t <= u < t + window) for t in times)


def starts(name: str) -> list[float]:
    return [t for n, t in CALLS if n == name]


def vclient(**provider: Any) -> llmkit.Client:
    return llmkit.Client([entry("r", **provider)], ledger=None, health_interval=None,
                         loop_factory=VirtualTimeLoop)


def run_burst(client: llmkit.Client, n: int, **kw: Any) -> None:
    async def burst() -> None:
        await asyncio.gather(*(client.acompletion("m", MSG, **kw) for _ in range(n)))

    client._loop.run(burst())


@pytest.mark.timeout(60)
def test_a_burst_limit_never_admits_more_than_the_count_in_any_window() -> None:
    """10/minute with a burst of 10: the first ten start at once, the eleventh a minute later (a leaky
    bucket that starts full lets an eleventh through after 6 s, about twice the limit in that minute)."""
    with vclient(rate_limit={"count": 10, "period": "minute", "burst": 10}) as client:
        run_burst(client, 35)
    times = sorted(starts("r"))
    assert len(times) == 35
    assert max_in_window(times, 60.0) == 10
    assert times[9] - times[0] < 1e-6  # the burst is still a burst
    assert times[10] - times[0] >= 60.0
    assert times[-1] - times[0] >= 180.0


@pytest.mark.timeout(60)
def test_an_evenly_spaced_limit_is_exact_too() -> None:
    with vclient(rate_limit="10/minute") as client:
        run_burst(client, 25)
    times = sorted(starts("r"))
    assert max_in_window(times, 60.0) == 10
    assert min(b - a for a, b in itertools.pairwise(times)) >= 6.0 - 1e-9


@pytest.mark.timeout(60)
def test_tokens_per_minute_is_exact_from_the_first_request() -> None:
    # each request is estimated at its prompt plus max_tokens: 200 tokens, and uses as much
    max_tokens = 200 - prompt_tokens(Request(model="m", messages=MSG))
    assert request_tokens(Request(model="m", messages=MSG, max_tokens=max_tokens)) == 200
    with vclient(tokens_per_minute=1000) as client:
        run_burst(client, 20, max_tokens=max_tokens)
    times = sorted(starts("r"))
    assert len(times) == 20
    assert max_in_window(times, 60.0) == 5  # 5 x 200 = the minute's 1000 tokens
    assert times[4] - times[0] < 1e-6 and times[5] - times[0] >= 60.0


@pytest.mark.timeout(10)
async def test_the_window_is_on_the_injected_clock_and_exact_at_its_edge(fake_time: FakeTime) -> None:
    throttle = Throttle(RateLimit(3, 60.0, burst=3), None, fake_time.clock, fake_time.sleep)
    t0 = fake_time.now
    admitted = []
    for _ in range(7):
        await throttle.acquire()
        admitted.append(fake_time.now - t0)
    assert admitted == [0.0, 0.0, 0.0, 60.0, 60.0, 60.0, 120.0]
    window = SlidingWindow(3, 60.0)
    for _ in range(3):
        window.charge(1, 0.0)
    assert window.delay(1, 59.999) == pytest.approx(0.001)
    assert window.delay(1, 60.0) == 0.0


# -- item 15: a passing health check half-opens an open breaker; one real probe decides ---------------


def test_a_passing_check_half_opens_an_open_breaker_and_the_probe_decides(fake_time: FakeTime) -> None:
    breaker = Breaker("p", BreakerConfig(fail_max=2, reset_timeout=30.0), fake_time.clock)
    down = llmkit.ServerError("down", provider="p", status=500)
    for _ in range(2):
        breaker.report(down)
    assert breaker.state == "open"
    breaker.record_check(True)
    assert breaker.state == "half_open"  # not closed: GET /models answering says nothing about completions
    probe = breaker.admit()
    assert probe is True
    with pytest.raises(llmkit.CircuitOpenError):
        breaker.admit()  # one probe at a time
    breaker.report(down, probe)
    assert breaker.state == "open"  # the probe failed: open again, for a full reset_timeout
    assert breaker.retry_in() == 30.0
    breaker.record_check(True)
    probe = breaker.admit()
    breaker.report(None, probe)
    assert breaker.state == "closed"
    breaker.record_check(True)
    assert breaker.state == "closed"  # a pass leaves a closed breaker alone


@pytest.mark.timeout(30)
def test_health_check_passing_while_completions_fail_does_not_close_the_breaker(fake_time: FakeTime) -> None:
    ALWAYS["p"] = llmkit.ServerError("completions are broken", provider="p", status=500)
    provider = entry("p", max_retries=0, breaker={"fail_max": 2, "reset_timeout": 30.0})
    with llmkit.Client([provider], ledger=None, health_interval=None, clock=fake_time.clock,
                       sleep=fake_time.sleep) as client:
        for _ in range(2):
            with pytest.raises(llmkit.ServerError):
                client.completion("m", MSG)
        assert client.health().iloc[0]["breaker_state"] == "open"
        row = client.check_health().iloc[0]  # the health endpoint answers
        assert row["breaker_state"] == "half_open" and row["last_check_ok"]
        with pytest.raises(llmkit.ServerError):
            client.completion("m", MSG)  # the probe: completions still fail
        assert client.health().iloc[0]["breaker_state"] == "open"
        with pytest.raises(llmkit.CircuitOpenError):
            client.completion("m", MSG)  # not contacted again until the next probe
        assert calls("p") == 3
        del ALWAYS["p"]
        client.check_health()
        assert client.completion("m", MSG).provider == "p"
        assert client.health().iloc[0]["breaker_state"] == "closed"


@pytest.mark.timeout(10)
async def test_the_throttle_takes_its_limits_from_a_pluggable_store(fake_time: FakeTime) -> None:
    """What a shared (Redis) store plugs into: ``admit`` says wait or go, ``charge_tokens`` corrects."""

    class Store:
        def __init__(self) -> None:
            self.asked: list[tuple[int, float]] = []
            self.charged: list[int] = []

        def admit(self, tokens: int, now: float) -> float:
            self.asked.append((tokens, now))
            return 5.0 if len(self.asked) == 1 else 0.0

        def charge_tokens(self, tokens: int, now: float) -> None:
            self.charged.append(tokens)

    store = Store()
    throttle = Throttle(None, None, fake_time.clock, fake_time.sleep, limits=store)
    t0 = fake_time.now
    assert await throttle.acquire(0, 120) == pytest.approx(5.0)
    assert store.asked == [(120, t0), (120, t0 + 5.0)]
    throttle.correct(120, 150)
    assert store.charged == [30]
