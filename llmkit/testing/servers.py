"""The two fake server flavors of ``llmkit.testing``: OpenAI-style (with the Ollama, vLLM and llama.cpp
variants) and Anthropic. Public through ``llmkit.testing``; the shapes come from ``wire``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any

from . import wire as w
from .base import FakeLLMServer
from .http import Action, RecordedRequest

_MISSING: Any = object()


class FakeOpenAIServer(FakeLLMServer):
    """A fake OpenAI Chat Completions server; ``url`` ends in ``/v1``.

    ``flavor`` picks the quirks of an OpenAI-compatible server:

    - ``"openai"``: full usage details (cached, reasoning), ``"usage": null`` on stream chunks when
      ``include_usage`` is asked, string error codes, pretty-printed error bodies, ``x-request-id``.
    - ``"ollama"``: plain usage, stream usage only with ``include_usage``, ``code: null`` errors; ``GET /``
      answers ``Ollama is running``.
    - ``"vllm"``: top-level ``{"object": "error", ..., "code": 400}`` errors, usage on every chunk with
      ``stream_options.continuous_usage_stats``; ``GET /health`` answers 200 with an empty body.
    - ``"llamacpp"``: ``{"error": {"code": <int>, ...}}`` errors, usage on the finish chunk (older
      builds); ``GET /health`` answers ``{"status": "ok"}``.

    ``usage=False`` never sends usage. ``api_key`` (optional) makes a wrong or missing Bearer key a 401
    whose message echoes the key, as OpenAI's does.

        >>> with FakeOpenAIServer(reply="pong", flavor="vllm") as server:
        ...     server.url                                  # doctest: +ELLIPSIS
        'http://127.0.0.1:.../v1'
    """

    completion_path = "/v1/chat/completions"

    def __init__(self, *, flavor: str = "openai", usage: bool = True, embedding_dimensions: int = 32,
                 **kwargs: Any) -> None:
        if flavor not in w.OPENAI_FLAVORS:
            raise ValueError(f"flavor must be one of {w.OPENAI_FLAVORS}, got {flavor!r}")
        super().__init__(**kwargs)
        self.embedding_dimensions = embedding_dimensions
        self.flavor = flavor
        self.send_usage = usage
        self.error_indent = 2 if flavor == "openai" else None

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    def _headers(self, request: RecordedRequest) -> dict[str, str]:
        headers = super()._headers(request)
        if self.flavor == "openai":
            headers["x-request-id"] = f"req_{self._new_id():032x}"
        return headers

    def _rate_headers(self) -> dict[str, str]:
        r = self._rate or {}
        return {
            "x-ratelimit-limit-requests": str(r["limit_requests"]),
            "x-ratelimit-remaining-requests": str(r["remaining_requests"]),
            "x-ratelimit-reset-requests": w.go_duration(r["reset_requests"]),
            "x-ratelimit-limit-tokens": str(r["limit_tokens"]),
            "x-ratelimit-remaining-tokens": str(r["remaining_tokens"]),
            "x-ratelimit-reset-tokens": w.go_duration(r["reset_tokens"]),
        }

    def _check(self, request: RecordedRequest) -> Action | None:
        if self.api_key is not None:
            sent = request.headers.get("authorization", "")
            if sent != f"Bearer {self.api_key}":
                key = sent.removeprefix("Bearer ").strip()
                message = None if key else ("You didn't provide an API key. You need to provide your API key in "
                                            "an Authorization header using Bearer auth.")
                return Action("error", status=401, error={"message": message, "fill": {"key": key}})
        if not isinstance(request.json, dict) or "model" not in request.json:
            return Action("error", status=400, error={"message": "you must provide a model parameter"})
        return None

    def _error_body(self, request: RecordedRequest, action: Action) -> Any:
        e = action.error
        fill = {"model": self._model(request, action), **e.get("fill", {})}
        return w.openai_error(self.flavor, action.status, type=e.get("type"), code=e.get("code"),
                              message=e.get("message"), fill=fill)

    def _stream_error_event(self, request: RecordedRequest, action: Action) -> bytes:
        e = action.error
        status = {"rate_limit_exceeded": 429, "insufficient_quota": 429, "context_length_exceeded": 400}.get(
            str(e.get("code")), 500)
        body = w.openai_error(self.flavor, status, type=e.get("type") or ("server_error" if status >= 500 else None),
                              code=e.get("code"), message=e.get("message"),
                              fill={"model": self._model(request, action)})
        if "error" not in body:  # vLLM's top-level shape: mid-stream errors are nested
            body = {"error": {k: v for k, v in body.items() if k != "object"}}
        return w.sse(body)

    # -- replies ---------------------------------------------------------------------------------

    def _usage(self, request: RecordedRequest, action: Action, text: str, calls: list[tuple[str, str, str]],
               completion: int | None = None) -> dict[str, Any] | None:
        if action.usage is not None:
            return action.usage
        if not self.send_usage:
            return None
        prompt = w.prompt_tokens(request.json)
        if completion is None:
            completion = w.estimate(text) + sum(w.estimate(a) + 4 for _, _, a in calls)
        usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                                 "total_tokens": prompt + completion}
        cached = min(self.cached_tokens, prompt)
        written = min(self.cache_write_tokens, prompt - cached)
        if self.flavor == "openai":
            details: dict[str, Any] = {"cached_tokens": cached, "audio_tokens": 0}
            if written:
                details["cache_write_tokens"] = written
            usage["prompt_tokens_details"] = details
            usage["completion_tokens_details"] = {"reasoning_tokens": 0, "audio_tokens": 0,
                                                  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
        elif self.flavor == "vllm" and cached:
            usage["prompt_tokens_details"] = {"cached_tokens": cached}
        return usage

    def _base(self, request: RecordedRequest, action: Action, obj: str) -> dict[str, Any]:
        n = self._new_id()
        ident = f"chatcmpl-{n}" if self.flavor == "ollama" else f"chatcmpl-fake{n:08d}"
        fingerprint = {"ollama": "fp_ollama", "llamacpp": "b4658-fake"}.get(self.flavor, "fp_fake")
        return {"id": ident, "object": obj, "created": int(time.time()), "model": self._model(request, action),
                "system_fingerprint": fingerprint}

    def _reply_body(self, request: RecordedRequest, action: Action) -> dict[str, Any]:
        text = self._text(request, action)
        calls = w.tool_calls(action.tool_calls)
        message: dict[str, Any] = {"role": "assistant", "content": text if (text or not calls) else None}
        if self.flavor == "openai":
            message["refusal"] = None
        if calls:
            message["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                                     for i, n, a in calls]
        finish = action.finish_reason or ("tool_calls" if calls else "stop")
        body = self._base(request, action, "chat.completion")
        body["choices"] = [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}]
        usage = self._usage(request, action, text, calls)
        if usage is not None:
            body["usage"] = usage
        return body

    def _reply_events(self, request: RecordedRequest, action: Action) -> list[bytes]:
        asked = request.json if isinstance(request.json, dict) else {}
        options = asked.get("stream_options") if isinstance(asked.get("stream_options"), dict) else None
        include = bool(options and options.get("include_usage", self.flavor == "vllm"))
        continuous = self.flavor == "vllm" and bool(options and options.get("continuous_usage_stats"))
        text = self._text(request, action)
        calls = w.tool_calls(action.tool_calls)
        usage = self._usage(request, action, text, calls)
        base = self._base(request, action, "chat.completion.chunk")
        nulls = self.flavor == "openai" and include and usage is not None
        done = 0

        def event(delta: dict[str, Any], finish: str | None = None, chunk_usage: Any = _MISSING) -> bytes:
            nonlocal done
            obj = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if continuous and usage is not None and action.usage is None:
                done += 1
                obj["usage"] = self._usage(request, action, text, calls, completion=done)
            elif chunk_usage is not _MISSING:
                obj["usage"] = chunk_usage
            elif nulls:
                obj["usage"] = None
            return w.sse(obj)

        events = [event({"role": "assistant", "content": "" if not calls else None})]
        events += [event({"content": piece}) for piece in w.pieces(text)]
        for index, (call_id, name, args) in enumerate(calls):
            events.append(event({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                                 "function": {"name": name, "arguments": ""}}]}))
            half = len(args) // 2
            events += [event({"tool_calls": [{"index": index, "function": {"arguments": frag}}]})
                       for frag in (args[:half], args[half:]) if frag]
        finish = action.finish_reason or ("tool_calls" if calls else "stop")
        if self.flavor == "llamacpp" and usage is not None:  # older llama-server: usage on the finish chunk
            events.append(event({}, finish, usage))
        else:
            events.append(event({}, finish))
            if include and usage is not None and not continuous:
                events.append(w.sse({**base, "choices": [], "usage": usage}))
        events.append(b"data: [DONE]\n\n")
        return events

    # -- other routes ----------------------------------------------------------------------------

    def _route(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        path, headers = request.path, self._headers(request)
        if path in ("/v1/models", "/models"):
            models = [self.model or "fake-model"]
            self.send_json(writer, 200, headers, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 1686935002, "owned_by": "llmkit-fake"} for m in models]})
        elif path in ("/v1/embeddings", "/embeddings") and request.method == "POST":
            body = request.json if isinstance(request.json, dict) else {}
            dims = body.get("dimensions") or self.embedding_dimensions
            model = self._model(request, Action("reply"))
            self.send_json(writer, 200, headers, w.openai_embeddings(body, int(dims), model))
        elif path == "/health" and self.flavor in ("vllm", "llamacpp"):
            if self.flavor == "vllm":
                self.send(writer, 200, headers, b"")
            else:
                self.send_json(writer, 200, headers, {"status": "ok"})
        elif path == "/" and self.flavor == "ollama":
            self.send(writer, 200, {"content-type": "text/plain; charset=utf-8", **headers}, b"Ollama is running")
        elif path == "/api/version" and self.flavor == "ollama":
            self.send_json(writer, 200, headers, {"version": "0.12.0"})
        else:
            self.send_json(writer, 404, headers, w.openai_error(
                self.flavor, 404, type="invalid_request_error", code="unknown_url",
                message=f"Unknown request URL: {request.method} {path}."), self.error_indent)
        return True


class FakeAnthropicServer(FakeLLMServer):
    """A fake Anthropic Messages server (``POST /v1/messages``); ``url`` is the bare origin.

    A forced tool (``tool_choice: {"type": "tool"}``, how llmkit asks for structured output) is answered with
    a ``tool_use`` whose input is generated from its ``input_schema``; the OpenAI fake likewise answers a
    json_schema ``response_format`` with JSON valid for the schema (unless a reply is scripted).

    Like the real API it answers 400 to a request without ``max_tokens``, with a ``system`` role in
    ``messages``, with ``temperature > 1`` or without the ``anthropic-version`` header (``strict=False``
    turns that off), and 401 to a wrong ``x-api-key`` when ``api_key`` is set. Stream JSON is padded with
    spaces before the closing brace, as the real stream is (``pad=False`` turns that off).
    ``code=`` on ``enqueue_error`` becomes ``error.details.error_code``.

        >>> with FakeAnthropicServer(reply="pong", cached_tokens=100) as server:
        ...     server.enqueue_error(529)                   # the next call: overloaded_error
    """

    completion_path = "/v1/messages"

    def __init__(self, *, strict: bool = True, pad: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.strict = strict
        self.pad = pad

    @property
    def url(self) -> str:
        return self.base

    def _headers(self, request: RecordedRequest) -> dict[str, str]:
        return {**super()._headers(request), "request-id": f"req_011fake{self._new_id():016d}"}

    def _rate_headers(self) -> dict[str, str]:
        r = self._rate or {}
        out = {"anthropic-ratelimit-requests-limit": str(r["limit_requests"]),
               "anthropic-ratelimit-requests-remaining": str(r["remaining_requests"]),
               "anthropic-ratelimit-requests-reset": w.rfc3339_in(r["reset_requests"])}
        for group in ("tokens", "input-tokens"):
            out[f"anthropic-ratelimit-{group}-limit"] = str(r["limit_tokens"])
            out[f"anthropic-ratelimit-{group}-remaining"] = str(r["remaining_tokens"])
            out[f"anthropic-ratelimit-{group}-reset"] = w.rfc3339_in(r["reset_tokens"])
        return out

    def _check(self, request: RecordedRequest) -> Action | None:
        key = request.headers.get("x-api-key")
        if self.api_key is not None and key != self.api_key:
            return Action("error", status=401, error={
                "message": "invalid x-api-key" if key else "x-api-key header is required"})
        if not self.strict:
            return None
        body = request.json if isinstance(request.json, dict) else {}
        problems = [
            (not request.headers.get("anthropic-version"), "anthropic-version: header is required"),
            ("max_tokens" not in body, "max_tokens: Field required"),
            (any(isinstance(m, dict) and m.get("role") == "system" for m in body.get("messages") or ()),
             'messages: Unexpected role "system". The Messages API accepts a top-level `system` parameter, '
             'not "system" as an input message role.'),
            (isinstance(body.get("temperature"), (int, float)) and body["temperature"] > 1,
             "temperature: range: 0..1"),
        ]
        for bad, message in problems:
            if bad:
                return Action("error", status=400, error={"message": message})
        return None

    def _error_body(self, request: RecordedRequest, action: Action) -> Any:
        e = action.error
        return w.anthropic_error(action.status, type=e.get("type"), message=e.get("message"), code=e.get("code"),
                                 details=e.get("details"), request_id=f"req_011fake{self._new_id():016d}",
                                 fill={"model": self._model(request, action)})

    def _stream_error_event(self, request: RecordedRequest, action: Action) -> bytes:
        e = action.error
        kind = e.get("type") or "overloaded_error"
        status = next((s for s, (t, _) in w.ANTHROPIC_ERRORS.items() if t == kind), 500)
        body = w.anthropic_error(status, type=kind, message=e.get("message"), code=e.get("code"))
        return w.sse(body, "error")

    def _usage(self, request: RecordedRequest, action: Action, text: str, calls: list[tuple[str, str, str]],
               ) -> dict[str, Any]:
        if action.usage is not None:
            return action.usage
        prompt = w.prompt_tokens(request.json)
        cached = min(self.cached_tokens, prompt)
        written = min(self.cache_write_tokens, prompt - cached)
        return {"input_tokens": prompt - cached - written, "cache_creation_input_tokens": written,
                "cache_read_input_tokens": cached,
                "cache_creation": {"ephemeral_5m_input_tokens": written, "ephemeral_1h_input_tokens": 0},
                "output_tokens": w.estimate(text) + sum(w.estimate(a) + 4 for _, _, a in calls),
                "service_tier": "standard"}

    def _reply_body(self, request: RecordedRequest, action: Action) -> dict[str, Any]:
        forced = w.forced_tool_call(request.json) if action.text is None and action.tool_calls is None else None
        if forced is not None:  # a structured answer asked as a forced tool: answer with valid input
            action = dataclasses.replace(action, tool_calls=[forced])
        text = self._text(request, action)
        calls = w.tool_calls(action.tool_calls)
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
        content += [{"type": "tool_use", "id": i, "name": n, "input": json.loads(a)} for i, n, a in calls]
        return {"model": self._model(request, action), "id": f"msg_fake{self._new_id():020d}", "type": "message",
                "role": "assistant", "content": content,
                "stop_reason": action.finish_reason or ("tool_use" if calls else "end_turn"), "stop_sequence": None,
                "usage": self._usage(request, action, text, calls)}

    def _reply_events(self, request: RecordedRequest, action: Action) -> list[bytes]:
        message = self._reply_body(request, action)
        usage = message["usage"]
        pads = iter(range(10**6))

        def event(kind: str, data: dict[str, Any]) -> bytes:
            return w.sse({"type": kind, **data}, kind, pad=(next(pads) * 7 % 13 + 1) if self.pad else 0)

        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        events = [event("message_start", {"message": start})]
        for index, block in enumerate(message["content"]):
            if block["type"] == "text":
                events.append(event("content_block_start", {"index": index,
                                                            "content_block": {"type": "text", "text": ""}}))
                if index == 0:
                    events.append(b'event: ping\ndata: {"type": "ping"}\n\n')
                events += [event("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": p}})
                           for p in w.pieces(block["text"])]
            else:
                events.append(event("content_block_start", {"index": index, "content_block": {
                    "type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}}))
                args = json.dumps(block["input"])
                half = len(args) // 2
                events += [event("content_block_delta", {"index": index, "delta": {
                    "type": "input_json_delta", "partial_json": frag}}) for frag in ("", args[:half], args[half:])]
            events.append(event("content_block_stop", {"index": index}))
        final_usage = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                            "output_tokens") if k in usage}
        events.append(event("message_delta", {"delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                              "usage": final_usage}))
        events.append(event("message_stop", {}))
        return events

    def _route(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        headers = self._headers(request)
        if request.path == "/v1/models":
            model = self.model or "claude-fake-1"
            self.send_json(writer, 200, headers, {
                "data": [{"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"}],
                "has_more": False, "first_id": model, "last_id": model})
        else:
            self.send_json(writer, 404, headers, w.anthropic_error(404, message="Not found"))
        return True
