"""Stream objects handed to the caller: chunks produced on the private loop, read from any thread or loop.

One task on the private loop drives the provider's stream into a bounded queue; ``Stream`` (sync) and
``AsyncStream`` read it, one hop per chunk. After the last chunk, ``.response`` holds the final
``Response`` (usage and cost included). Closing early, or dropping the stream unclosed (a ``break``
out of the loop), cancels the producer, which releases its connection and concurrency slot, and the
request is recorded as cancelled.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any

from ._loop import LoopThread
from ._types import Response, StreamChunk

_END = object()


class _Feed:
    """The private-loop side: a queue filled by the producing task."""

    def __init__(self, run: Callable[[Callable[[StreamChunk], Coroutine[Any, Any, None]]],
                                     Coroutine[Any, Any, Response]]) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=64)
        self.task = asyncio.get_running_loop().create_task(self._produce(run))

    async def _produce(self, run: Callable[..., Coroutine[Any, Any, Response]]) -> None:
        try:
            response = await run(self.queue.put)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            await self.queue.put(_Failure(exc))
        else:
            await self.queue.put(StreamChunk(text="", finish_reason=response.finish_reason, response=response))
            await self.queue.put(_END)


class _Failure:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class _StreamBase:
    def __init__(self, loop: LoopThread, start: Callable[[], Coroutine[Any, Any, _Feed]]) -> None:
        self._loop = loop
        self._start = start
        self._feed: _Feed | None = None
        self._done = False
        self.response: Response | None = None

    async def _next(self) -> StreamChunk:
        """Runs on the private loop."""
        if self._feed is None:
            self._feed = await self._start()
        item = await self._feed.queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, _Failure):
            raise item.exc
        return item

    def _take(self, chunk: StreamChunk) -> StreamChunk:
        if chunk.response is not None:
            self.response = chunk.response
        return chunk

    def __del__(self) -> None:
        """Dropped without ``close()`` (a ``break`` out of the loop): stop the producer without blocking."""
        feed = getattr(self, "_feed", None)
        if feed is None or feed.task.done():
            return
        try:
            feed.task.get_loop().call_soon_threadsafe(feed.task.cancel)
        except RuntimeError:  # the loop is closed already
            pass

    async def _cancel(self) -> None:
        if self._feed is not None and not self._feed.task.done():
            self._feed.task.cancel()
            try:
                await self._feed.task
            except BaseException:  # the cancellation we asked for, or the error already reported
                pass


class Stream(_StreamBase):
    """``for chunk in client.stream(...)``: text chunks; ``.response`` after the end."""

    def __iter__(self) -> Iterator[StreamChunk]:
        return self

    def __next__(self) -> StreamChunk:
        if self._done:
            raise StopIteration
        try:
            return self._take(self._loop.run(self._next()))
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self._done = True
            self.close()
            raise

    @property
    def text(self) -> str:
        """Read the whole stream and return its text."""
        for _ in self:
            pass
        return self.response.content if self.response is not None else ""

    def close(self) -> None:
        """Stop reading; the provider call is cancelled if it is still running."""
        self._done = True
        try:
            self._loop.run(self._cancel())
        except (RuntimeError, concurrent.futures.CancelledError):
            pass

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncStream(_StreamBase):
    """``async for chunk in client.astream(...)``: text chunks; ``.response`` after the end."""

    def __aiter__(self) -> AsyncIterator[StreamChunk]:
        return self

    async def __anext__(self) -> StreamChunk:
        if self._done:
            raise StopAsyncIteration
        try:
            return self._take(await self._loop.arun(self._next()))
        except StopAsyncIteration:
            self._done = True
            raise
        except BaseException:
            self._done = True
            await self.aclose()
            raise

    async def aclose(self) -> None:
        self._done = True
        await self._loop.arun(self._cancel())

    async def __aenter__(self) -> AsyncStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
