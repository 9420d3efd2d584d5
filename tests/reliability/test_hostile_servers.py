"""Hostile or odd servers (issue 11, items 16-18): SSE keep-alives and unknown events, compressed
streams, oversized bodies and streams, and streams that stall. Each runs against a raw asyncio server
on 127.0.0.1 that sends exactly the bytes a test gives it."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llmkit import ConfigError, ProviderConfig, ProviderError, ProviderTimeoutError
from llmkit._config import parse_provider
from llmkit._types import Request
from llmkit.providers import create_provider
from llmkit.providers.base import Provider

pytestmark = pytest.mark.timeout(20)

KEYS = {"openai": "sk-test-openai-0123456789", "anthropic": "sk-ant-test-0123456789"}


class RawServer:
    """Answers every request with ``head`` then ``body`` (closing the connection after it), or,
    with ``stall=True``, sends them and then waits without closing until the test ends."""

    def __init__(self, head: dict[str, str], body: bytes, *, status: int = 200, stall: bool = False) -> None:
        self.head, self.body, self.status, self.stall = head, body, status, stall
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()
        assert self.server is not None
        self.server.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        await reader.readexactly(length)
        lines = [f"HTTP/1.1 {self.status} OK", "connection: close",
                 *(f"{k}: {v}" for k, v in self.head.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + self.body)
        await writer.drain()
        if self.stall:
            await self.release.wait()
        writer.close()


@pytest.fixture
async def provider_for() -> AsyncIterator[Any]:
    made: list[Provider] = []

    def make(adapter: str, url: str, **fields: Any) -> Provider:
        provider = create_provider(ProviderConfig(name=f"odd-{adapter}", adapter=adapter, base_url=url,
                                                  api_key=KEYS[adapter], **fields))
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.aclose()


def req(model: str) -> Request:
    return Request(model=model, messages=({"role": "user", "content": "hi"},))


async def collect(provider: Provider, request: Request) -> tuple[str, Any]:
    texts, final = [], None
    async for chunk in provider.stream(request):
        texts.append(chunk.text)
        final = chunk.response or final
    return "".join(texts), final


SSE = {"content-type": "text/event-stream"}


def openai_chunk(text: str, finish: str | None = None) -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def anthropic_event(kind: str, **fields: Any) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


OPENAI_ODD = b"".join([
    b": keep-alive\n\n",
    openai_chunk("Hel"),
    b"data:\n\n",                       # an empty data line
    b"data: \n\n",                      # and one with only the space
    b": keep-alive\n\n",
    b"event: keepalive\ndata: ping\n\n",  # an unknown event with a non-JSON payload
    b"event: something_new\ndata: {\"x\": 1}\n\n",
    openai_chunk("lo", "stop"),
    b"data: [DONE]\n\n",
])

ANTHROPIC_ODD = b"".join([
    anthropic_event("message_start", message={"id": "m1", "model": "claude-x", "role": "assistant",
                                              "usage": {"input_tokens": 3, "output_tokens": 0}}),
    b": keep-alive\n\n",
    anthropic_event("content_block_start", index=0, content_block={"type": "text", "text": ""}),
    anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "Hel"}),
    b"event: ping\ndata:\n\n",          # ping with an empty data line
    b"data:\n\n",
    b"event: future_event\ndata: not json at all\n\n",
    anthropic_event("something_new", foo=1),
    anthropic_event("content_block_delta", index=0, delta={"type": "text_delta", "text": "lo"}),
    anthropic_event("content_block_stop", index=0),
    anthropic_event("message_delta", delta={"stop_reason": "end_turn"}, usage={"output_tokens": 2}),
    anthropic_event("message_stop"),
])

STREAMS = {"openai": ("gpt-4o", OPENAI_ODD), "anthropic": ("claude-x", ANTHROPIC_ODD)}


# -- item 17: empty data lines, comments and unknown events do not end the stream -------------------

@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_keepalives_empty_data_and_unknown_events_do_not_end_the_stream(
        adapter: str, provider_for: Any) -> None:
    model, body = STREAMS[adapter]
    async with RawServer(SSE, body) as server:
        text, final = await collect(provider_for(adapter, server.url), req(model))
    assert text == "Hello"
    assert final is not None and final.content == "Hello"
    assert final.finish_reason == "stop"


# -- item 16: compressed SSE streams are decoded ----------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_compressed_stream_is_decoded(adapter: str, encoding: str, provider_for: Any) -> None:
    model, body = STREAMS[adapter]
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    async with RawServer({**SSE, "content-encoding": encoding}, packed) as server:
        text, final = await collect(provider_for(adapter, server.url), req(model))
    assert text == "Hello"
    assert final is not None and final.finish_reason == "stop"


# -- item 18: bounded responses, stalled streams ----------------------------------------------------

def test_max_response_bytes_default_and_validation() -> None:
    assert ProviderConfig(name="p").max_response_bytes == 32 * 1024 * 1024
    entry = {"name": "p", "adapter": "openai", "api_key": "k"}
    assert parse_provider({**entry, "max_response_bytes": 1000}, 0).max_response_bytes == 1000
    for bad in (0, -1, "big", 1.5, True):
        with pytest.raises(ConfigError, match="max_response_bytes"):
            parse_provider({**entry, "max_response_bytes": bad}, 0)


@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_oversized_stream_fails_with_a_clear_error(adapter: str, provider_for: Any) -> None:
    model, body = STREAMS[adapter]
    # a stream that never ends on its own: the body repeats keep-alives far beyond the limit
    flood = body.split(b"\n\n", 1)[0] + b"\n\n" + b": keep-alive padding\n\n" * 5000
    async with RawServer(SSE, flood, stall=True) as server:
        provider = provider_for(adapter, server.url, max_response_bytes=4096)
        with pytest.raises(ProviderError, match="4096 bytes") as info:
            await collect(provider, req(model))
    assert not isinstance(info.value, ProviderTimeoutError)
    assert info.value.retryable is False


@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_oversized_body_fails_with_a_clear_error(adapter: str, declared: bool, provider_for: Any) -> None:
    model = STREAMS[adapter][0]
    body = json.dumps({"padding": "x" * 100_000}).encode()
    head = {"content-type": "application/json"}
    if declared:
        head["content-length"] = str(len(body))
    async with RawServer(head, body) as server:
        provider = provider_for(adapter, server.url, max_response_bytes=4096)
        with pytest.raises(ProviderError, match="4096 bytes") as info:
            await provider.complete(req(model))
    assert info.value.retryable is False


@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_oversized_error_body_of_a_stream_is_bounded(adapter: str, provider_for: Any) -> None:
    model = STREAMS[adapter][0]
    body = json.dumps({"error": {"message": "x" * 100_000}}).encode()
    async with RawServer({"content-type": "application/json"}, body, status=500) as server:
        provider = provider_for(adapter, server.url, max_response_bytes=4096)
        with pytest.raises(ProviderError, match="4096 bytes"):
            await collect(provider, req(model))


@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_oversized_compressed_body_is_bounded_after_decoding(adapter: str, provider_for: Any) -> None:
    model = STREAMS[adapter][0]
    body = gzip.compress(json.dumps({"padding": "x" * 1_000_000}).encode())  # ~1 KB on the wire
    head = {"content-type": "application/json", "content-encoding": "gzip"}
    async with RawServer(head, body) as server:
        provider = provider_for(adapter, server.url, max_response_bytes=64 * 1024)
        with pytest.raises(ProviderError, match="65536 bytes"):
            await provider.complete(req(model))


@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_body_within_limit_still_works(adapter: str, provider_for: Any) -> None:
    model = STREAMS[adapter][0]
    if adapter == "openai":
        answer: dict[str, Any] = {"id": "c1", "model": "gpt-4o", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
    else:
        answer = {"id": "m1", "type": "message", "role": "assistant", "model": "claude-x",
                  "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn",
                  "usage": {"input_tokens": 1, "output_tokens": 1}}
    body = gzip.compress(json.dumps(answer).encode())
    head = {"content-type": "application/json", "content-encoding": "gzip"}
    async with RawServer(head, body) as server:
        resp = await provider_for(adapter, server.url, max_response_bytes=4096).complete(req(model))
    assert resp.content == "ok"


@pytest.mark.parametrize("adapter", ["openai", "anthropic"])
async def test_stream_that_stalls_fails_with_provider_timeout(adapter: str, provider_for: Any) -> None:
    model, body = STREAMS[adapter]
    first = body.split(b"\n\n", 1)[0] + b"\n\n"  # one event, then silence with the connection open
    async with RawServer(SSE, first, stall=True) as server:
        provider = provider_for(adapter, server.url, timeout=0.3)
        with pytest.raises(ProviderTimeoutError):
            await collect(provider, req(model))
