"""Async callers run their requests on their own event loop (no hop to llmkit's loop thread), while sync
calls run on llmkit's loop at the same time: connection pools per loop, one concurrency gate and ledger for
both, cancellation and ``close()`` that lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmkit
import llmkit._service
from llmkit._errors import ClientClosedError
from llmkit.routing.limits import PriorityGate
from llmkit.testing import FakeOpenAIServer

MESSAGES = [{"role": "user", "content": "hi"}]


def _client(url: str, max_concurrency: int = 32, **options: object) -> llmkit.Client:
    provider = {"name": "fake", "adapter": "openai", "api_key": "sk-test-callerloop", "base_url": url,
                "models": ["*"], "max_concurrency": max_concurrency}
    return llmkit.Client([provider], health_interval=None, **options)  # type: ignore[arg-type]


@contextlib.contextmanager
def _served(reply: str, *, slow: bool = False, ledger: str | None = None,
            **options: object) -> Iterator[tuple[FakeOpenAIServer, llmkit.Client]]:
    """A fake OpenAI server answering ``reply`` (the first answer after 30 s when ``slow``) and a client of it,
    closed after."""
    with FakeOpenAIServer(reply=reply) as server:
        if slow:
            server.enqueue(reply, latency=30)
        client = _client(server.url, ledger=ledger, **options)
        try:
            yield server, client
        finally:
            client.close()


async def _until(condition: object, what: str) -> None:
    """Wait (bounded) for a state another task reaches; yields to the loop, never sleeps for time to pass."""
    for _ in range(20_000):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never reached: {what}")


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield loop
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)
    loop.close()


@pytest.mark.timeout(60)
def test_an_async_call_runs_on_the_callers_loop_and_sync_calls_still_work_after_it_closed() -> None:
    with _served("hello") as (_server, client):
        async def call() -> tuple[str, bool, str]:
            response = await client.acompletion("m", MESSAGES)
            pools = client.provider("fake")._loop_pools  # type: ignore[attr-defined]
            return response.content, asyncio.get_running_loop() in pools, threading.current_thread().name

        content, on_my_loop, _ = asyncio.run(call())
        assert content == "hello" and on_my_loop
        assert client.completion("m", MESSAGES).content == "hello"  # on llmkit's loop, the first loop closed
        assert asyncio.run(call())[:2] == ("hello", True)  # a second asyncio.run: its own pools again
        assert len(client.usage()) == 3


@pytest.mark.timeout(60)
@pytest.mark.parametrize("at_once", [False, True], ids=["in-flight", "before-its-first-step"])
def test_a_cancelled_async_caller_sees_its_record_written_before_the_cancellation(at_once: bool) -> None:
    """Cancelled while the server works on it, or before the request's task took a step: one record,
    written before the caller's CancelledError."""
    with _served("slow", slow=True) as (server, client):
        async def run() -> list[str]:
            task = asyncio.ensure_future(client.acompletion("m", MESSAGES))
            if at_once:
                await asyncio.sleep(0)  # acompletion has made the request's task; it has not taken a step
            else:
                await _until(lambda: server.requests, "the server got the request")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return list(client.usage()["status"])  # no waiting: the record came first

        assert asyncio.run(run()) == ["cancelled"]


@pytest.mark.timeout(60)
def test_close_from_a_loop_with_requests_running_on_it_returns_and_loses_no_record(tmp_path: Path) -> None:
    """A notebook cell calling ``close()`` while the kernel loop's own requests run: the close cannot wait
    for them (it blocks that loop), so they end after it, with their records, and then the ledger closes."""
    ledger = tmp_path / "ledger.sqlite3"
    with _served("slow", slow=True, ledger=str(ledger)) as (server, client):

        async def cell() -> tuple[bool, BaseException | None, bool]:
            task = asyncio.ensure_future(client.acompletion("m", MESSAGES))
            await _until(lambda: server.requests, "the server got the request")
            client.close()  # blocks this loop: the request above cannot end before this returns
            pending = client._service.ledger_close_pending
            outcome = (await asyncio.gather(task, return_exceptions=True))[0]
            return pending, outcome if isinstance(outcome, BaseException) else None, \
                client._service.ledger_close_pending

        pending, outcome, still_pending = asyncio.run(cell())
    assert pending and not still_pending  # the ledger waited for the request, then closed
    assert isinstance(outcome, ClientClosedError)
    with sqlite3.connect(ledger) as db:
        rows = db.execute("SELECT status, error_type FROM requests").fetchall()
    assert rows == [("error", "ClientClosedError")]


