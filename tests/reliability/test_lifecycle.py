"""Cancellation and shutdown (issue 11, items 1, 3, 5, 9, 21): nothing hangs, leaks or goes unrecorded.

Providers are the in-process mock, held on an event (or forever) so requests stay queued or in flight
exactly as long as the test wants; no test sleeps to let time pass.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit import ClientClosedError
from llmkit._types import Request, StreamChunk

MSG = [{"role": "user", "content": "hello"}]


def _client(tmp_path: Path | None = None, **provider: Any) -> llmkit.Client:
    ledger = str(tmp_path / "ledger.sqlite3") if tmp_path is not None else None
    return llmkit.Client([{"name": "m", "adapter": "mock", "max_concurrency": 1, **provider}], ledger=ledger,
                         health_interval=None, loop_factory=asyncio.new_event_loop)


def _hold(client: llmkit.Client) -> tuple[threading.Event, Any]:
    """Make the mock's calls wait until the returned event is set; returns (started, release)."""
    provider = client.provider("m")
    original = provider.complete
    started = threading.Event()
    gate: dict[str, asyncio.Event] = {}

    async def complete(request: Request) -> Any:
        event = gate.setdefault("e", asyncio.Event())
        started.set()
        await event.wait()
        return await original(request)

    provider.complete = complete  # type: ignore[method-assign]

    def release() -> None:
        loop = client._loop.loop
        loop.call_soon_threadsafe(lambda: gate.setdefault("e", asyncio.Event()).set())

    return started, release


def _settle(client: llmkit.Client) -> None:
    """Let cancelled requests finish unwinding (each still writes its ledger record) on the private loop."""
    while client.in_flight():
        client._loop.run(asyncio.sleep(0))


def _ledger_rows(path: Path) -> dict[str, list[str]]:
    db = sqlite3.connect(path)
    try:
        rows: dict[str, list[str]] = {}
        for rid, status in db.execute("SELECT request_id, status FROM requests"):
            rows.setdefault(rid, []).append(status)
        return rows
    finally:
        db.close()


# -- items 5 + 9: close() with requests queued or in flight ----------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("how", ["close", "aclose"])
def test_close_ends_queued_and_in_flight_requests(tmp_path: Path, how: str) -> None:
    client = _client(tmp_path)
    started, _release = _hold(client)
    ids = [client.completion_async("gpt-4o", MSG) for _ in range(4)]
    assert started.wait(10)  # one in flight (held), three waiting for the single slot
    if how == "close":
        client.close()
    else:
        asyncio.run(client.aclose())
    for rid in ids:
        with pytest.raises(ClientClosedError):
            client.get_result(rid, timeout=5)
    rows = _ledger_rows(tmp_path / "ledger.sqlite3")
    for rid in ids:
        assert len(rows.get(rid, [])) == 1, rid
        assert rows[rid][0] in ("error", "cancelled")
    with pytest.raises(ClientClosedError):
        client.completion("gpt-4o", MSG)


# -- item 1: cancelling waiters releases everything ------------------------------------------------


@pytest.mark.timeout(20)
def test_cancelled_gather_waiting_for_a_slot_releases_it() -> None:
    client = _client()
    started, release = _hold(client)

    async def scenario() -> None:
        tasks = [asyncio.ensure_future(client.acompletion("gpt-4o", MSG)) for _ in range(5)]
        group = asyncio.gather(*tasks)
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        group.cancel()
        with pytest.raises(asyncio.CancelledError):
            await group

    asyncio.run(scenario())
    release()
    assert client.completion("gpt-4o", MSG, timeout=10).content
    _settle(client)
    assert client.queue_depth() == 0
    client.close()


@pytest.mark.timeout(20)
def test_client_cancel_of_queued_requests_releases_everything(tmp_path: Path) -> None:
    client = _client(tmp_path)
    started, release = _hold(client)
    ids = [client.completion_async("gpt-4o", MSG) for _ in range(5)]
    assert started.wait(10)
    for rid in ids:
        client.cancel(rid)
    release()
    assert client.completion("gpt-4o", MSG, timeout=10).content
    _settle(client)
    assert client.queue_depth() == 0
    client.close()
    rows = _ledger_rows(tmp_path / "ledger.sqlite3")
    for rid in ids:
        assert len(rows.get(rid, [])) == 1, rid


