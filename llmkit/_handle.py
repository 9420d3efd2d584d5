"""``Handle``: the outcome of a request handed to the private loop by ``completion_async``, kept until fetched.

A ``concurrent.futures.Future`` would do, but a client may hold 100,000 of them unfetched, and each one
carries a ``Condition`` (a lock, a deque, bound methods) and the done-callback closing over its job: about
fifteen objects that every full garbage collection walks, on top of the response itself. A handle is one
object with ``__slots__``; a waiting thread brings its own lock, and only while it waits.

A handle made with ``pack=True`` (``completion_async`` asks for it for requests submitted while 1,000
results already wait) keeps a finished ``Response`` as one ``bytes`` value (``marshal``; a few µs each way)
instead of the response, its usage, attempts and raw JSON: the collector skips bytes, so a full collection
costs the same however many results wait. A response holding anything but plain JSON-like values (a parsed
pydantic answer, a custom adapter's objects in ``raw``) is kept as it is.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import marshal
import os
import threading
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Generic, Protocol, TypeVar

from ._types import Attempt, RateLimitInfo, Response, ToolCall, Usage

T = TypeVar("T")

_PENDING, _DONE, _FAILED, _CANCELLED, _PACKED = 0, 1, 2, 3, 4

class Home(Protocol):
    """What keeps handles by key (``completion_async``'s results)."""

    def settled(self, key: str, handle: Handle[Any]) -> None:
        """``handle``, kept under ``key``, finished packed: it may keep ``handle.packed_value()`` instead."""


# One lock for every handle's state change: they are rare and short (finishing, a waiter coming or going).
_lock = threading.Lock()


def _after_fork_in_child() -> None:  # a fork while another thread held it would leave it held for good
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class Handle(Generic[T]):
    """A request's outcome, waited on from any thread or event loop: ``result``, ``wait``, ``cancel``."""

    __slots__ = ("_cancel", "_home", "_key", "_pack", "_state", "_value", "_wakers")

    def __init__(self, pack: bool = False) -> None:
        self._pack = pack
        self._state = _PENDING
        self._value: Any = None
        self._wakers: list[Callable[[], None]] | None = None  # waiting threads and loops, woken when it ends
        self._cancel: Callable[[], None] | None = None  # cancels the running request (set by its runner)
        self._home: Home | None = None  # where it is kept, told when it ends packed (``keep_in``)
        self._key = ""

    @classmethod
    def from_packed(cls, packed: bytes) -> Handle[Any]:
        """A finished handle again, from the bytes a ``Home`` kept in place of one."""
        handle: Handle[Any] = cls()
        handle._state, handle._value = _PACKED, packed
        return handle

    def keep_in(self, home: Home, key: str) -> None:
        """``home`` keeps this handle under ``key``: once finished packed, ``home.settled(key, self)`` is
        called (at once if it already is), so that it can keep the bytes alone."""
        with _lock:
            if self._state == _PENDING:
                self._home, self._key = home, key
                return
        if self._state == _PACKED:
            home.settled(key, self)

    def packed_value(self) -> bytes:
        assert self._state == _PACKED
        packed: bytes = self._value
        return packed

    def done(self) -> bool:
        return self._state != _PENDING

    def cancelled(self) -> bool:
        return self._state == _CANCELLED

    def packed(self) -> bool:
        """Finished, its response kept as one ``bytes`` value."""
        return self._state == _PACKED

    def finish(self, task: asyncio.Future[Any]) -> None:
        """Take a finished task's outcome (called where it ran); a handle already cancelled keeps that."""
        value: Any
        if task.cancelled():
            state, value = _CANCELLED, None
        elif (exc := task.exception()) is not None:
            state, value = _FAILED, exc
        else:
            state, value = _DONE, task.result()
            if self._pack and type(value) is Response and (packed := pack_response(value)) is not None:
                state, value = _PACKED, packed
        self._end(state, value)

    def cancel(self) -> bool:
        """Cancel the request if it has not finished: the handle says cancelled at once, and the request
        ends (writing its record) where it runs. False if it had already finished."""
        cancel = self._cancel
        if not self._end(_CANCELLED, None):
            return False
        if cancel is not None:
            cancel()
        return True

    def _end(self, state: int, value: Any) -> bool:
        with _lock:
            if self._state != _PENDING:
                return False
            self._state, self._value = state, value
            wakers, self._wakers = self._wakers, None
            self._cancel = None  # (lets go of the job and its loop)
            home, self._home = self._home, None
        if wakers:
            for wake in wakers:
                wake()
        if home is not None and state == _PACKED:
            home.settled(self._key, self)
        return True

    def result(self, timeout: float | None = None) -> T:
        """Block this thread until the request ends; its response, or its error. ``TimeoutError`` past
        ``timeout`` (the request keeps running); ``concurrent.futures.CancelledError`` if cancelled."""
        self.join(timeout)
        return self.outcome()

    def join(self, timeout: float | None = None) -> None:
        """Block this thread until the request ends; ``TimeoutError`` past ``timeout``."""
        if self._state == _PENDING:
            gate = threading.Lock()
            gate.acquire()
            if self._add(gate.release):
                try:
                    ended = gate.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))
                finally:
                    self._remove(gate.release)
                if not ended:
                    raise TimeoutError()

    async def wait(self) -> None:
        """Until the request ends (any outcome), from any event loop. Cancelling this wait does not cancel
        the request."""
        if self._state != _PENDING:
            return
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            try:
                loop.call_soon_threadsafe(_resolve, ended)
            except RuntimeError:  # that loop closed meanwhile: nobody is waiting any more
                pass

        if not self._add(wake):
            return
        try:
            await ended
        finally:
            self._remove(wake)

    def outcome(self) -> T:
        """The response of a finished request, or raise its error."""
        state = self._state
        if state == _DONE:
            value: T = self._value
            return value
        if state == _PACKED:
            unpacked: Any = unpack_response(self._value)
            return unpacked
        if state == _FAILED:
            raise self._value
        if state == _CANCELLED:
            raise concurrent.futures.CancelledError()
        raise concurrent.futures.InvalidStateError("the request has not finished")

    def _add(self, wake: Callable[[], None]) -> bool:
        """Register a waker; False if the request has already ended (then nothing is registered)."""
        with _lock:
            if self._state != _PENDING:
                return False
            if self._wakers is None:
                self._wakers = []
            self._wakers.append(wake)
            return True

    def _remove(self, wake: Callable[[], None]) -> None:
        with _lock:
            wakers = self._wakers
            if wakers is not None and wake in wakers:
                wakers.remove(wake)

    def __repr__(self) -> str:
        state = ("pending", "done", "failed", "cancelled", "done")[self._state]
        return f"<Handle {state}>"