@pytest.mark.timeout(30)
def test_a_gate_hands_a_slot_to_a_waiter_on_another_loop(other_loop: asyncio.AbstractEventLoop) -> None:
    gate = PriorityGate(1)

    async def run() -> tuple[int, int]:
        await gate.acquire()
        theirs = asyncio.run_coroutine_threadsafe(gate.acquire(), other_loop)
        await _until(lambda: gate.waiting == 1, "the other loop waits")
        gate.release()  # from this loop's thread: the slot reaches the other loop's waiter there
        await asyncio.wrap_future(theirs)
        held = gate.in_use
        asyncio.run_coroutine_threadsafe(_release(gate), other_loop).result(5)
        return held, gate.in_use

    assert asyncio.run(run()) == (1, 0)


@pytest.mark.timeout(30)
def test_a_waiter_cancelled_on_another_loop_passes_its_turn_on(other_loop: asyncio.AbstractEventLoop) -> None:
    gate = PriorityGate(1)

    async def run() -> tuple[int, int]:
        await gate.acquire()
        theirs = asyncio.run_coroutine_threadsafe(gate.acquire(priority=0), other_loop)
        await _until(lambda: gate.waiting == 1, "the other loop waits")
        mine = asyncio.ensure_future(gate.acquire(priority=1))
        await _until(lambda: gate.waiting == 2, "this loop waits too")
        theirs.cancel()  # cancelled on its own loop before the slot is released
        await _until(lambda: gate.waiting == 1, "the cancelled waiter left")
        gate.release()
        await mine  # the turn passed to the waiter still there
        held = gate.in_use
        gate.release()
        return held, gate.in_use

    assert asyncio.run(run()) == (1, 0)


async def _release(gate: PriorityGate) -> None:
    gate.release()


@pytest.mark.timeout(60)
def test_sync_and_async_callers_at_once_share_one_client() -> None:
    """Threads calling ``completion`` while an event loop gathers ``acompletion``: every call answered,
    one record each, the concurrency gate back to zero."""
    with _served("ok", max_concurrency=3) as (_server, client):
        results: list[str] = []

        def worker() -> None:
            for _ in range(10):
                results.append(client.completion("m", MESSAGES).content)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()

        async def gather() -> list[str]:
            answers = await asyncio.gather(*(client.acompletion("m", MESSAGES) for _ in range(30)))
            return [a.content for a in answers]

        assert asyncio.run(gather()) == ["ok"] * 30
        for t in threads:
            t.join(30)
        assert results == ["ok"] * 30
        assert len(client.usage()) == 60 and client.in_flight() == 0
        slot = client._service.router.slots[0]
        assert slot.gate.in_use == 0 and slot.gate.waiting == 0


@pytest.mark.timeout(60)
def test_a_sync_call_runs_on_the_callers_thread_in_a_script_a_worker_thread_and_a_running_loop() -> None:
    from llmkit._loop import _thread_loop

    with _served("hello") as (_server, client):
        def pools() -> dict[object, object]:
            return client.provider("fake")._loop_pools  # type: ignore[attr-defined,no-any-return]

        assert client.completion("m", MESSAGES).content == "hello"
        assert _thread_loop() in pools()  # this thread's loop sent it: no hop to llmkit's thread

        seen: list[bool] = []
        worker = threading.Thread(target=lambda: seen.append(
            client.completion("m", MESSAGES).content == "hello" and _thread_loop() in pools()))
        worker.start()
        worker.join(30)
        assert seen == [True]

        async def inside() -> tuple[str, bool]:
            outer = asyncio.get_running_loop()
            content = client.completion("m", MESSAGES).content  # blocks this loop, which is set aside
            return content, asyncio.get_running_loop() is outer

        assert asyncio.run(inside()) == ("hello", True)
        assert len(client.usage()) == 3


