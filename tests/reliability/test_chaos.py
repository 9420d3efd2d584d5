"""A chaos run: 5,000 requests over three mock providers and one loopback fake, on virtual time.

- ``alpha`` (priority 0) fails now and then, and has a scripted outage (``set_down``) in the middle of
  the run; ``bravo`` (priority 1) fails more often, with every kind of retryable fault and some bad
  requests; ``charlie`` (priority 2) never fails; ``delta`` is a loopback ``FakeOpenAIServer`` that serves
  its own model over real HTTP.
- Requests arrive over virtual time with mixed priorities: half queued with ``completion_async`` (fetched
  with ``get_result``), half as ``acompletion`` tasks under ``gather``; a last burst comes from another
  event loop with ``acompletion`` under ``gather``. Some are pinned to ``alpha``, some have a tight deadline.

Then: no request is lost (each has exactly one ledger record and exactly one outcome, a response or a
typed error, and they agree), breakers moved only as the faults allow, and costs add up.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import llmkit
from llmkit._errors import counts_against_breaker
from llmkit._events import Event
from llmkit._loop import VirtualTimeLoop
from llmkit.testing import FakeOpenAIServer

MODEL = "chaos-model"
FAKE_MODEL = "fake-model"
N_IN_LOOP = 4_000           # arrive on the client's loop, 2 ms of virtual time apart
N_OUTER = 1_000             # arrive at once from another event loop
OUTAGE = (3.0, 4.0)         # alpha is down from t0+3 s for 4 s of virtual time
TIGHT_DEADLINE = 0.03       # seconds: some requests have it and may time out
BREAKERS = {"alpha": (5, 1.0), "bravo": (8, 1.0), "charlie": (5, 1.0), "delta": (5, 1.0)}
LEGAL = {("closed", "open"), ("open", "half_open"), ("half_open", "closed"), ("half_open", "open")}
BREAKER_ERRORS = {"ServerError", "OverloadedError", "ProviderTimeoutError", "ProviderConnectionError"}


def providers(fake_url: str) -> list[dict[str, Any]]:
    def breaker(name: str) -> dict[str, float]:
        fail_max, reset = BREAKERS[name]
        return {"fail_max": fail_max, "reset_timeout": reset}

    return [
        {"name": "alpha", "adapter": "mock", "priority": 0, "models": [MODEL], "max_retries": 1,
         "max_concurrency": 32, "breaker": breaker("alpha"),
         "pricing": {MODEL: {"input": 1.5, "output": 6.0}},
         "options": {"seed": 11, "latency": [0.01, 0.05], "failure_rate": 0.03,
                     "failure_kinds": ["server", "overloaded"]}},
        {"name": "bravo", "adapter": "mock", "priority": 1, "models": [MODEL], "max_retries": 2,
         "max_concurrency": 64, "breaker": breaker("bravo"),
         "pricing": {MODEL: {"input": 0.5, "output": 1.0, "cache_read": 0.05}},
         "options": {"seed": 12, "latency": [0.02, 0.08], "failure_rate": 0.2, "cached_ratio": 0.25,
                     "failure_kinds": ["overloaded", "timeout", "connection", "rate_limit", "bad_request"]}},
        {"name": "charlie", "adapter": "mock", "priority": 2, "models": [MODEL], "max_retries": 1,
         "breaker": breaker("charlie"), "pricing": {MODEL: {"input": 3.0, "output": 15.0}},
         "options": {"seed": 13, "latency": [0.05, 0.1]}},
        {"name": "delta", "adapter": "openai", "api_key": "sk-chaos-fake-0000000000", "base_url": fake_url,
         "priority": 3, "models": [FAKE_MODEL], "max_retries": 1, "timeout": 30, "breaker": breaker("delta"),
         "pricing": {FAKE_MODEL: {"input": 2.0, "output": 8.0}}},
    ]


@dataclass
class Sent:
    """What the test asked for, and what came back."""

    n: int
    priority: int
    via: str                          # "queued", "gathered" or "outer"
    pinned: str | None = None
    timeout: float | None = None
    model: str = MODEL
    request_id: str | None = None     # known up front for queued requests
    outcomes: list[Any] = field(default_factory=list)


@dataclass
class Run:
    sent: list[Sent]
    t0: float
    outage: tuple[float, float]
    records: list[Any]
    usage: Any
    summary: Any
    summary_by_provider: Any
    events: list[Event]
    transitions: dict[str, list[tuple[float, str | None, str]]]
    final_states: dict[str, str]
    ledger_total: float
    calls: dict[str, int]
    fake_requests: int
    fetched_twice: list[str]
    real_seconds: float


def plan(rng: random.Random) -> list[Sent]:
    sent: list[Sent] = []
    for n in range(N_IN_LOOP):
        s = Sent(n, rng.choice([0, 0, 1, 2, 5, 9]), "queued" if n % 2 == 0 else "gathered")
        if n % 40 == 7:
            s.pinned = "alpha"
        elif n % 50 == 21:
            s.timeout = TIGHT_DEADLINE
        elif n % 25 == 3:
            s.model = FAKE_MODEL
        sent.append(s)
    sent += [Sent(N_IN_LOOP + j, j % 3, "outer") for j in range(N_OUTER)]
    return sent


def kwargs(s: Sent) -> dict[str, Any]:
    kw: dict[str, Any] = {"priority": s.priority, "metadata": {"n": s.n}}
    if s.pinned:
        kw["provider"] = s.pinned
    if s.timeout is not None:
        kw["timeout"] = s.timeout
    return kw


def messages(s: Sent, rng: random.Random) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {s.n} " + "x" * rng.randint(0, 400)}]


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    started = time.perf_counter()
    rng = random.Random(20240611)
    sent = plan(rng)
    with FakeOpenAIServer(reply="a fake answer over loopback", fast=True, max_recorded=2_000) as fake, \
            llmkit.Client(providers(fake.url), ledger=None, health_interval=None, timeout=120,
                          max_events=500_000, loop_factory=VirtualTimeLoop) as client:
        in_loop = [s for s in sent if s.via != "outer"]
        outer = [s for s in sent if s.via == "outer"]

        async def outage() -> tuple[float, float]:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(OUTAGE[0])
            client.provider("alpha").set_down(True)  # type: ignore[attr-defined]
            down = loop.time()
            await asyncio.sleep(OUTAGE[1])
            client.provider("alpha").set_down(False)  # type: ignore[attr-defined]
            return down, loop.time()

        async def ticker(busy: list[asyncio.Future[Any]]) -> None:
            # The fake answers in real time; while its requests are in flight, keep virtual time moving in
            # 1 ms steps, so the loop never leaps over their per-attempt timeout while waiting for a socket.
            while not all(f.done() for f in busy):
                await asyncio.sleep(0.001)

        async def drive() -> tuple[float, tuple[float, float]]:
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            outage_task = asyncio.ensure_future(outage())
            tasks: list[tuple[Sent, asyncio.Future[Any]]] = []
            busy: list[asyncio.Future[Any]] = []
            for s in in_loop:  # the 2 ms arrival sleeps keep virtual time in small steps meanwhile
                await asyncio.sleep(0.002)
                msgs = messages(s, rng)
                if s.via == "queued":
                    s.request_id = client.completion_async(s.model, msgs, **kwargs(s))
                    if s.model == FAKE_MODEL:
                        busy.append(asyncio.ensure_future(client._results.get(s.request_id).wait()))
                else:
                    task = asyncio.ensure_future(client.acompletion(s.model, msgs, **kwargs(s)))
                    tasks.append((s, task))
                    if s.model == FAKE_MODEL:
                        busy.append(task)
            tick = asyncio.ensure_future(ticker(busy))
            results = await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
            for (s, _), result in zip(tasks, results, strict=True):
                s.outcomes.append(result)
            window = await outage_task
            await asyncio.gather(*busy, return_exceptions=True)
            await tick
            return t0, window

        t0, window = client._loop.run(drive(), timeout=120)

        async def burst() -> list[Any]:  # from this thread's own loop: the usual async path
            return await asyncio.gather(*(client.acompletion(s.model, messages(s, rng), **kwargs(s))
                                          for s in outer), return_exceptions=True)

        for s, result in zip(outer, asyncio.run(asyncio.wait_for(burst(), 120)), strict=True):
            s.outcomes.append(result)

        fetched_twice: list[str] = []
        for s in sent:
            if s.via != "queued":
                continue
            try:
                s.outcomes.append(client.get_result(s.request_id, timeout=60))
            except llmkit.LLMError as exc:
                s.outcomes.append(exc)
            try:
                client.get_result(s.request_id, timeout=1)
                fetched_twice.append(s.request_id)
            except KeyError:
                pass

        ledger = client._service.ledger
        router = client._service.router
        yield Run(
            sent=sent, t0=t0, outage=window,
            records=[ledger[i] for i in range(len(ledger))],
            usage=client.usage(), summary=client.cost_summary(),
            summary_by_provider=client.cost_summary(by="provider"),
            events=client.event_list(),
            transitions={name: list(slot.breaker.transitions) for name, slot in router.by_name.items()},
            final_states=client.health().set_index("provider")["breaker_state"].to_dict(),
            ledger_total=ledger.total_cost_usd(),
            calls={name: client.provider(name).calls for name in ("alpha", "bravo", "charlie")},  # type: ignore
            fake_requests=sum(1 for r in fake.requests if r.path == "/v1/chat/completions"),
            fetched_twice=fetched_twice,
            real_seconds=time.perf_counter() - started,
        )


def by_n(run: Run) -> dict[int, Any]:
    records: dict[int, Any] = {}
    for record in run.records:
        n = record.metadata["n"]
        assert n not in records, f"request {n} has two ledger records"
        records[n] = record
    return records


# -- nothing lost --------------------------------------------------------------------------------------


def test_every_request_has_exactly_one_ledger_record(run: Run) -> None:
    assert len(run.sent) == 5_000
    ids = [r.request_id for r in run.records]
    assert len(ids) == 5_000 and len(set(ids)) == 5_000
    records = by_n(run)
    assert sorted(records) == list(range(5_000))
    finished = [e for e in run.events if e.kind == "request"]
    assert sorted(e.request_id for e in finished) == sorted(ids)
    assert len(run.usage) == 5_000 and set(run.usage["request_id"]) == set(ids)


def test_every_request_got_exactly_one_outcome_matching_its_record(run: Run) -> None:
    records = by_n(run)
    assert run.fetched_twice == []  # a queued result is handed over once, then forgotten
    for s in run.sent:
        assert len(s.outcomes) == 1, (s, s.outcomes)
        outcome, record = s.outcomes[0], records[s.n]
        assert record.priority == s.priority and record.requested_model == s.model
        if s.request_id is not None:
            assert record.request_id == s.request_id
        if isinstance(outcome, llmkit.Response):
            assert (record.status, record.error_type) == ("ok", None)
            assert outcome.id == record.request_id and outcome.provider == record.provider
            assert record.attempts == len(outcome.attempts)
        else:
            assert isinstance(outcome, llmkit.LLMError), f"request {s.n} ended in untyped {outcome!r}"
            assert (record.status, record.error_type) == ("error", type(outcome).__name__)
        if s.pinned:
            assert record.provider in (None, s.pinned)
        if s.model == FAKE_MODEL:
            assert isinstance(outcome, llmkit.Response) and outcome.provider == "delta", outcome


def test_outcomes_are_the_ones_the_faults_allow(run: Run) -> None:
    kinds = Counter(type(s.outcomes[0]).__name__ for s in run.sent)
    assert kinds["Response"] > 4_500, kinds
    # bravo's bad requests fail fast; deadlines and the pinned outage are the only other ways to fail
    assert set(kinds) - {"Response"} <= {"BadRequestError", "RequestTimeoutError", "CircuitOpenError",
                                         "ProviderConnectionError", "ServerError", "OverloadedError",
                                         "AllProvidersFailedError"}, kinds
    assert kinds["BadRequestError"] > 0
    # requests pinned to alpha cannot fall back: during its outage they failed fast on the open breaker
    pinned = Counter(type(s.outcomes[0]).__name__ for s in run.sent if s.pinned)
    assert pinned["Response"] > 0 and pinned["CircuitOpenError"] > 0, pinned
    assert set(pinned) <= {"Response", "CircuitOpenError", "ProviderConnectionError", "ServerError",
                           "OverloadedError", "RequestTimeoutError"}, pinned
    records = by_n(run)
    for s in run.sent:  # every request ended within its deadline (virtual time: exact)
        deadline = s.timeout if s.timeout is not None else 120.0
        assert records[s.n].latency_s <= deadline + 1e-6, (s, records[s.n])
    tight = [records[s.n] for s in run.sent if s.timeout is not None]
    assert {r.status for r in tight} == {"ok", "error"}  # the tight deadline both held and cut
    assert "RequestTimeoutError" in {r.error_type for r in tight}


def test_the_loopback_fake_served_its_requests_over_http(run: Run) -> None:
    served = [s for s in run.sent if s.model == FAKE_MODEL]
    assert len(served) >= 100
    assert run.fake_requests == len(served)  # one HTTP call each: no timeouts, no retries


# -- breakers ------------------------------------------------------------------------------------------


def test_breaker_transitions_alternate_legally(run: Run) -> None:
    events = [e for e in run.events if e.kind == "breaker"]
    for name, transitions in run.transitions.items():
        chain = [(old, new) for _, old, new in transitions]
        assert [(e.detail["old"], e.detail["new"]) for e in events if e.provider == name] == chain
        state = "closed"
        for old, new in chain:
            assert old == state and (old, new) in LEGAL, (name, chain)
            state = new
        assert run.final_states[name] == state == "closed", (name, chain)


def test_the_outaged_provider_opened_during_the_outage_and_closed_after(run: Run) -> None:
    down, up = run.outage
    assert (down - run.t0, up - down) == pytest.approx(OUTAGE, abs=1e-3)
    alpha = run.transitions["alpha"]
    opened = [t for t, old, new in alpha if (old, new) == ("closed", "open")]
    assert opened and any(down <= t <= up for t in opened), (run.outage, alpha)
    reset = BREAKERS["alpha"][1]
    # while it was down, every probe failed: no close between the first opening and the end of the outage
    first = min(t for t in opened if t >= down)
    assert not [t for t, _, new in alpha if new == "closed" and first < t < up]
    assert [t for t, _, new in alpha if new == "half_open" and first + reset <= t < up]  # it did probe
    closes = [t for t, _, new in alpha if new == "closed" and t >= up]
    assert closes, alpha


def _counting_runs(run: Run, name: str) -> tuple[int, list[int]]:
    """Replay the provider's reported outcomes: the longest run of breaker-counting failures in a row,
    and the run length at each closed->open transition (the failure that tripped it is reported just
    before its attempt is recorded, hence ``+ 1``)."""
    longest, current, at_trips = 0, 0, []
    for e in run.events:
        if e.provider != name:
            continue
        if e.kind == "breaker":
            if (e.detail["old"], e.detail["new"]) == ("closed", "open"):
                at_trips.append(current + 1)
            if e.detail["new"] == "closed":
                current = 0
        elif e.kind == "attempt" and e.detail["outcome"] != "skipped":
            if e.detail["outcome"] == "error" and e.detail["error"] in BREAKER_ERRORS:
                current += 1
                longest = max(longest, current)
            else:
                current = 0  # a success (or a failure that does not count) resets pybreaker's counter
    return longest, at_trips


@pytest.mark.parametrize("name", ["alpha", "bravo", "charlie", "delta"])
def test_breakers_moved_only_as_the_faults_allow(run: Run, name: str) -> None:
    assert run.events[0].seq == 1  # nothing fell out of the event buffer: the replay sees everything
    fail_max = BREAKERS[name][0]
    longest, at_trips = _counting_runs(run, name)
    trips = [(old, new) for _, old, new in run.transitions[name] if (old, new) == ("closed", "open")]
    assert len(trips) == len(at_trips)
    assert all(n >= fail_max for n in at_trips), (name, at_trips)
    if longest < fail_max:
        assert run.transitions[name] == [], (name, longest)


def test_a_provider_that_failed_but_never_enough_never_tripped(run: Run) -> None:
    errors = Counter(e.detail["error"] for e in run.events
                     if e.kind == "attempt" and e.provider == "bravo" and e.detail["outcome"] == "error")
    assert sum(errors[k] for k in BREAKER_ERRORS) > 50, errors  # bravo failed plenty...
    longest, _ = _counting_runs(run, "bravo")
    assert longest < BREAKERS["bravo"][0]  # ...but never fail_max times in a row
    assert run.transitions["bravo"] == [] and run.transitions["charlie"] == []
    assert run.calls["charlie"] > 0  # charlie served fallbacks and never failed


def test_counts_against_breaker_matches_the_replay_rules() -> None:
    """The replay above assumes these errors, and only these, count toward a breaker."""
    from llmkit import _errors as e

    counting = {cls.__name__ for cls in (e.ServerError, e.OverloadedError, e.ProviderTimeoutError,
                                         e.ProviderConnectionError, e.RateLimitError, e.BadRequestError)
                if counts_against_breaker(cls("x", provider="p"))}
    assert counting == BREAKER_ERRORS


# -- costs ---------------------------------------------------------------------------------------------


def test_costs_add_up(run: Run) -> None:
    responses = [s.outcomes[0] for s in run.sent if isinstance(s.outcomes[0], llmkit.Response)]
    assert all(r.cost_usd is not None and r.cost_usd > 0 for r in responses)
    total = math.fsum(r.cost_usd for r in responses)
    assert total > 0
    assert abs(total - float(run.usage["cost_usd"].sum())) < 1e-9
    assert abs(total - float(run.summary["cost_usd"].sum())) < 1e-9
    assert abs(total - float(run.summary_by_provider["cost_usd"].sum())) < 1e-9
    assert abs(total - run.ledger_total) < 1e-9
    assert int(run.summary["requests"].sum()) == 5_000
    per_provider = Counter()
    for r in responses:
        per_provider[r.provider] += r.cost_usd
    by_provider = run.summary_by_provider.reset_index().set_index("provider")["cost_usd"]
    for name, cost in per_provider.items():
        assert abs(cost - float(by_provider[name])) < 1e-9, name
    assert set(per_provider) == {"alpha", "bravo", "charlie", "delta"}


def test_the_run_is_fast(run: Run) -> None:
    assert run.real_seconds < 60

