"""The base of the fake LLM servers in ``llmkit.testing``: the reply, the script API (replies, errors,
faults), rate-limit headers, and the fast path that replays pre-rendered answers. The flavors
(``servers``) supply the wire shapes.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from . import wire as w
from .http import Action, FakeHTTPServer, RecordedRequest, response_head

Reply = str | Callable[[Any], str] | None


class FakeLLMServer(FakeHTTPServer):
    """What both fake servers share: the reply, the script API, rate-limit headers, the fast path."""

    completion_path: ClassVar[str] = ""

    def __init__(self, *, reply: Reply = None, model: str | None = None, host: str = "127.0.0.1", port: int = 0,
                 latency: float = 0.0, chunk_delay: float = 0.0, cached_tokens: int = 0, cache_write_tokens: int = 0,
                 api_key: str | None = None, rate_limit: dict[str, Any] | None = None, fast: bool = False,
                 max_recorded: int = 10_000) -> None:
        super().__init__(host=host, port=port, latency=latency, max_recorded=max_recorded)
        self.reply = reply
        self.model = model
        self.chunk_delay = chunk_delay
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.api_key = api_key
        self.fast = fast
        self.error_indent: int | None = None
        self._ids = itertools.count(1)
        self._cache: dict[tuple[Any, ...], bytes] = {}
        self._rate: dict[str, Any] | None = None
        if rate_limit is not None:
            self.set_rate_limit(**rate_limit)

    def __enter__(self) -> FakeLLMServer:
        self.start()
        return self

    # -- script ----------------------------------------------------------------------------------

    def enqueue(self, reply: str | None = None, *, tool_calls: Sequence[dict[str, Any]] | None = None,
                usage: dict[str, Any] | None = None, model: str | None = None, finish_reason: str | None = None,
                headers: dict[str, str] | None = None, latency: float | None = None, path: str | None = None) -> None:
        """Answer the next call with ``reply`` (and/or ``tool_calls``: OpenAI-shaped, or ``{"name",
        "arguments"}``). ``usage`` is a wire usage object sent as is; ``finish_reason`` the wire value."""
        self._push(Action("reply", text=reply, tool_calls=list(tool_calls) if tool_calls else None, usage=usage,
                          model=model, finish_reason=finish_reason, headers=dict(headers or {}), latency=latency,
                          path=path))

    def enqueue_error(self, status: int, *, code: str | int | None = None, type: str | None = None,
                      message: str | None = None, headers: dict[str, str] | None = None,
                      retry_after: float | str | None = None, retry_after_ms: float | None = None,
                      should_retry: bool | None = None, details: Any = None, latency: float | None = None,
                      path: str | None = None) -> None:
        """Answer the next call with HTTP ``status`` and the real error body of this server's flavor.

        ``retry_after`` (seconds, or a string sent verbatim such as an HTTP date), ``retry_after_ms`` and
        ``should_retry`` add the ``retry-after``, ``retry-after-ms`` and ``x-should-retry`` headers.
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["retry-after"] = retry_after if isinstance(retry_after, str) else f"{retry_after:g}"
        if retry_after_ms is not None:
            extra["retry-after-ms"] = f"{retry_after_ms:g}"
        if should_retry is not None:
            extra["x-should-retry"] = "true" if should_retry else "false"
        self._push(Action("error", status=status, headers=extra, latency=latency, path=path,
                          error={"code": code, "type": type, "message": message, "details": details}))

    def enqueue_raw(self, body: bytes | str | Any, *, status: int = 200, headers: dict[str, str] | None = None,
                    latency: float | None = None, path: str | None = None) -> None:
        """Answer the next call with exactly ``body`` (bytes, text, or JSON) and ``headers`` (replaying a
        recording: a ``text/event-stream`` content type sends it as a stream)."""
        self._push(Action("raw", status=status, body=body, headers=dict(headers or {}), latency=latency, path=path))

    def enqueue_drop(self, *, latency: float | None = None, path: str | None = None) -> None:
        """Close the connection after reading the next request, without answering."""
        self._push(Action("drop", latency=latency, path=path))

    def enqueue_reset(self, *, latency: float | None = None, path: str | None = None) -> None:
        """Reset the connection (TCP RST) after reading the next request."""
        self._push(Action("reset", latency=latency, path=path))

    def enqueue_malformed(self, *, latency: float | None = None, path: str | None = None) -> None:
        """Answer the next call with a 200 whose body (or stream data) is not valid JSON."""
        self._push(Action("malformed", latency=latency, path=path))

    def enqueue_truncated(self, after: int = 2, *, clean: bool = True, latency: float | None = None,
                          path: str | None = None) -> None:
        """Cut the next answer short after ``after`` stream events (a non-streamed body: half of it).
        ``clean=True`` ends the HTTP body properly (just without ``[DONE]``/``message_stop``);
        ``clean=False`` drops the connection mid-body."""
        self._push(Action("truncate", after=after, clean=clean, latency=latency, path=path))

    def enqueue_stream_error(self, type: str | None = None, message: str | None = None, *,
                             code: str | int | None = None, after: int = 1, latency: float | None = None,
                             path: str | None = None) -> None:
        """Send ``after`` stream events, then an error event (HTTP status stays 200)."""
        self._push(Action("stream_error", after=after, latency=latency, path=path,
                          error={"type": type, "message": message, "code": code}))

    def set_rate_limit(self, *, limit_requests: int = 1000, remaining_requests: int = 999,
                       reset_requests: float = 0.06, limit_tokens: int = 100_000, remaining_tokens: int = 99_000,
                       reset_tokens: float = 0.6) -> None:
        """Send rate-limit headers (this flavor's names; resets in seconds) on every answer from now on."""
        self._rate = {"limit_requests": limit_requests, "remaining_requests": remaining_requests,
                      "reset_requests": reset_requests, "limit_tokens": limit_tokens,
                      "remaining_tokens": remaining_tokens, "reset_tokens": reset_tokens}
        self._cache.clear()

    def clear_rate_limit(self) -> None:
        self._rate = None

    @property
    def url(self) -> str:
        """The base URL to configure a provider with."""
        raise NotImplementedError

    # -- hooks for the flavors -------------------------------------------------------------------

    def is_completion(self, path: str) -> bool:
        return path == self.completion_path

    def _is_stream(self, request: RecordedRequest) -> bool:
        """Whether the client asked for a stream (OpenAI/Anthropic: ``"stream": true`` in the body)."""
        return isinstance(request.json, dict) and bool(request.json.get("stream"))

    def _headers(self, request: RecordedRequest) -> dict[str, str]:
        return self._rate_headers() if self._rate else {}

    def _rate_headers(self) -> dict[str, str]:
        return {}

    def _check(self, request: RecordedRequest) -> Action | None:
        return None

    def _error_body(self, request: RecordedRequest, action: Action) -> Any:
        raise NotImplementedError

    def _reply_body(self, request: RecordedRequest, action: Action) -> dict[str, Any]:
        raise NotImplementedError

    def _reply_events(self, request: RecordedRequest, action: Action) -> list[bytes]:
        raise NotImplementedError

    def _stream_error_event(self, request: RecordedRequest, action: Action) -> bytes:
        raise NotImplementedError

    def _route(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        raise NotImplementedError

    # -- answering -------------------------------------------------------------------------------

    def _text(self, request: RecordedRequest, action: Action) -> str:
        if action.text is not None:
            return action.text
        if action.tool_calls:
            return ""
        if callable(self.reply):
            return str(self.reply(request.json))
        if self.reply is not None:
            return self.reply
        return w.schema_answer(request.json) or f"Echo: {w.last_user_text(request.json)}"

    def _model(self, request: RecordedRequest, action: Action) -> str:
        asked = request.json.get("model") if isinstance(request.json, dict) else None
        return action.model or self.model or str(asked or "fake-model")

    def _new_id(self) -> int:
        return next(self._ids)

    async def handle(self, request: RecordedRequest, action: Action | None, writer: asyncio.StreamWriter) -> bool:
        scripted = action is not None
        if action is None:
            if not self.is_completion(request.path):
                return self._route(request, writer)
            action = self._check(request) or Action("reply")
        kind = action.kind
        if kind == "drop":
            writer.close()
            return False
        if kind == "reset":
            self.reset(writer)
            return False
        if kind == "raw":
            return self.send_raw(writer, action)
        headers = {**self._headers(request), **action.headers}
        if kind == "error":
            self.send_json(writer, action.status, headers, self._error_body(request, action), self.error_indent)
            return True
        stream = self._is_stream(request)
        if kind == "malformed":
            if stream:
                return await self.send_events(writer, headers, [b'data: {"id": "broken", "choices": [\n\n'])
            self.send(writer, 200, {"content-type": "application/json", **headers}, b'{"id": "broken", "choices": [')
            return True
        if not stream:
            if kind == "stream_error":
                self.send_json(writer, 200, headers, json.loads(self._stream_error_event(request, action)
                                                                .split(b"data: ", 1)[1]))
                return True
            if kind == "truncate":
                data = json.dumps(self._reply_body(request, action)).encode()
                writer.write(response_head(200, {"content-type": "application/json", **headers}, len(data))
                             + data[: len(data) // 2])
                await writer.drain()
                writer.transport.abort()
                return False
            writer.write(self._cached(request, scripted, False, lambda: self._render_body(request, action, headers)))
            return True
        if kind == "truncate":
            events = self._reply_events(request, action)[: action.after]
            return await self.send_events(writer, headers, events, interval=self.chunk_delay, complete=action.clean)
        if kind == "stream_error":
            events = self._reply_events(request, action)[: action.after]
            events.append(self._stream_error_event(request, action))
            return await self.send_events(writer, headers, events, interval=self.chunk_delay)
        if self.chunk_delay > 0:
            return await self.send_events(writer, headers, self._reply_events(request, action),
                                          interval=self.chunk_delay)
        writer.write(self._cached(request, scripted, True, lambda: self._render_events(request, action, headers)))
        return True

    def _render_body(self, request: RecordedRequest, action: Action, headers: dict[str, str]) -> bytes:
        body = json.dumps(self._reply_body(request, action)).encode()
        return response_head(200, {"content-type": "application/json", **headers}, len(body)) + body

    def _render_events(self, request: RecordedRequest, action: Action, headers: dict[str, str]) -> bytes:
        data = b"".join(self._reply_events(request, action))
        head = response_head(200, {"content-type": "text/event-stream; charset=utf-8", **headers}, None)
        return head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data)

    def _cached(self, request: RecordedRequest, scripted: bool, stream: bool, render: Callable[[], bytes]) -> bytes:
        """The fast path: with ``fast=True``, a fixed ``reply`` and no rate-limit headers, answers are
        rendered once per (path, model, stream options, prompt size) and replayed as bytes."""
        if scripted or not self.fast or not isinstance(self.reply, str) or self._rate:
            return render()
        body = request.json if isinstance(request.json, dict) else {}
        key = (request.path, body.get("model"), stream, json.dumps(body.get("stream_options"), sort_keys=True),
               w.prompt_tokens(body))
        data = self._cache.get(key)
        if data is None:
            if len(self._cache) > 1024:
                self._cache.clear()
            data = self._cache[key] = render()
        return data
