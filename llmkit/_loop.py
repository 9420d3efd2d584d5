"""Where a client's coroutines run: llmkit's private event loop thread, or the async caller's own loop.

Sync calls submit coroutines to a loop running in a daemon thread (``LoopThread``) and wait; this works
in a script, in a Jupyter cell whose loop is already running, and from many threads, and patches nothing
in asyncio. Async callers (``ClientLoop.arun``) run their requests on their own loop, in the calling
task, with no thread hop: what requests share (breakers, limits, concurrency gates, the ledger, the
cache) is thread-safe, and connection pools are per loop. Background work (health checks, ``completion_async``,
streams) stays on the private loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import os
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar, cast

from ._handle import Handle

T = TypeVar("T")

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class LoopThread:
    """An event loop in a daemon thread, started on first use."""

    def __init__(self, name: str = "llmkit-loop", loop_factory: LoopFactory | None = None) -> None:
        self._name = name
        self._factory = loop_factory or asyncio.new_event_loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._inbox: deque[_Job] = deque()
        self._inbox_scheduled = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        loop = self._loop
        if loop is None or not loop.is_running() or self._pid != os.getpid():
            loop = self._start()
        return loop

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is not None and self._loop.is_running() and self._pid == os.getpid():
                return self._loop
            self._pid = os.getpid()
            loop = self._factory()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                try:
                    loop.run_forever()
                finally:
                    with contextlib.suppress(Exception):
                        loop.run_until_complete(loop.shutdown_asyncgens())
                    with contextlib.suppress(Exception):  # join its executor threads (ledger close)
                        loop.run_until_complete(loop.shutdown_default_executor())
                    loop.close()

            thread = threading.Thread(target=run, name=self._name, daemon=True)
            thread.start()
            ready.wait()
            self._loop, self._thread = loop, thread
            return loop

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the private loop; returns a thread-safe future (cancelling it cancels
        the task). Like ``run_coroutine_threadsafe``, but a burst of submissions wakes the loop once."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        job = _Job(coro, None, future)
        future.add_done_callback(lambda f: self._caller_done(job, f))
        self._post(job)
        return future

    def hold(self, coro: Coroutine[Any, Any, T], pack: bool = False) -> Handle[T]:
        """Schedule ``coro`` on the private loop; a ``Handle`` to its outcome, light enough to keep many
        thousands of (``completion_async`` holds results until they are fetched; ``pack``: see Handle)."""
        handle: Handle[T] = Handle(pack)
        job = _Job(coro, None, handle)
        handle._cancel = functools.partial(self._abandon, job)
        self._post(job)
        return handle

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the private loop and block this thread for its result.

        On a timeout or Ctrl-C the underlying task is cancelled before the error propagates.
        """
        if self.in_loop_thread():
            coro.close()
            raise RuntimeError(
                "llmkit's sync API was called from inside llmkit's own event loop (a callback?); "
                "use the async API (await client.acompletion(...)) there"
            )
        # The caller blocks on a bare lock the finished task releases: no concurrent.futures.Future (its
        # Condition costs a second lock and more wake-ups per call; ~20 µs of every sync call).
        waiter = _Blocking()
        job = _Job(coro, None, waiter)
        self._post(job)
        try:
            if not waiter.lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
                self._abandon(job)
                raise TimeoutError(f"no result within {timeout}s; the request was cancelled")
        except BaseException:  # Ctrl-C while waiting
            if waiter.task is None:
                self._abandon(job)
            raise
        task = waiter.task
        assert task is not None
        if task.cancelled():
            raise concurrent.futures.CancelledError()
        return task.result()

    def _abandon(self, job: _Job) -> None:
        """The blocked caller gave up (timeout, Ctrl-C): cancel its request where it runs."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(_cancel_job, job)

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the private loop from any other loop; cancelling the caller cancels it."""
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and running is self._loop:
            return await coro
        if running is None:  # pragma: no cover - arun is always awaited inside a loop
            return await asyncio.wrap_future(self.submit(coro))
        waiter: asyncio.Future[T] = running.create_future()
        job = _Job(coro, running, waiter)
        self._post(job)
        try:
            return await waiter
        except asyncio.CancelledError:  # (no done-callback per call: a cancelled caller lands here)
            if waiter.cancelled():  # the caller went away before the answer: cancel the request where it runs
                self._abandon(job)
            raise

    # Async callers cross threads in batches: a burst of ``arun`` calls costs one wake-up of the private
    # loop, and a burst of results one wake-up of each caller's loop, instead of two per call.

    def _post(self, job: _Job) -> None:
        loop = self.loop
        self._inbox.append(job)
        if not self._inbox_scheduled:
            self._inbox_scheduled = True
            loop.call_soon_threadsafe(self._drain_inbox)

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False
        loop = self._loop
        assert loop is not None
        while True:
            try:
                job = self._inbox.popleft()
            except IndexError:
                return
            assert job.coro is not None  # (let go of only once finished)
            job.task = loop.create_task(job.coro)
            if job.cancelled:  # cancel once it has started, so its own cleanup (the ledger record) runs
                loop.call_soon(job.task.cancel)
            job.task.add_done_callback(functools.partial(_reply, job))

    def _caller_done(self, job: _Job, waiter: asyncio.Future[Any] | concurrent.futures.Future[Any]) -> None:
        """Where the caller waits: a cancelled caller cancels the request where it runs."""
        loop = self._loop
        if waiter.cancelled() and loop is not None:
            loop.call_soon_threadsafe(_cancel_job, job)

    def stop(self) -> None:
        """Stop the loop and join its thread (used by tests and at interpreter exit)."""
        if self._pid != os.getpid():  # a forked child: that loop and thread are the parent's; let them be
            self._loop = self._thread = None
            return
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is not None and loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


