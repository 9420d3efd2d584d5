"""The engine under ``llmkit.testing``: a small HTTP/1.1 server on raw asyncio streams, running its own
event loop in a daemon thread, with a thread-safe script of replies and faults.

It speaks just enough HTTP for an HTTP client under test: keep-alive, ``Content-Length`` and chunked
request bodies, ``Content-Length`` replies and chunked SSE replies. The wire shapes (what a reply or an
error looks like) belong to the subclasses in ``llmkit.testing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import json
import socket
import struct
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

_REASONS = {529: "Site Overloaded"}
_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


@dataclass(slots=True)
class RecordedRequest:
    """One request the fake server received: ``headers`` have lower-case names, ``json`` the parsed body."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw: bytes = field(repr=False)
    query: str = ""

    @property
    def body(self) -> Any:
        """The parsed JSON body (same as ``json``)."""
        return self.json


@dataclass(slots=True)
class Action:
    """One scripted answer. ``kind`` is one of: ``reply``, ``error``, ``raw``, ``drop``, ``reset``,
    ``malformed``, ``truncate``, ``stream_error``. ``path`` None means the completion endpoint,
    ``"*"`` any request, otherwise that exact path."""

    kind: str
    text: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    usage: dict[str, Any] | None = None
    model: str | None = None
    finish_reason: str | None = None
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    latency: float | None = None
    after: int = 1
    clean: bool = True
    error: dict[str, Any] = field(default_factory=dict)
    path: str | None = None


def reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return _REASONS.get(status, "Unknown")


def response_head(status: int, headers: Mapping[str, str], length: int | None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason(status)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() not in _HOP_BY_HOP]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"


class FakeHTTPServer:
    """Base of the fake servers: lifecycle, recording, scripting, connection handling.

    Subclasses implement ``handle(request, action) -> bool`` (write the answer; return whether the
    connection stays open) and ``is_completion(path)``.
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, latency: float = 0.0,
                 max_recorded: int = 10_000) -> None:
        self.host = host
        self.port = port
        self.latency = latency
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._script: deque[Action] = deque()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._down = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHTTPServer:
        """Start listening (in a daemon thread); returns self. ``url`` is valid afterwards."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready: dict[str, Any] = {}
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:
                ready["error"] = exc
                started.set()
                loop.close()
                return
            loop.call_soon(started.set)
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        if not started.wait(10.0) or "error" in ready:
            self._thread = None
            raise RuntimeError(f"{type(self).__name__} could not start: {ready.get('error', 'timed out')}")
        return self

    def stop(self) -> None:
        """Close every connection and the listening socket, and end the thread."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(5.0)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5.0)
        self._thread = None

    def __enter__(self) -> FakeHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base(self) -> str:
        """``http://127.0.0.1:PORT`` (no path)."""
        if self._thread is None:
            raise RuntimeError("the server is not started: call start() or use it as a context manager")
        return f"http://{self.host}:{self.port}"

    def set_down(self, down: bool = True) -> None:
        """``True``: close the listening socket (connections are refused) and every open connection.
        ``False``: listen again on the same port."""
        if self._loop is None or self._thread is None:
            raise RuntimeError("the server is not started")
        coro = self._go_down() if down else self._listen()
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10.0)

    @property
    def down(self) -> bool:
        return self._down

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._connection, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._down = False

    async def _go_down(self) -> None:
        self._down = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _shutdown(self) -> None:
        await self._go_down()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)

    # -- scripting and recording -----------------------------------------------------------------

    def _push(self, action: Action) -> None:
        with self._lock:
            self._script.append(action)

    def _pop(self, request: RecordedRequest) -> Action | None:
        with self._lock:
            for i, action in enumerate(self._script):
                if action.path == "*" or action.path == request.path or (
                        action.path is None and self.is_completion(request.path)):
                    del self._script[i]
                    return action
        return None

    @property
    def pending(self) -> int:
        """How many scripted answers are still queued."""
        with self._lock:
            return len(self._script)

    def clear(self) -> None:
        """Forget the recorded requests and every queued answer."""
        with self._lock:
            self._script.clear()
            self._requests.clear()

    @property
    def requests(self) -> list[RecordedRequest]:
        """The requests received so far (a copy), oldest first."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest | None:
        with self._lock:
            return self._requests[-1] if self._requests else None

    # -- the connection loop ---------------------------------------------------------------------

    def is_completion(self, path: str) -> bool:
        raise NotImplementedError

    async def handle(self, request: RecordedRequest, action: Action | None,
                     writer: asyncio.StreamWriter) -> bool:
        raise NotImplementedError

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._writers.add(writer)
        try:
            while not self._down:
                request = await self._read_request(reader)
                if request is None:
                    break
                with self._lock:
                    self._requests.append(request)
                action = self._pop(request)
                delay = action.latency if action is not None and action.latency is not None else self.latency
                if delay > 0:
                    await asyncio.sleep(delay)
                keep = await self.handle(request, action, writer)
                await writer.drain()
                if not keep or request.headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        except asyncio.CancelledError:  # shutting down: end quietly (a cancelled handler task gets logged)
            writer.transport.abort()
        finally:
            self._writers.discard(writer)
            if task is not None:
                self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> RecordedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, target, _version = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            raw = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            raw = await self._read_chunked(reader)
        else:
            raw = b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path, _, query = target.partition("?")
        return RecordedRequest(method=method, path=path, headers=headers, json=body, raw=raw, query=query)

    @staticmethod
    async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)

    # -- writing helpers for subclasses ----------------------------------------------------------

    @staticmethod
    def send(writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str], body: bytes) -> None:
        writer.write(response_head(status, headers, len(body)) + body)

    def send_json(self, writer: asyncio.StreamWriter, status: int, headers: Mapping[str, str], obj: Any,
                  indent: int | None = None) -> None:
        body = json.dumps(obj, indent=indent).encode()
        self.send(writer, status, {"content-type": "application/json", **headers}, body)

    async def send_events(self, writer: asyncio.StreamWriter, headers: Mapping[str, str], events: list[bytes],
                          *, interval: float = 0.0, complete: bool = True) -> bool:
        """Send ``events`` as a chunked SSE body. ``complete=False`` drops the connection before the
        terminating chunk (an abrupt cut); returns whether the connection stays open."""
        writer.write(response_head(200, {"content-type": "text/event-stream; charset=utf-8", **headers}, None))
        for event in events:
            writer.write(chunk(event))
            if interval > 0:
                await writer.drain()
                await asyncio.sleep(interval)
        if not complete:
            await writer.drain()
            writer.transport.abort()
            return False
        writer.write(LAST_CHUNK)
        return True

    @staticmethod
    def reset(writer: asyncio.StreamWriter) -> None:
        """Close the connection with a TCP RST."""
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    def send_raw(self, writer: asyncio.StreamWriter, action: Action) -> bool:
        """Replay a recorded answer: ``action.body`` bytes (or str/JSON), ``action.headers``."""
        body = action.body
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        data = body.encode() if isinstance(body, str) else body
        headers = {k.lower(): v for k, v in action.headers.items()}
        if "event-stream" in headers.get("content-type", ""):
            writer.write(response_head(action.status, headers, None) + (chunk(data) if data else b"") + LAST_CHUNK)
        else:
            headers.setdefault("content-type", "application/json")
            self.send(writer, action.status, headers, data)
        return True
