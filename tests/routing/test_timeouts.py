"""``routing.timeouts.Timeout`` ends every case the way ``asyncio.timeout`` does: each scenario runs under both.

No test waits for time to pass: a zero delay expires on the loop's next turn, and the blocked work waits on
an event nobody sets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from llmkit.routing.timeouts import Timeout

pytestmark = pytest.mark.timeout(10)


class Ours:
    """``Timeout`` behind ``async with``, so one scenario runs against both."""

    def __init__(self, delay: float | None) -> None:
        self.delay = delay

    async def __aenter__(self) -> Timeout:
        self.inner = Timeout(self.delay)
        return self.inner.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


KINDS: list[Callable[[float | None], Any]] = [asyncio.timeout, Ours]


async def _blocked() -> None:
    await asyncio.Event().wait()


async def _ending(task: asyncio.Task[None]) -> str:
    try:
        await task
    except asyncio.CancelledError:
        return "cancelled"
    except TimeoutError:
        return "timeout"
    return "finished"


@pytest.mark.parametrize("kind", KINDS, ids=["asyncio", "ours"])
def test_expiry_is_a_timeout_error_and_leaves_the_task_uncancelled(kind: Any) -> None:
    async def main() -> tuple[str, str, int]:
        try:
            async with kind(0):
                await _blocked()
        except TimeoutError as exc:
            task = asyncio.current_task()
            assert task is not None
            return type(exc).__name__, type(exc.__cause__).__name__, task.cancelling()
        return "no timeout", "", -1

    assert asyncio.run(main()) == ("TimeoutError", "CancelledError", 0)


@pytest.mark.parametrize("kind", KINDS, ids=["asyncio", "ours"])
def test_work_that_finishes_in_time_returns_and_its_timer_is_cancelled(kind: Any) -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        async with kind(3600):
            await asyncio.sleep(0)
            value = 7
        live = [h for h in loop._scheduled if not h.cancelled()]  # type: ignore[attr-defined]
        return value, len(live)

    assert asyncio.run(main()) == (7, 0)


@pytest.mark.parametrize("kind", KINDS, ids=["asyncio", "ours"])
def test_no_delay_never_expires_and_an_error_inside_passes_through(kind: Any) -> None:
    async def main() -> str:
        try:
            async with kind(None):
                await asyncio.sleep(0)
                raise ValueError("inside")
        except ValueError as exc:
            return str(exc)

    assert asyncio.run(main()) == "inside"


@pytest.mark.parametrize("delay", [3600, 0], ids=["not expired", "expired on the same turn"])
@pytest.mark.parametrize("kind", KINDS, ids=["asyncio", "ours"])
def test_a_cancellation_from_outside_stays_a_cancellation(kind: Any, delay: float) -> None:
    async def main() -> str:
        async def work() -> None:
            async with kind(delay):
                await _blocked()

        task = asyncio.create_task(work())
        await asyncio.sleep(0)  # (a zero delay fires on this turn ...)
        task.cancel()  # (... and the caller cancels too, before the task resumes: not swallowed either)
        return await _ending(task)

    assert asyncio.run(main()) == "cancelled"


@pytest.mark.parametrize("kind", KINDS, ids=["asyncio", "ours"])
def test_nested_only_the_expired_one_turns_into_a_timeout(kind: Any) -> None:
    async def main() -> list[str]:
        seen = []
        async with kind(3600):
            try:
                async with kind(0):
                    await _blocked()
            except TimeoutError:
                seen.append("inner timed out")
            await asyncio.sleep(0)
            seen.append("outer still running")
        return seen

    assert asyncio.run(main()) == ["inner timed out", "outer still running"]


def test_outside_a_task_it_refuses() -> None:
    with pytest.raises(RuntimeError, match="no running event loop"):
        Timeout(1.0)

    async def main() -> str:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def callback() -> None:  # on the loop, but in no task
            try:
                Timeout(1.0)
            except RuntimeError as exc:
                done.set_result(str(exc))

        loop.call_soon(callback)
        return await done

    assert asyncio.run(main()) == "Timeout should be used inside a task"