@pytest.mark.timeout(20)
def test_cancel_before_the_request_starts_is_recorded_and_uncounted(tmp_path: Path) -> None:
    client = _client(tmp_path)
    rids = []
    for _ in range(50):  # cancel straight away: some are cancelled before their task ever ran
        rid = client.completion_async("gpt-4o", MSG)
        client.cancel(rid)
        rids.append(rid)
    assert client.completion("gpt-4o", MSG, timeout=10).content
    _settle(client)
    assert client.queue_depth() == 0
    client.close()
    rows = _ledger_rows(tmp_path / "ledger.sqlite3")
    assert all(len(rows.get(rid, [])) == 1 for rid in rids)


@pytest.mark.timeout(20)
def test_cancelled_waiters_for_a_rate_limit_token_release_it() -> None:
    client = llmkit.Client([{"name": "m", "adapter": "mock", "rate_limit": "1/hour"}], ledger=None,
                           health_interval=None, loop_factory=asyncio.new_event_loop)
    client.completion("gpt-4o", MSG)  # the one token of the hour is spent: the next ones wait

    async def scenario() -> None:
        group = asyncio.gather(*(client.acompletion("gpt-4o", MSG) for _ in range(4)))
        while client.in_flight() < 4:
            await asyncio.sleep(0)
        group.cancel()
        with pytest.raises(asyncio.CancelledError):
            await group

    asyncio.run(scenario())
    _settle(client)
    assert client.queue_depth() == 0
    throttle = client._service.slots[0].throttle
    assert throttle.waiting == 0 and client._service.slots[0].gate.in_use == 0
    client.close()


# -- item 3: abandoned streams ---------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_abandoned_streams_release_their_slot(tmp_path: Path) -> None:
    client = _client(tmp_path)
    provider = client.provider("m")

    async def stream(request: Request) -> AsyncIterator[StreamChunk]:
        yield StreamChunk(text="first")
        await asyncio.Event().wait()  # the server never sends more
        yield StreamChunk(text="never")

    provider.stream = stream  # type: ignore[method-assign]
    for _ in range(3):  # more than max_concurrency=1
        for chunk in client.stream("gpt-4o", MSG):
            assert chunk.text == "first"
            break
        gc.collect()
    provider.stream = type(provider).stream.__get__(provider)  # type: ignore[method-assign]
    assert client.completion("gpt-4o", MSG, timeout=10).content
    assert client.in_flight() == 0
    client.close()
    rows = _ledger_rows(tmp_path / "ledger.sqlite3")
    assert sorted(s for v in rows.values() for s in v).count("ok") == 1
    assert len(rows) == 4 and all(len(v) == 1 for v in rows.values())


# -- item 21: dropped clients stop their threads ---------------------------------------------------


@pytest.mark.timeout(20)
def test_dropped_clients_do_not_accumulate_threads(tmp_path: Path) -> None:
    def make(i: int) -> None:
        client = llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=str(tmp_path / f"l{i}.sqlite3"),
                               health_interval=30.0, loop_factory=asyncio.new_event_loop)
        client.completion("gpt-4o", MSG)

    make(-1)
    gc.collect()
    before = threading.active_count()
    for i in range(20):
        make(i)
    gc.collect()
    assert threading.active_count() <= before


@pytest.mark.timeout(20)
def test_aclose_returns_the_private_loop_thread() -> None:
    before = threading.active_count()

    async def scenario() -> None:
        client = llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=30.0,
                               loop_factory=asyncio.new_event_loop)
        await client.acompletion("gpt-4o", MSG)
        await client.aclose()

    for _ in range(5):
        asyncio.run(scenario())
    assert threading.active_count() <= before
