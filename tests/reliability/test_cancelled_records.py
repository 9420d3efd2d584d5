"""Cancelled requests and abandoned streams in the ledger (issue 11, item 10).

A stream its reader abandons (a ``break`` and the stream dropped, ``close()``, an ``async for`` left early,
the reading task cancelled) ends in exactly one record: status ``cancelled`` with the text so far
estimated into tokens (``usage_estimated``) and priced, or ``ok`` when the answer was already complete.
A request cancelled by its caller (a cancelled task or gather, ``client.cancel(id)``) is ``cancelled``
too; ``close()`` still ends what it cuts short as ``error``/``ClientClosedError``.

Providers are the in-process mock, with a stream that stops after a few chunks until the test lets it go
on; nothing waits for time.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit._types import Request, StreamChunk

MSG = [{"role": "user", "content": "hello there, tell me a story"}]
PRICING = {"gpt-4o": {"input": 2.5, "output": 10.0}}
CHUNKS = ["Once", " upon", " a", " time"]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "ledger.sqlite3"


@pytest.fixture
def client(path: Path) -> Iterator[llmkit.Client]:
    c = llmkit.Client([{"name": "m", "adapter": "mock", "pricing": PRICING}], ledger=str(path),
                      health_interval=None, loop_factory=asyncio.new_event_loop)
    yield c
    c.close()


def stall_after_chunks(client: llmkit.Client) -> threading.Event:
    """The mock streams CHUNKS, then (like a server mid-answer) sends nothing more until cancelled.
    Returns an event set once every chunk was sent."""
    provider = client.provider("m")
    sent = threading.Event()

    async def stream(request: Request) -> AsyncIterator[StreamChunk]:
        for text in CHUNKS:
            yield StreamChunk(text=text)
        sent.set()
        await asyncio.Event().wait()
        yield StreamChunk(text="never")

    provider.stream = stream  # type: ignore[method-assign]
    return sent


def settle(client: llmkit.Client) -> None:
    """Wait (on the private loop, no time passing) until every request has written its record."""
    while client.in_flight():
        client._loop.run(asyncio.sleep(0))


def rows(path: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(path)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM requests ORDER BY id")]
    finally:
        db.close()


def assert_cancelled_with_estimate(row: dict[str, Any], chunks_read: int) -> None:
    assert row["status"] == "cancelled" and row["error_type"] == "CancelledError"
    assert row["provider"] == "m" and row["model"] == "gpt-4o" and row["stream"] == 1
    assert row["usage_estimated"] == 1
    assert row["input_tokens"] > 0 and row["output_tokens"] >= chunks_read  # the text so far, estimated
    assert row["cost_usd"] is not None and row["cost_usd"] > 0  # what it cost, not zero


# -- abandoned streams -----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_break_and_drop_records_one_cancelled_row_with_estimated_tokens(client: llmkit.Client, path: Path) -> None:
    stall_after_chunks(client)
    read = 0
    for _chunk in client.stream("gpt-4o", MSG):
        read += 1
        if read == 2:
            break
    gc.collect()  # the dropped stream cancels its producer
    settle(client)
    client.close()
    (row,) = rows(path)
    assert_cancelled_with_estimate(row, read)


@pytest.mark.timeout(20)
def test_close_mid_stream_records_the_text_so_far(client: llmkit.Client, path: Path) -> None:
    sent = stall_after_chunks(client)
    stream = client.stream("gpt-4o", MSG)
    assert next(stream).text == "Once"
    assert sent.wait(10)  # the server sent all four chunks, then went quiet
    stream.close()
    settle(client)
    client.close()
    (row,) = rows(path)
    assert_cancelled_with_estimate(row, len(CHUNKS))
    assert row["output_tokens"] == pytest.approx(len("".join(CHUNKS)) / 4, abs=2)
    usage = llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=str(path), health_interval=None)
    try:  # the frames take the status: not an error, but its cost counts
        frame = usage.usage(scope="all")  # another client: another session
        assert frame["status"].tolist() == ["cancelled"]
        assert bool(frame["usage_estimated"].iloc[0]) and frame["cost_usd"].iloc[0] > 0
        summary = usage.cost_summary(scope="all")
        assert summary["requests"].sum() == 1 and summary["errors"].sum() == 0
        assert summary["cost_usd"].sum() == pytest.approx(row["cost_usd"])
        assert usage.latency(scope="all")["errors"].sum() == 0
    finally:
        usage.close()


@pytest.mark.timeout(20)
def test_async_for_left_early_and_a_cancelled_reader_task(client: llmkit.Client, path: Path) -> None:
    stall_after_chunks(client)

    async def leave_early() -> None:
        stream = client.astream("gpt-4o", MSG)
        async for _chunk in stream:
            break
        await stream.aclose()

    async def cancelled_reader() -> None:
        got = asyncio.Event()

        async def read() -> None:
            async for _chunk in client.astream("gpt-4o", MSG):
                got.set()

        task = asyncio.ensure_future(read())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(leave_early())
    asyncio.run(cancelled_reader())
    gc.collect()
    settle(client)
    client.close()
    found = rows(path)
    assert len(found) == 2
    for row in found:
        assert_cancelled_with_estimate(row, 1)


@pytest.mark.timeout(20)
def test_a_stream_that_had_finished_is_ok_with_the_servers_usage(client: llmkit.Client, path: Path) -> None:
    stream = client.stream("gpt-4o", MSG)  # the plain mock: a short answer, then its usage
    next(stream)
    settle(client)  # the server finished and the request is recorded; the reader has not read the end
    stream.close()
    del stream
    gc.collect()
    client.close()
    (row,) = rows(path)
    assert row["status"] == "ok" and row["usage_estimated"] == 0 and row["error_type"] is None


@pytest.mark.timeout(30)
def test_many_abandoned_streams_each_end_in_exactly_one_record(client: llmkit.Client, path: Path) -> None:
    stall_after_chunks(client)
    for i in range(40):
        stream = client.stream("gpt-4o", MSG, metadata={"i": i})
        for _ in range(1 + i % 3):
            next(stream)
        if i % 2:
            stream.close()
        del stream
    gc.collect()
    settle(client)
    client.close()
    found = rows(path)
    assert len(found) == len({r["request_id"] for r in found}) == 40
    assert {r["status"] for r in found} == {"cancelled"}


# -- cancelled requests ----------------------------------------------------------------------------


def _hold(client: llmkit.Client) -> threading.Event:
    provider = client.provider("m")
    started = threading.Event()

    async def complete(request: Request) -> Any:
        started.set()
        await asyncio.Event().wait()

    provider.complete = complete  # type: ignore[method-assign]
    return started


@pytest.mark.timeout(20)
def test_requests_cancelled_by_the_caller_are_recorded_cancelled(client: llmkit.Client, path: Path) -> None:
    started = _hold(client)
    rid = client.completion_async("gpt-4o", MSG)
    assert started.wait(10)
    assert client.cancel(rid)

    async def gather_cancelled() -> None:
        group = asyncio.gather(*(client.acompletion("gpt-4o", MSG) for _ in range(3)))
        while client.in_flight() < 3:
            await asyncio.sleep(0)
        group.cancel()
        with pytest.raises(asyncio.CancelledError):
            await group

    asyncio.run(gather_cancelled())
    settle(client)
    client.close()
    found = rows(path)
    assert len(found) == 4
    assert {r["status"] for r in found} == {"cancelled"}
    assert {r["error_type"] for r in found} == {"CancelledError"}
    assert all(r["cost_usd"] == 0 and r["input_tokens"] == 0 for r in found)


@pytest.mark.timeout(20)
def test_requests_cut_short_by_close_stay_errors(client: llmkit.Client, path: Path) -> None:
    started = _hold(client)
    rid = client.completion_async("gpt-4o", MSG)
    assert started.wait(10)
    client.close()
    with pytest.raises(llmkit.ClientClosedError):
        client.get_result(rid, timeout=5)
    (row,) = rows(path)
    assert row["status"] == "error" and row["error_type"] == "ClientClosedError"
