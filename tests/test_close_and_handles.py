"""close() against requests running in their callers' tasks, and completion_async's handles: cases an
independent review of the fifth round found broken (each failed before its fix)."""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

import llmkit
import llmkit._handle
import llmkit.providers.mock

from .test_caller_loop import MESSAGES, _served, _until


@pytest.mark.timeout(30)
def test_a_caller_cancelled_as_close_begins_stays_cancelled() -> None:
    """The caller's own cancellation reaches its request after close() set ``closing`` but before close's
    cancel did: the caller must see CancelledError (as before aba1a1f), not a ClientClosedError that
    swallows its cancellation and leaves its task cancelling."""
    with _served("slow", slow=True, max_concurrency=1) as (server, client):
        async def main() -> tuple[str, int]:
            outcome: list[Any] = []

            async def caller() -> None:
                try:
                    await client.acompletion("m", MESSAGES)  # waits for the one concurrency slot
                except BaseException as exc:
                    task = asyncio.current_task()
                    assert task is not None
                    outcome[:] = [type(exc).__name__, task.cancelling()]
                    raise

            first = asyncio.ensure_future(client.acompletion("m", MESSAGES))  # holds the slot (slow answer)
            await _until(lambda: server.requests, "the server got the first request")
            task = asyncio.ensure_future(caller())
            await _until(lambda: client._service.waiting == 1, "the second request waits for the slot")
            closer = asyncio.ensure_future(client.aclose())  # sets closing, then cancels flights a step later
            task.cancel()  # the caller's own cancellation (a shutdown, a TaskGroup, a timeout) in between
            await asyncio.gather(task, closer, first, return_exceptions=True)
            return outcome[0], outcome[1]

        name, cancelling = asyncio.run(main())
    assert name == "CancelledError", (name, cancelling)  # (was a ClientClosedError, with cancelling() == 1)


@pytest.mark.timeout(30)
def test_close_while_the_record_is_being_written_leaves_the_callers_task_clean(tmp_path: Path) -> None:
    """close() cancels the request's task while it waits for the ledger writer (a busy file, a burst):
    the caller gets its response or a ClientClosedError, never a bare CancelledError with its task left
    cancelling; the request keeps its one record and its ``request`` event."""
    # (a budget: no journal, so the record is committed on the request path and can wait for the writer)
    with _served("hello", ledger=str(tmp_path / "ledger.sqlite3"), budget_usd=100.0) as (_server, client):
        ledger = client._service.ledger
        writer = ledger._writer
        assert writer is not None

        async def main() -> tuple[str, int]:
            outcome: list[Any] = []

            async def caller() -> None:
                try:
                    await client.acompletion("m", MESSAGES)
                    outcome[:] = ["ok"]
                except BaseException as exc:
                    outcome[:] = [type(exc).__name__]
                task = asyncio.current_task()
                assert task is not None
                outcome.append(task.cancelling())

            writer.db_lock.acquire()  # the writer is busy: the record waits for it (the row is in memory)
            try:
                task = asyncio.ensure_future(caller())
                await _until(lambda: len(ledger._ids) == 1, "the record is in memory and waits for the writer")
                closer = asyncio.ensure_future(client.aclose())
                flights = list(client._service._flights)
                await _until(lambda: task.done() or any(f.on_end for f in flights), "close cancelled or waits")
            finally:
                writer.db_lock.release()
            await asyncio.gather(task, closer)
            return outcome[0], outcome[1]

        name, cancelling = asyncio.run(main())
        records = client.usage()
        events = client.event_list("request")
    assert len(records) == 1
    assert (name, cancelling) in {("ok", 0), ("ClientClosedError", 0)}, (name, cancelling)  # (was CancelledError, 1)
    assert len(events) == 1  # (was none: commit() re-raised the CancelledError before emitting it)


def _forked_child(out: Any) -> None:
    try:
        client = llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"]}], ledger=None, health_interval=None)
        rid = client.completion_async("x", MESSAGES)
        out.put(("ok", client.get_result(rid, timeout=10).content))
        client.close()
    except BaseException as exc:
        out.put(("error", repr(exc)))


@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
                    reason="needs os.fork")