def _resolve(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


# -- a Response as one bytes value ---------------------------------------------------------------------
# Each dataclass goes in as the tuple of its fields in order (``attrgetter`` reads them in one call) and
# comes back through its constructor; ``tests/test_handle.py`` checks that every field survives.


def _getter(cls: type) -> Callable[[Any], tuple[Any, ...]]:
    return attrgetter(*(f.name for f in dataclasses.fields(cls)))


_RESPONSE_NAMES = tuple(f.name for f in dataclasses.fields(Response))
_USAGE, _ATTEMPTS, _TOOL_CALLS, _RATE_LIMIT = (
    _RESPONSE_NAMES.index(n) for n in ("usage", "attempts", "tool_calls", "rate_limit"))
_response_fields, _usage_fields = _getter(Response), _getter(Usage)
_attempt_fields, _tool_call_fields, _rate_limit_fields = _getter(Attempt), _getter(ToolCall), _getter(RateLimitInfo)


def pack_response(response: Response) -> bytes | None:
    """``response`` as one bytes value, or None when it holds anything but plain JSON-like values (a parsed
    answer, an adapter's own objects in ``raw``, a numpy number): those would not come back as they were."""
    if response.parsed is not None:
        return None
    try:
        values = list(_response_fields(response))
        values[_USAGE] = _usage_fields(response.usage)
        values[_ATTEMPTS] = tuple(map(_attempt_fields, response.attempts))
        values[_TOOL_CALLS] = tuple(map(_tool_call_fields, response.tool_calls))
        if response.rate_limit is not None:
            values[_RATE_LIMIT] = _rate_limit_fields(response.rate_limit)
        packed = tuple(values)
        if not _plain(packed):
            return None
        return marshal.dumps(packed)
    except Exception:  # fields of unexpected types (a custom adapter's): kept as they are
        return None


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _plain(value: Any) -> bool:
    """Only str, int, float, bool, None, and dicts, lists and tuples of them (exact types: marshal would
    turn a subclass, a bytearray or a numpy number into something else)."""
    kind = type(value)
    if kind in _ATOMS:
        return True
    if kind is tuple or kind is list:
        return all(_plain(v) for v in value)
    if kind is dict:
        return all(type(k) in _ATOMS and _plain(v) for k, v in value.items())
    return False


def unpack_response(packed: bytes) -> Response:
    values = list(marshal.loads(packed))
    values[_USAGE] = Usage(*values[_USAGE])
    values[_ATTEMPTS] = [Attempt(*a) for a in values[_ATTEMPTS]]
    values[_TOOL_CALLS] = [ToolCall(*t) for t in values[_TOOL_CALLS]]
    if values[_RATE_LIMIT] is not None:
        values[_RATE_LIMIT] = RateLimitInfo(*values[_RATE_LIMIT])
    return Response(*values)