@pytest.mark.timeout(60)
def test_a_sync_call_from_a_loop_running_this_clients_requests_runs_unless_it_would_wait_for_them() -> None:
    """Those requests cannot run while the sync call blocks their loop: a slot is free, so it runs; every
    slot is theirs, so it raises instead of waiting forever."""
    with _served("slow", slow=True, max_concurrency=2) as (server, client):
        async def run() -> str:
            task = asyncio.ensure_future(client.acompletion("m", MESSAGES))  # holds one of two slots
            await _until(lambda: server.requests, "the server got the request")
            answer = client.completion("m", MESSAGES).content  # the other slot
            busy = asyncio.ensure_future(client.acompletion("m", MESSAGES))
            server.enqueue("slow", latency=30)
            await _until(lambda: len(server.requests) == 3, "both slots taken")
            with pytest.raises(RuntimeError, match="await them first"):
                client.completion("m", MESSAGES)
            rid = client.completion_async("m", MESSAGES)
            await _until(lambda: client.queue_depth() == 1, "the queued request waits for a slot")
            with pytest.raises(RuntimeError, match="await them first"):
                client.get_result(rid)
            task.cancel()
            busy.cancel()
            await asyncio.gather(task, busy, return_exceptions=True)
            await client.aget_result(rid)  # a slot is free again
            return answer

        assert asyncio.run(run()) == "slow"
        assert sorted(client.usage()["status"]) == ["cancelled", "cancelled", "error", "ok", "ok"]


@pytest.mark.timeout(60)
def test_a_sync_call_from_inside_a_sync_request_is_refused() -> None:
    """A callback inside a request (here the mock's reply) calling the sync API would wait on itself."""
    seen: list[str] = []

    def reply(request: object) -> str:
        try:
            client.completion("m", [{"role": "user", "content": "inner"}])
        except RuntimeError as err:
            seen.append(str(err))
        return "outer"

    client = llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"], "reply": reply,
                             "max_concurrency": 1}], ledger=None, health_interval=None)
    try:
        assert client.completion("m", MESSAGES).content == "outer"
        assert len(seen) == 1 and "inside one of llmkit's own requests" in seen[0]
    finally:
        client.close()


@pytest.mark.timeout(60)
def test_asyncio_run_closes_the_connections_its_loop_opened() -> None:
    with _served("hello") as (_server, client):
        async def call() -> list[object]:
            await client.acompletion("m", MESSAGES)
            return [c for c, *_ in client.provider("fake")._shards()]  # type: ignore[attr-defined]

        opened = asyncio.run(call())
        assert opened and all(c.is_closed for c in opened)  # type: ignore[attr-defined]


@pytest.mark.timeout(60)
def test_ctrl_c_in_a_sync_call_cancels_the_request_and_records_it() -> None:
    from llmkit._loop import _thread_loop

    with _served("slow", slow=True) as (_server, client):
        def interrupt() -> None:
            raise KeyboardInterrupt

        _thread_loop().call_soon(interrupt)  # Ctrl-C as the request starts
        with pytest.raises(KeyboardInterrupt):
            client.completion("m", MESSAGES)
        assert list(client.usage()["status"]) == ["cancelled"]  # recorded before the interrupt surfaced
        assert client.completion("m", MESSAGES).content == "slow"  # the thread's loop still works


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_leaves_at_once_and_the_request_still_ends_with_its_record() -> None:
    from llmkit._loop import _thread_loop

    with _served("slow", slow=True, max_concurrency=1) as (_server, client):
        loop = _thread_loop()

        def again() -> None:
            raise KeyboardInterrupt("second")

        def first() -> None:
            loop.call_soon(again)  # lands while the cancelled request cleans up
            raise KeyboardInterrupt("first")

        loop.call_soon(first)
        with pytest.raises(KeyboardInterrupt):
            client.completion("m", MESSAGES)

        async def settled() -> None:
            await _until(lambda: client.in_flight() == 0, "the request ended on its own thread")

        asyncio.run(settled())
        assert list(client.usage()["status"]) == ["cancelled"]
        assert client._service.router.slots[0].gate.in_use == 0  # its slot came back
        assert _thread_loop() is not loop  # this thread has a fresh loop for its next call


