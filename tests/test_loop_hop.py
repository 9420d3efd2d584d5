"""The crossing from a caller to llmkit's private loop (``llmkit._loop.LoopThread``) and, for async callers
on that loop already, no crossing at all: results, errors, timeouts and cancellation arrive where they should."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Iterator

import pytest

from llmkit._loop import LoopThread


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    thread = LoopThread(name="llmkit-test-loop")
    yield thread
    thread.stop()


async def _value(x: int) -> int:
    await asyncio.sleep(0)
    return x * 2


async def _fail(exc: BaseException) -> None:
    await asyncio.sleep(0)
    raise exc


def test_run_returns_the_result_and_runs_on_the_loop_thread(lt: LoopThread) -> None:
    async def where() -> str:
        return threading.current_thread().name

    assert lt.run(_value(21)) == 42
    assert lt.run(where()) == "llmkit-test-loop"


def test_run_raises_the_coroutines_own_errors_as_they_are(lt: LoopThread) -> None:
    with pytest.raises(ValueError, match="bad"):
        lt.run(_fail(ValueError("bad")))
    own = TimeoutError("the coroutine's own timeout")
    with pytest.raises(TimeoutError) as info:  # not mistaken for the caller's wait running out
        lt.run(_fail(own), timeout=30)
    assert info.value is own


@pytest.mark.timeout(10)
def test_run_timeout_cancels_the_coroutine_where_it_runs(lt: LoopThread) -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(TimeoutError, match="no result within"):
        lt.run(forever(), timeout=0.05)
    assert cancelled.wait(5)
    assert lt.run(_value(1)) == 2  # the loop goes on serving


@pytest.mark.timeout(10)
def test_run_of_a_task_cancelled_on_the_loop_raises_cancelled(lt: LoopThread) -> None:
    async def cancel_self() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)

    with pytest.raises(concurrent.futures.CancelledError):
        lt.run(cancel_self())


def test_run_from_the_loop_thread_itself_is_refused(lt: LoopThread) -> None:
    async def nested() -> None:
        coro = _value(1)
        with pytest.raises(RuntimeError, match="own event loop"):
            lt.run(coro)

    lt.run(nested())


def test_many_threads_get_their_own_results(lt: LoopThread) -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: lt.run(_value(i)), range(400)))
    assert results == [i * 2 for i in range(400)]


def test_arun_from_another_loop_and_on_its_own_loop(lt: LoopThread) -> None:
    async def caller() -> tuple[int, int]:
        return await lt.arun(_value(5)), await lt.arun(_value(6))

    assert asyncio.run(caller()) == (10, 12)

    async def on_own_loop() -> int:  # already on the private loop: awaited in place, no crossing
        return await lt.arun(_value(7))

    assert lt.run(on_own_loop()) == 14


@pytest.mark.timeout(10)
def test_a_cancelled_async_caller_cancels_its_coroutine_on_the_loop(lt: LoopThread) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def caller() -> None:
        task = asyncio.ensure_future(lt.arun(forever()))
        while not started.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(caller())
    assert cancelled.wait(5)


def test_gathered_async_callers_each_get_their_answer(lt: LoopThread) -> None:
    finished: list[int] = []

    async def quick() -> int:
        finished.append(1)
        return 1

    async def caller() -> list[int]:
        return list(await asyncio.gather(*(lt.arun(quick()) for _ in range(50))))

    assert asyncio.run(caller()) == [1] * 50 and len(finished) == 50


@pytest.mark.timeout(30)
def test_a_held_finished_submission_keeps_its_result_but_not_its_task(lt: LoopThread) -> None:
    """completion_async keeps each future until its result is fetched; the finished task (its context,
    coroutine and callbacks) must not stay alive with it."""
    import gc
    import weakref

    tasks: list[weakref.ref[asyncio.Task[object]]] = []

    async def remember() -> int:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(weakref.ref(task))
        await asyncio.sleep(0)
        return 7

    future = lt.submit(remember())
    assert future.result(10) == 7
    lt.run(_value(1))  # the loop has moved on past the task's last callbacks
    gc.collect()
    assert tasks[0]() is None
    assert future.result(0) == 7
