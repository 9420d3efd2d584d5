"""The request path's fast paths (issue 16) decide exactly as the general code they skip: a success after
failures still resets the breaker's count, odd token counts are still clamped, bad JSON still refused."""

from __future__ import annotations

import json
import math

import pytest

from llmkit._config import BreakerConfig
from llmkit._errors import InvalidRequestError, ServerError
from llmkit._types import Usage
from llmkit._validate import MAX_TOKENS, build_request, encodable, sane_usage
from llmkit.routing.breaker import Breaker

MSG = [{"role": "user", "content": "hi"}]


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_success_after_failures_resets_the_count_and_a_success_while_closed_changes_nothing() -> None:
    breaker = Breaker("p", BreakerConfig(fail_max=3, reset_timeout=10.0), Clock())
    breaker.report(None)
    assert (breaker.state, breaker.fail_count, breaker.transitions) == ("closed", 0, [])
    breaker.report(ServerError("boom", provider="p"))
    breaker.report(ServerError("boom", provider="p"))
    assert breaker.fail_count == 2
    breaker.report(None)  # not the fast path: a failure is counted
    assert breaker.fail_count == 0
    for _ in range(3):
        breaker.report(ServerError("boom", provider="p"))
    assert breaker.state == "open"


def test_a_successful_probe_closes_an_open_breaker() -> None:
    clock = Clock()
    breaker = Breaker("p", BreakerConfig(fail_max=1, reset_timeout=10.0), clock)
    breaker.report(ServerError("boom", provider="p"))
    assert breaker.state == "open"
    clock.now += 10.0
    probe = breaker.admit()
    assert probe is True
    breaker.report(None, probe)
    assert breaker.state == "closed" and breaker.fail_count == 0


def test_plausible_usage_is_left_alone_and_odd_counts_are_still_clamped() -> None:
    usage = Usage(input_tokens=10, output_tokens=MAX_TOKENS)
    assert sane_usage(usage) is usage and not usage.suspect and usage.output_tokens == MAX_TOKENS
    for odd in (-1, MAX_TOKENS + 1, True, 1.5, None):
        bad = sane_usage(Usage(input_tokens=odd, output_tokens=3))  # type: ignore[arg-type]
        assert bad.suspect and bad.output_tokens == 3
        assert bad.input_tokens == (MAX_TOKENS if odd == MAX_TOKENS + 1 and odd is not True else 0)


def test_strict_json_check_still_refuses_what_the_wire_cannot_carry() -> None:
    assert encodable("m", {"text": "héllo"}) == '{"text": "héllo"}'.encode()
    for bad in ({"x": math.nan}, {"x": "\ud800"}, {"x": object()}):
        with pytest.raises(InvalidRequestError):
            encodable("m", bad)
    with pytest.raises(InvalidRequestError, match="metadata"):
        build_request("m", MSG, metadata={"x": math.inf})
    assert build_request("m", MSG, metadata={}).metadata == {}


def test_parsed_urls_follow_the_base_url_and_keep_the_query() -> None:
    from llmkit._config import ProviderConfig
    from llmkit.providers.compatible import OpenAICompatibleProvider

    provider = OpenAICompatibleProvider(ProviderConfig(name="p", adapter="openai_compatible",
                                                       base_url="http://127.0.0.1:1/v1?api-version=2"))
    first = provider._parsed_url("/chat/completions")
    assert str(first) == "http://127.0.0.1:1/v1/chat/completions?api-version=2"
    assert provider._parsed_url("/chat/completions") is first  # parsed once
    provider.base_url = "http://127.0.0.1:2/v1"
    assert str(provider._parsed_url("/chat/completions")) == "http://127.0.0.1:2/v1/chat/completions?api-version=2"
    assert provider._timeout(None) is provider._timeout(None) and provider._timeout(3.0).read == 3.0