@pytest.mark.timeout(60)
def test_close_closes_the_connections_of_sync_calls_on_this_thread_and_on_others() -> None:
    """This thread's at once; a live worker thread's when its thread ends (or at its next sync call)."""
    from llmkit._loop import _thread_loop

    with _served("hello") as (_server, client):
        client.completion("m", MESSAGES)
        done, finish = threading.Event(), threading.Event()

        def work() -> None:
            client.completion("m", MESSAGES)
            done.set()
            finish.wait(30)

        worker = threading.Thread(target=work)
        worker.start()
        assert done.wait(30)
        pools = dict(client.provider("fake")._loop_pools)  # type: ignore[attr-defined]
        assert len(pools) == 3  # llmkit's loop (prepared), this thread's, the worker's
        client.close()
        assert all(c.is_closed for c, *_ in pools[_thread_loop()])  # by close(), not at the next sync call
        finish.set()
        worker.join(30)
        assert all(c.is_closed for pool in pools.values() for c, *_ in pool)  # the worker's: as its thread ended


@pytest.mark.timeout(8)  # (close would wait 10 s for a task it should not wait for)
def test_close_ends_an_async_callers_request_and_neither_cancels_nor_waits_for_the_callers_task() -> None:
    """The request runs in its caller's task: close() cancels it there while it is in flight, hands the
    caller a ClientClosedError with its task not left cancelling, and waits for the request, not for the
    rest of the caller's work."""
    with _served("slow", slow=True) as (server, client):
        async def main() -> tuple[BaseException | None, int, str]:
            go_on = asyncio.Event()

            async def caller() -> tuple[BaseException | None, int, str]:
                error: BaseException | None = None
                try:
                    await client.acompletion("m", MESSAGES)
                except ClientClosedError as exc:
                    error = exc
                task = asyncio.current_task()
                assert task is not None
                cancelling = task.cancelling()
                await go_on.wait()  # the caller's own work goes on after its request
                await asyncio.sleep(0)  # and is not cancelled
                return error, cancelling, "went on"

            task = asyncio.ensure_future(caller())
            await _until(lambda: server.requests, "the server got the request")
            await client.aclose()
            assert not task.done()  # close returned while the caller's task still runs its own work
            go_on.set()
            return await task

        error, cancelling, went_on = asyncio.run(main())
    assert isinstance(error, ClientClosedError) and cancelling == 0 and went_on == "went on"
    assert list(client.usage()["error_type"]) == ["ClientClosedError"]


@pytest.mark.timeout(30)
def test_a_caller_cancelled_while_the_client_closes_stays_cancelled() -> None:
    """Its own cancellation and close's land at once: the caller's is not swallowed by the ClientClosedError."""
    with _served("slow", slow=True) as (server, client):
        async def main() -> list[str]:
            task = asyncio.ensure_future(client.acompletion("m", MESSAGES))
            await _until(lambda: server.requests, "the server got the request")
            task.cancel()  # the caller's cancellation, then close's, before the task runs again
            flight = next(iter(client._service._flights))
            client._service.closing = True
            flight.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return list(client.usage()["status"])

        assert asyncio.run(main()) == ["cancelled"]


@pytest.mark.timeout(30)
def test_close_cancels_a_flight_only_while_it_lasts() -> None:
    """close() from another thread reaches the request's loop late: if the request ended meanwhile, the
    caller's task (now doing something else) is left alone."""
    with _served("hello") as (_server, client):
        async def main() -> bool:
            await client.acompletion("m", MESSAGES)
            flights = list(client._service._flights)
            assert flights == []  # ended with the request
            service = client._service
            flight = llmkit._service.Flight(service)
            flight.end()
            flight.cancel()  # a close's cancel arriving after the end: nothing happens
            await asyncio.sleep(0)
            task = asyncio.current_task()
            return task is not None and task.cancelling() == 0

        assert asyncio.run(main())