def test_completion_async_works_in_a_child_forked_while_another_thread_held_the_handle_lock() -> None:
    """``llmkit._handle._lock`` is one lock for every handle, taken briefly by the loop thread as each
    result ends; a fork at that moment leaves it locked for good in the child (no at-fork reset), where
    the first completion_async then hangs. A concurrent.futures.Future had a lock of its own."""
    held, release = threading.Event(), threading.Event()

    def loop_thread_ending_a_request() -> None:
        with llmkit._handle._lock:
            held.set()
            release.wait(30)

    thread = threading.Thread(target=loop_thread_ending_a_request)
    thread.start()
    held.wait(10)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=_forked_child, args=(out,))
    try:
        child.start()
    finally:
        release.set()
        thread.join(10)
    try:
        result = out.get(timeout=20)  # (the child hung in keep_in()/join())
    except Exception as exc:  # queue.Empty
        result = ("hung", repr(exc))
    finally:
        child.join(5)
        if child.is_alive():
            child.kill()
            child.join()
    assert result[0] == "ok", result


@pytest.mark.timeout(8)  # (close would wait 10 s if it missed the flight's end on the other loop)
def test_close_from_another_thread_ends_a_request_on_an_async_callers_loop() -> None:
    """close() on this thread, the request on another thread's loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with _served("slow", slow=True) as (server, client):
            async def caller() -> tuple[str, int]:
                try:
                    await client.acompletion("m", MESSAGES)
                    name = "ok"
                except BaseException as exc:
                    name = type(exc).__name__
                task = asyncio.current_task()
                assert task is not None
                return name, task.cancelling()

            future = asyncio.run_coroutine_threadsafe(caller(), loop)

            async def wait_for_server() -> None:
                await _until(lambda: server.requests, "the server got the request")

            asyncio.run(wait_for_server())
            client.close()
            assert future.result(5) == ("ClientClosedError", 0)
            assert list(client.usage()["error_type"]) == ["ClientClosedError"]
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


class ScoringAdapter(llmkit.providers.mock.MockProvider):
    """A custom adapter (``"package.module:Class"``) whose raw answer carries numpy values and bytes."""

    async def complete(self, request: Any) -> Any:
        import numpy as np

        response = await super().complete(request)
        response.raw = {"logprob": np.float64(-0.25), "top": np.array([1, 2]), "blob": bytearray(b"ab")}
        return response


@pytest.mark.timeout(60)
def test_a_packed_result_keeps_a_custom_adapters_raw_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """marshal does not refuse what supports the buffer protocol (numpy scalars and arrays, bytearray,
    memoryview, array.array): it writes their bytes. Such a response is kept as it is, not packed."""
    import numpy as np

    import llmkit._client

    monkeypatch.setattr(llmkit._client, "PACK_FROM", 0)  # (as once 1,000 results wait)
    providers = [{"name": "s", "adapter": f"{__name__}:ScoringAdapter", "models": ["*"]}]
    with llmkit.Client(providers, ledger=None, health_interval=None) as c:
        raw = c.get_result(c.completion_async("x", MESSAGES), timeout=30).raw
    assert type(raw["logprob"]) is np.float64 and raw["logprob"] == -0.25, raw  # (was 8 bytes)
    assert type(raw["blob"]) is bytearray, raw  # (was b'ab')
    assert list(raw["top"]) == [1, 2], raw


class DictToolCallsAdapter(llmkit.providers.mock.MockProvider):
    """A custom adapter that hands back its tool calls as OpenAI-shaped dicts (not ``ToolCall``)."""

    async def complete(self, request: Any) -> Any:
        response = await super().complete(request)
        response.tool_calls = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]
        return response


@pytest.mark.timeout(60)
def test_a_response_that_fails_to_pack_is_still_handed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    """A response ``pack_response`` cannot read (here AttributeError from attrgetter) is kept as it is: the
    handle still ends (it used to stay pending, and get_result waited forever)."""
    import llmkit._client

    monkeypatch.setattr(llmkit._client, "PACK_FROM", 0)
    providers = [{"name": "d", "adapter": f"{__name__}:DictToolCallsAdapter", "models": ["*"]}]
    with llmkit.Client(providers, ledger=None, health_interval=None) as c:
        assert c.completion("x", MESSAGES).tool_calls[0]["id"] == "c1"
        response = c.get_result(c.completion_async("x", MESSAGES), timeout=10)  # (was a TimeoutError)
    assert response.tool_calls[0]["id"] == "c1"