def test_kept_candidates_are_the_ones_computed_and_each_caller_gets_its_own_list() -> None:
    from llmkit._config import parse_client_config
    from llmkit._errors import NoProviderError
    from llmkit._service import Service
    from llmkit.routing import router as router_module

    config = parse_client_config({"providers": [
        {"name": "a", "adapter": "mock", "models": ["gpt-*"], "priority": 1},
        {"name": "b", "adapter": "mock", "models": ["*"], "priority": 2}],
        "fallbacks": {"gpt-x": ["claude-y"]}, "ledger": None, "health_interval": None})
    router = Service(config, Clock()).router
    first = router.candidates("gpt-x")
    assert [(s.name, m) for s, m in first] == [("a", "gpt-x"), ("b", "gpt-x"), ("b", "claude-y")]
    first.clear()  # a caller's list is its own: the kept one is not touched
    assert [(s.name, m) for s, m in router.candidates("gpt-x")] == [("a", "gpt-x"), ("b", "gpt-x"), ("b", "claude-y")]
    assert [(s.name, m) for s, m in router.candidates("gpt-x", "b")] == [("b", "gpt-x"), ("b", "claude-y")]
    for _ in range(2):  # an unknown provider is refused every time (never kept)
        with pytest.raises(NoProviderError):
            router.candidates("gpt-x", "nope")
    for i in range(router_module._CANDIDATES_KEPT + 5):  # many model names: the table starts over, answers stay right
        assert [s.name for s, _ in router.candidates(f"m{i}")] == ["b"]
    assert len(router._candidates) <= router_module._CANDIDATES_KEPT
    assert [s.name for s, _ in router.candidates("gpt-1")] == ["a", "b"]


def test_the_event_buffer_reads_back_what_was_emitted_and_leaves_the_collector_alone() -> None:
    import gc

    from llmkit._events import Event, EventLog

    heard: list[Event] = []
    log = EventLog(maxlen=3, wallclock=lambda: 5.0)
    log.subscribe(heard.append)
    log.emit("attempt", "p", "r1", model="m", outcome="ok", error=None, duration_s=0.25, retry=0)
    log.emit("breaker", "p", old="closed", new="open")
    log.emit("request")
    log.emit("request", "p", "r2", status="ok", cost_usd=None)
    assert [e.seq for e in log.snapshot()] == [2, 3, 4]  # the oldest left past maxlen
    assert log.snapshot("request") == [Event(3, 5.0, "request", None, None, {}),
                                       Event(4, 5.0, "request", "p", "r2", {"status": "ok", "cost_usd": None})]
    assert log.since(2) == log.snapshot()[1:] and log.since(4) == []
    assert heard[0] == Event(1, 5.0, "attempt", "p", "r1",
                             {"model": "m", "outcome": "ok", "error": None, "duration_s": 0.25, "retry": 0})
    assert list(heard[0].detail) == ["model", "outcome", "error", "duration_s", "retry"]  # in the order given
    gc.collect()
    assert not any(gc.is_tracked(kept) for kept in log._events)  # a full buffer costs full collections nothing


