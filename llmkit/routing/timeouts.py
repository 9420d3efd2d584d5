"""``asyncio.timeout`` for the request path, as a plain ``with`` block.

Every request enters two timeouts (its deadline, and its attempt's); ``asyncio.timeout`` costs ~4.5 µs
each, most of it in entering and leaving (two coroutines, a state machine, a second loop lookup) rather
than in its timer. ``Timeout`` does the same thing (Python 3.11's ``asyncio.timeouts.Timeout``, step for
step) without those: on expiry the task is cancelled, and leaving the block turns that cancellation, and
only that one, into ``TimeoutError``; a cancellation from elsewhere (the caller, ``aclose()``) passes
through untouched. Use it around ``await``s in a task, like ``asyncio.timeout``.

    with Timeout(slot.config.timeout):
        result = await call()
"""

from __future__ import annotations

from asyncio import CancelledError, Handle, current_task
from types import TracebackType


class Timeout:
    """Cancel the current task after ``delay`` seconds (None: never) and raise ``TimeoutError`` instead."""

    __slots__ = ("_cancelling", "_expired", "_handle", "_task")

    def __init__(self, delay: float | None) -> None:
        task = current_task()
        if task is None:
            raise RuntimeError("Timeout should be used inside a task")
        self._task = task
        self._expired = False
        self._handle: Handle | None = None
        self._cancelling = task.cancelling()  # cancellations already requested are not ours to turn
        if delay is not None:
            loop = task.get_loop()
            now = loop.time()
            when = now + delay
            self._handle = loop.call_soon(self._on_timeout) if when <= now else loop.call_at(when, self._on_timeout)

    def __enter__(self) -> Timeout:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._expired and self._task.uncancel() <= self._cancelling and exc_type is CancelledError:
            raise TimeoutError from exc  # our cancellation, and no other one since: a timeout

    def _on_timeout(self) -> None:
        self._task.cancel()
        self._expired = True
        self._handle = None


__all__ = ["Timeout"]