_STANDARD_TIME = asyncio.BaseEventLoop.time


class ClientLoop:
    """How a client runs its coroutines, with no thread hop where it can.

    - An async caller's request runs on the caller's own loop, in the caller's task (``arun``).
    - A sync caller's request runs on the caller's own thread, on an event loop llmkit keeps for that
      thread (``call``); in a thread whose loop is running (a callback, async code calling the sync API)
      that loop is set aside while the request runs, as it is blocked anyway.
    - Everything else (background checks, ``completion_async``, streams, batches, closing) runs on the
      private loop thread (``run``, ``submit``, ``hold``).

    What requests share (breakers, limits, concurrency gates, the ledger, the cache) is thread-safe and
    connection pools are per loop, so all of these run at once. ``direct`` off (a test loop factory with
    virtual time, shared state on Redis, or an IPython shell or Jupyter kernel, whose cells mix sync and
    async calls on one loop) sends every request to the private loop, as before.

    A sync request from a thread whose running loop has this client's async requests in flight blocks
    them until it returns, so it may not wait for a concurrency slot or rate-limit turn (they may hold
    it): it runs if one is free and raises ``RuntimeError(BLOCKED_LOOP)`` otherwise (``NO_WAIT``).
    Requests left pending on a loop that stops running keep their slots until it runs again.
    """

    def __init__(self, thread: LoopThread, direct: bool) -> None:
        self.thread = thread
        self.direct = direct and not _in_ipython()
        self._active: dict[asyncio.AbstractEventLoop, int] = {}  # loop -> async requests running on it

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self.thread.loop

    def in_loop_thread(self) -> bool:
        return self.thread.in_loop_thread()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return self.thread.run(coro, timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return self.thread.submit(coro)

    def hold(self, coro: Coroutine[Any, Any, T], pack: bool = False) -> Handle[T]:
        return self.thread.hold(coro, pack)

    def stop(self) -> None:
        self.thread.stop()

    async def arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro``: on the caller's loop when it can hold requests, else on the private loop.
        Cancelling the caller cancels the request, and the caller sees the end of it (its record written)."""
        if self.direct:
            running = asyncio.get_running_loop()
            if type(running).time is _STANDARD_TIME:  # (a virtual-time loop, uvloop: the private loop)
                active = self._active
                active[running] = active.get(running, 0) + 1  # (each loop's count: only its own thread)
                try:
                    return await coro  # in the caller's task: the request's flight lets close() end it alone
                finally:
                    left = active[running] - 1
                    if left:
                        active[running] = left
                    else:
                        del active[running]
        return await self.thread.arun(coro)

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a sync caller's request to its end, on the caller's thread when ``direct``."""
        if not self.direct or self.thread.in_loop_thread():
            return self.thread.run(coro)
        outer = asyncio._get_running_loop()
        context = None
        if outer is not None and outer in self._active:  # that loop's requests hold slots and cannot run now:
            context = contextvars.copy_context()  # this request may not wait for one (``NO_WAIT``)
            context.run(NO_WAIT.set, True)
        loop = _thread_loop()
        if loop.is_running():  # from inside a sync request of this thread (a callback): it would wait on itself
            coro.close()
            raise RuntimeError(
                "llmkit's sync API was called from inside one of llmkit's own requests (a callback?); "
                "use the async API (await client.acompletion(...)) there")
        task = loop.create_task(coro, context=context)
        with _running_set_aside():
            try:
                return loop.run_until_complete(task)
            except BaseException:  # Ctrl-C: cancel the request and let it write its record before leaving
                if not task.done():
                    loop.call_soon(task.cancel)  # after its first step, so a request never dies unstarted
                    try:
                        loop.run_until_complete(asyncio.wait([task]))
                    except BaseException:  # Ctrl-C again: the request ends (and records) on a thread of its own
                        _finish_elsewhere(task)
                raise

    def settle_here(self) -> None:
        """After closing: run what closing left for this thread's loop for sync calls (closing its
        connection pools) now, rather than at its next use."""
        held = _held()
        if held is None or held.loop.is_running():
            return
        with _running_set_aside():
            held.loop.run_until_complete(_run_queued())

    def check_can_block(self, waiting: Callable[[], bool] | None = None) -> None:
        """Before a sync call that waits for requests on the private loop: refuse if this thread's running
        loop has this client's async requests in flight, which hold slots and cannot run until the call
        returns; with ``waiting`` (is anything of this client waiting for a slot or turn, or is every slot
        taken?), only then."""
        if self._active:
            outer = asyncio._get_running_loop()
            if outer is not None and outer in self._active and (waiting is None or waiting()):
                raise RuntimeError(BLOCKED_LOOP)


BLOCKED_LOOP = (
    "a sync llmkit call from an event loop that is running this client's async requests cannot wait for a "
    "concurrency slot or rate-limit turn: those requests may hold it, and they cannot run until the call "
    "returns; await them first, or use the async API (await client.acompletion(...))")

#: Set in a sync request whose caller blocks a loop running this client's requests: it raises
#: ``RuntimeError(BLOCKED_LOOP)`` instead of waiting for a concurrency slot or rate-limit turn.
NO_WAIT: contextvars.ContextVar[bool] = contextvars.ContextVar("llmkit_no_wait", default=False)


def _in_ipython() -> bool:
    """In an IPython shell or Jupyter kernel (whose cells mix sync and async calls on one running loop)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        return ipython.get_ipython() is not None
    except Exception:  # pragma: no cover - a broken IPython install: be careful
        return True


@contextlib.contextmanager
def _running_set_aside() -> Iterator[None]:
    """Let this thread run another loop to completion although one is running in it (a callback, async code
    calling the sync API): that loop is blocked until we return anyway, and is set back after."""
    outer = asyncio._get_running_loop()
    if outer is None:
        yield
        return
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(outer)


def _finish_elsewhere(task: asyncio.Task[Any]) -> None:
    """A second Ctrl-C while a cancelled sync request cleans up: its loop (this thread's, idle once we leave)
    finishes it on a daemon thread, and this thread gets a new loop for its next sync call."""
    held = _held()
    if held is None or held.loop is not task.get_loop():
        return
    _threads.held = None

    def finish() -> None:
        with contextlib.suppress(BaseException):
            held.loop.run_until_complete(asyncio.wait([task]))

    threading.Thread(target=finish, name="llmkit-cancel", daemon=True).start()


async def _run_queued() -> None:
    """Let callbacks queued for this (idle) loop run, and the tasks they start end (bounded)."""
    await asyncio.sleep(0)
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    if tasks:
        await asyncio.wait(tasks, timeout=5)


class _HeldLoop:
    """The event loop llmkit keeps for one thread's sync requests, closed with the thread's locals."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop = asyncio.SelectorEventLoop()  # (standard time, whatever the policy)
        self.pid = os.getpid()

    def __del__(self) -> None:  # the thread ended: what closing queued for it (its connections) runs first
        loop = self.loop
        if self.pid == os.getpid() and not loop.is_running() and not loop.is_closed():
            with contextlib.suppress(Exception):
                loop.run_until_complete(_run_queued())
            with contextlib.suppress(Exception):  # connection pools parked on this loop close with it
                loop.run_until_complete(loop.shutdown_asyncgens())
            with contextlib.suppress(Exception):
                loop.close()


_threads = threading.local()


def _held() -> _HeldLoop | None:
    """This thread's loop for sync requests, if it has a usable one (not closed, not a forked parent's)."""
    held: _HeldLoop | None = getattr(_threads, "held", None)
    if held is None or held.pid != os.getpid() or held.loop.is_closed():
        return None
    return held


def _thread_loop() -> asyncio.AbstractEventLoop:
    """This thread's loop for sync requests (a new one in a forked child)."""
    held = _held()
    if held is None:
        held = _threads.held = _HeldLoop()
    return held.loop


class _Job:
    """One call crossing to the private loop and back: from a caller's loop (``arun``: ``caller`` is that
    loop, ``waiter`` an asyncio future) or from a thread (``submit``: no caller loop, a thread-safe future;
    ``hold``: a ``Handle``; ``run``: no caller loop, a ``_Blocking`` lock)."""

    __slots__ = ("caller", "cancelled", "coro", "task", "waiter")

    def __init__(self, coro: Coroutine[Any, Any, Any], caller: asyncio.AbstractEventLoop | None,
                 waiter: asyncio.Future[Any] | concurrent.futures.Future[Any] | _Blocking | Handle[Any]) -> None:
        self.coro: Coroutine[Any, Any, Any] | None = coro
        self.caller = caller
        self.waiter = waiter
        self.task: asyncio.Task[Any] | None = None
        self.cancelled = False


class _Blocking:
    """Where a thread blocked in ``run`` waits: a held lock, released with the finished task set."""

    __slots__ = ("lock", "task")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.task: asyncio.Task[Any] | None = None


class _Outbox:
    """Results waiting to be handed to one caller loop, delivered in batches."""

    __slots__ = ("items", "scheduled")

    def __init__(self) -> None:
        self.items: deque[tuple[_Job, asyncio.Task[Any]]] = deque()
        self.scheduled = False

    def drain(self) -> None:
        self.scheduled = False
        while True:
            try:
                job, task = self.items.popleft()
            except IndexError:
                return
            _settle(cast("asyncio.Future[Any]", job.waiter), task)


_outboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Outbox] = weakref.WeakKeyDictionary()


def _settle(waiter: asyncio.Future[Any] | concurrent.futures.Future[Any], task: asyncio.Task[Any]) -> None:
    """Copy a finished task's outcome to the future its caller waits on."""
    if waiter.done():
        return
    try:
        if task.cancelled():
            waiter.cancel()
        elif (exc := task.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(task.result())
    except concurrent.futures.InvalidStateError:  # the caller cancelled it from its thread just now
        pass


def _reply(job: _Job, task: asyncio.Task[Any]) -> None:
    """On the private loop: hand a finished job's outcome back (to a caller loop, one wake-up a batch)."""
    caller = job.caller
    if caller is None:
        waiter = job.waiter
        if type(waiter) is _Blocking:  # a thread blocked in ``run``: hand it the task and wake it
            waiter.task = task
            waiter.lock.release()
            return
        if type(waiter) is Handle:  # ``hold``: kept until fetched, and lets go of the job when it ends
            waiter.finish(task)
            return
        _settle(cast("concurrent.futures.Future[Any]", waiter), task)  # a thread-safe future: set it from here
        # The future's done-callback keeps the job: let go of the finished task and coroutine.
        job.task = job.coro = None
        return
    if caller.is_closed():
        if not task.cancelled():
            task.exception()  # retrieved: nobody is left to see it
        return
    box = _outboxes.get(caller)
    if box is None:
        box = _outboxes.setdefault(caller, _Outbox())
    box.items.append((job, task))
    if not box.scheduled:
        box.scheduled = True
        try:
            caller.call_soon_threadsafe(box.drain)
        except RuntimeError:  # the caller's loop closed meanwhile
            box.scheduled = False


def _cancel_job(job: _Job) -> None:
    """On the private loop: the caller went away."""
    job.cancelled = True
    if job.task is not None:  # after its first step (already queued), so a task never dies unstarted
        job.task.get_loop().call_soon(job.task.cancel)


_shared: LoopThread | None = None
_shared_lock = threading.Lock()


def shared_loop() -> LoopThread:
    """The process-wide loop thread that clients use unless given their own."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = LoopThread()
        return _shared


# -- os.fork() -------------------------------------------------------------------------------------
# A forked child has only the thread that forked: every loop thread (and what lives on it) is gone.
# Clients compare ``fork_generation()`` with the one they were built in and rebuild lazily (``Client``).

_generation = 0


def fork_generation() -> int:
    """How many times this process's ancestry forked since llmkit was imported (0 in the original)."""
    return _generation


def _after_fork_in_child() -> None:
    global _generation, _shared, _shared_lock
    _generation += 1
    _shared = None  # the parent's shared loop thread does not exist here; a new one starts on first use
    _shared_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps forward whenever it would otherwise sit idle waiting for a timer.

    For tests and simulations of time-driven behaviour (rate limits, backoff, breaker timeouts): a
    ``sleep(30)`` completes at once while ``loop.time()`` advances 30 seconds. Real I/O still works,
    but the clock only jumps when no file descriptor is ready, so use it with in-process providers.
    """

    def __init__(self, start: float = 1000.0) -> None:
        super().__init__()
        self._virtual_now = start
        selector = self._selector  # type: ignore[attr-defined]
        real_select = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            ready: list[Any] = real_select(0)
            if ready:
                return ready
            if timeout == 0:
                if not self._ready:  # type: ignore[attr-defined]
                    # only a due timer: let a microsecond pass, as it would in real time, so code that
                    # re-arms a timer for "now" (rounding) cannot spin forever at one instant
                    self._virtual_now += 1e-6
                return ready
            if timeout is None:
                return real_select(None)  # nothing scheduled: wait for a thread-safe wake-up
            self._virtual_now += timeout
            return real_select(0)

        selector.select = select

    def time(self) -> float:
        return self._virtual_now