def test_the_mock_answers_the_same_with_and_without_extra_arguments() -> None:
    import llmkit

    turns = [{"role": "user", "content": "weather?"},
             {"role": "assistant", "content": None,
              "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
             {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    tools = [{"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {}}}}]
    with llmkit.Client(providers=[{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None,
                       health_interval=None) as client:
        plain = client.completion("x", [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}])
        assert (plain.content, plain.finish_reason, plain.usage.input_tokens) == ("Mock reply to: bye", "stop", 22)
        assert (plain.provider, plain.model, plain.requested_model, plain.raw) == (
            "m", "x", "x", {"mock": True, "content": "Mock reply to: bye"})
        for extra in ({}, {"tools": tools}):  # the tool results are in: answered in text either way
            answer = client.completion("x", turns, **extra)
            assert (answer.content, answer.tool_calls) == ("Mock answer from 1 tool result(s): sunny", [])
        asked = client.completion("x", [{"role": "user", "content": "hi"}], response_format={"type": "json_object"})
        assert asked.content == '{"answer": "Mock reply to: hi"}'


def test_text_columns_read_like_lists_across_sealed_chunks_and_forgetting(monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from llmkit.ledger import store

    monkeypatch.setattr(store, "_CHUNK", 4)
    column, mirror = store._Texts(), []
    rng = random.Random(7)
    for step in range(400):
        value = None if step % 5 == 0 else f"t{step}"
        column.open.append(value)
        mirror.append(value)
        if len(column.open) >= store._CHUNK:
            column.seal()
        if rng.random() < 0.1:
            k = rng.randrange(0, len(mirror) + 3)
            del column[:k]
            del mirror[:k]
        assert len(column) == len(mirror) and list(column) == mirror
        for start in {0, len(mirror) // 3, len(mirror), len(mirror) + 2}:
            assert column[start:] == mirror[start:]
        if mirror:
            i = rng.randrange(len(mirror))
            assert column[i] == mirror[i] and column[-1] == mirror[-1]
    with pytest.raises(IndexError):
        column[len(mirror)]


def test_a_ledger_with_sealed_text_chunks_forgets_and_refuses_duplicates_as_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio
    import gc

    from llmkit.ledger import store

    monkeypatch.setattr(store, "_CHUNK", 4)
    ledger = store.Ledger(None)
    ledger.memory_records = 10  # (a file-backed ledger's window, on a memory one: no file needed)

    def record(i: int) -> store.LedgerRecord:
        return store.LedgerRecord(f"r{i}", float(i), 0.0, "p", "m", "m", "ok", None, f"e{i}" if i % 3 else None,
                                  1, 2, 0, 0, 0, False, 0.5, 0.1, 1, False, False, 0, None, None, "s")

    async def fill() -> None:
        for i in range(40):
            await ledger.append(record(i))
    asyncio.run(fill())
    held = range(ledger.first_held, len(ledger))
    assert len(ledger) == 40 and 10 <= len(held) <= 12
    assert [ledger[i].request_id for i in held] == [f"r{i}" for i in held]
    assert [ledger[i].error_message for i in held] == [f"e{i}" if i % 3 else None for i in held]
    assert ledger.columns(ledger.first_held + 2)["request_id"] == [f"r{i}" for i in held][2:]
    assert ledger.request_ids() == [f"r{i}" for i in held]
    with pytest.raises(ValueError, match="already in the ledger"):
        ledger.append_sync(record(39))
    ledger.append_sync(record(0))  # forgotten, so not a duplicate any more
    gc.collect()
    assert not gc.is_tracked(ledger._ids) and not any(gc.is_tracked(c) for c in ledger._texts["request_id"]._sealed)


def test_records_kept_by_kind_read_back_field_by_field_and_a_failed_append_leaves_no_half_record(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from llmkit.ledger import store

    monkeypatch.setattr(store, "_COMBOS_KEPT", 3)  # the codes of (provider, model, ...) combinations start over
    ledger = store.Ledger(None)

    def record(i: int, priority: int = 0) -> store.LedgerRecord:
        return store.LedgerRecord(
            f"r{i}", 100.0 + i, 50.0 + i, f"p{i % 5}", None if i % 4 == 0 else f"m{i % 3}", "asked",
            "ok" if i % 2 else "error", None if i % 2 else "ServerError", None, i, 2 * i, i % 3, 0, i % 7,
            i % 2 == 0, None if i % 3 == 0 else i / 10, i / 100, 1 + i % 2, i % 5 == 0, False, priority,
            {"i": i} if i % 6 == 0 else None, None, "s", "completion", i % 8 == 0, 0.0, False)

    for i in range(30):
        ledger.append_sync(record(i))
    with pytest.raises(OverflowError):
        ledger.append_sync(record(30, priority=2**70))  # does not fit its int64 column
    ledger.append_sync(record(31))
    assert len(ledger) == 31 and ledger.request_ids()[-2:] == ["r29", "r31"]
    expected = [record(i) for i in (*range(30), 31)]
    assert [ledger[i] for i in range(len(ledger))] == expected
    columns = ledger.columns(5)
    for name in store.FIELDS:
        assert list(columns[name]) == [getattr(r, name) for r in expected[5:]] or name == "metadata"
    assert [None if m is None else json.loads(m) for m in columns["metadata"]] == [r.metadata for r in expected[5:]]
    times, costs = ledger.costs(29)
    assert list(times) == [129.0, 131.0] and [c if c == c else None for c in costs] == [2.9, 3.1]
