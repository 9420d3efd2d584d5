"""A minimal, fast fake OpenAI chat-completions server for the load benchmarks (standard library only).

    python benchmarks/_fast_server.py --latency 0.2 [--workers 1] [--port 0]

Prints its base URL (``http://127.0.0.1:PORT/v1``) on the first line of stdout, then serves until
terminated. Every ``POST`` is answered with one pre-rendered OpenAI chat completion after ``--latency``
seconds (``loop.call_later``: no task or thread per request); any other method gets a 404. HTTP/1.1
keep-alive (``connection: close`` honoured), ``content-length`` request bodies only (what httpx sends).
``--workers N`` forks N-1 more processes that accept on the same listening socket.

It exists because ``python -m llmkit.testing serve`` (a general scripted fake, asyncio streams, a task per
request) costs more CPU per request than the clients it is meant to measure at 1,000 callers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
from collections import deque
from typing import Any

BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000, "model": "gpt-4o-mini",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, how are you?",
                                         "refusal": None, "annotations": []},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 13, "completion_tokens": 7, "total_tokens": 20,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default", "system_fingerprint": None,
}, separators=(",", ":")).encode()
OK = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
      b"x-request-id: req_bench\r\n\r\n" % len(BODY)) + BODY
NOT_FOUND_BODY = b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":null}}'
NOT_FOUND = (b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
             % len(NOT_FOUND_BODY)) + NOT_FOUND_BODY
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024


class Connection(asyncio.Protocol):
    """One keep-alive connection: requests are parsed as bytes arrive; each answer is written
    ``latency`` seconds after its request is complete, in order (pipelined requests queue up)."""

    __slots__ = ("buffer", "closing", "latency", "loop", "pending", "transport")

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.loop = asyncio.get_running_loop()
        self.buffer = b""
        self.closing = False
        self.pending: deque[tuple[bytes, bool]] = deque()  # answers due, oldest first
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer + data if self.buffer else data
        while buffer and not self.closing:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._answer(BAD_REQUEST, close=True)
                    buffer = b""
                break
            head = buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                try:
                    length = int(head[at + 17:stop if stop >= 0 else len(head)])
                except ValueError:
                    self._answer(BAD_REQUEST, close=True)
                    buffer = b""
                    break
            elif b"\r\ntransfer-encoding:" in head:  # chunked bodies: not spoken here
                self._answer(BAD_REQUEST, close=True)
                buffer = b""
                break
            total = end + 4 + length
            if len(buffer) < total:
                break
            buffer = buffer[total:]
            answer = OK if head.startswith(b"post ") else NOT_FOUND
            close = b"\r\nconnection: close" in head
            if self.latency > 0:
                self.pending.append((answer, close))
                self.loop.call_later(self.latency, self._due)
            else:
                self._answer(answer, close)
        self.buffer = buffer

    def _due(self) -> None:
        """A timer fired: write the oldest pending answer (timers due at the same instant may fire in any
        order, the answers may not)."""
        self._answer(*self.pending.popleft())

    def _answer(self, answer: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if close:
            self.closing = True
            transport.close()


def listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))  # loopback only
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve(sock: socket.socket, latency: float) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            lambda: Connection(latency), sock=sock, backlog=4096)
        async with server:
            await server.serve_forever()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(main())
    except (KeyboardInterrupt, SystemExit):
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes accepting on the socket")
    args = parser.parse_args(argv)
    sock = listen(args.port)
    children = []
    for _ in range(max(0, args.workers - 1)):
        pid = os.fork()
        if pid == 0:
            serve(sock, args.latency)
            os._exit(0)
        children.append(pid)
    print(f"http://127.0.0.1:{sock.getsockname()[1]}/v1", flush=True)
    try:
        serve(sock, args.latency)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
