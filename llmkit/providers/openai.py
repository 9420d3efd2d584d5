"""The OpenAI Chat Completions adapter: ``POST {base_url}/chat/completions``, one call per attempt.

Wire in: the request's OpenAI-shaped messages, ``temperature``, ``max_completion_tokens`` (from
``max_tokens``), and every key of ``request.extra`` (tools, tool_choice, stop, top_p, seed, ...).
A strict json_schema ``response_format`` is made strict-compatible (``llmkit.structured.openai_format``).
Wire out: a ``Response`` with normalised ``Usage``, ``ToolCall`` objects, the served model,
the rate-limit headers and the provider's request id. Errors are classified from the parsed body.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar

import httpx

from .. import _errors as e
from .. import structured
from .._config import ProviderConfig
from .._errors import ConfigError, ProviderError
from .._types import EmbeddingResponse, Request, Response, StreamChunk, ToolCall, Usage
from ._http import ErrorContext, HTTPProvider, parse_rate_limit_headers
from .base import embedding_input, estimate_embedding_usage, estimate_usage

# What a mid-stream error's type/code means, as an HTTP status (the stream itself was a 200).
_STATUS_OF = {
    "invalid_request_error": 400, "context_length_exceeded": 400, "exceed_context_size_error": 400,
    "invalid_api_key": 401, "authentication_error": 401, "permission_error": 403,
    "not_found_error": 404, "model_not_found": 404,
    "insufficient_quota": 429, "rate_limit_exceeded": 429, "rate_limit_error": 429, "tokens": 429, "requests": 429,
    "server_error": 500, "api_error": 500, "unavailable_error": 503, "timeout_error": 504, "overloaded_error": 529,
}


def _n(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def openai_usage(raw: Any) -> Usage | None:
    """Normalise an OpenAI ``usage`` object (every detail optional); None when there is none."""
    if not isinstance(raw, dict):
        return None
    prompt = raw.get("prompt_tokens_details") or {}
    completion = raw.get("completion_tokens_details") or {}
    cached = _n(prompt.get("cached_tokens")) if isinstance(prompt, dict) else 0
    return Usage(
        input_tokens=_n(raw.get("prompt_tokens")),
        output_tokens=_n(raw.get("completion_tokens")),
        cache_read_tokens=cached or _n(raw.get("prompt_cache_hit_tokens")),  # DeepSeek's older name
        cache_write_tokens=_n(prompt.get("cache_write_tokens")) if isinstance(prompt, dict) else 0,
        reasoning_tokens=_n(completion.get("reasoning_tokens")) if isinstance(completion, dict) else 0,
    )


def error_fields(body: Any) -> tuple[str, Any, Any]:
    """``(message, code, type)`` from ``{"error": {...}}``, ``{"error": "text"}`` or vLLM's top-level
    ``{"object": "error", "message": ..., "code": 400}``."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return str(err.get("message") or ""), err.get("code"), err.get("type")
        if isinstance(err, str):
            return err, None, None
        if body.get("object") == "error" or "message" in body:
            return str(body.get("message") or ""), body.get("code"), body.get("type")
    return "", None, None


def classify(status: int, message: str, code: Any, etype: Any) -> type[ProviderError]:
    """The error class for an OpenAI-style failure (also used for compatible servers)."""
    names = {str(code).lower(), str(etype).lower()}
    if status in (400, 413, 422) and (
        names & {"context_length_exceeded", "exceed_context_size_error"}
        or "maximum context length" in message.lower()
    ):
        return e.ContextWindowExceededError
    if status == 429:
        return e.QuotaExceededError if "insufficient_quota" in names else e.RateLimitError
    by_status: dict[int, type[ProviderError]] = {
        401: e.AuthenticationError, 402: e.QuotaExceededError, 403: e.PermissionDeniedError,
        404: e.NotFoundError, 408: e.ServerError, 409: e.ServerError, 529: e.OverloadedError,
    }
    if status in by_status:
        return by_status[status]
    if 400 <= status < 500:
        return e.BadRequestError
    return e.ServerError if status >= 500 else ProviderError


class OpenAIProvider(HTTPProvider):
    """OpenAI's Chat Completions API (``adapter = "openai"``)."""

    adapter = "openai"
    price_provider_id: str | None = "openai"
    default_base_url = "https://api.openai.com/v1"
    request_id_header = "x-request-id"
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    requires_key: ClassVar[bool] = True
    supports_embeddings = True
    known_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        unknown = set(config.options) - self.known_options
        if unknown:
            raise ConfigError(f"provider {config.name!r}: unknown {self.adapter} option {sorted(unknown)[0]!r}; "
                              f"expected one of {sorted(self.known_options)}")

    def _auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def _check_key(self) -> None:
        if self.requires_key and not self.api_key:
            env = self.config.api_key_env or "OPENAI_API_KEY"
            raise e.AuthenticationError(f"no API key: set api_key or the environment variable {env}",
                                        provider=self.name)

    # -- wire in ---------------------------------------------------------------------------------

    def build_body(self, request: Request, stream: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "messages": list(request.messages)}
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body[self.max_tokens_field] = request.max_tokens
        body.update((k, v) for k, v in request.extra.items() if k not in ("model", "messages"))
        if "response_format" in body:
            self._response_format(body, body.pop("response_format"))
        if isinstance(body.get("tools"), list):
            body["tools"] = [structured.openai_tool(t) for t in body["tools"]]
        if stream:
            body["stream"] = True
            options = dict(body.get("stream_options") or {})
            options.setdefault("include_usage", True)
            body["stream_options"] = options
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        return body

    def _response_format(self, body: dict[str, Any], fmt: Any) -> None:
        """Put ``response_format`` in ``body``: OpenAI's strict json_schema is made strict-compatible."""
        body["response_format"] = structured.openai_format(fmt)

    # -- wire out --------------------------------------------------------------------------------

    def _usage(self, raw: Any, request: Request, text: str) -> Usage:
        return openai_usage(raw) or estimate_usage(request, text)

    def _to_response(self, request: Request, data: Any, resp: httpx.Response) -> Response:
        if not isinstance(data, dict):
            raise e.ProviderConnectionError(f"malformed response: expected a JSON object, got {type(data).__name__}",
                                            provider=self.name, status=resp.status_code)
        if data.get("error") is not None and not data.get("choices"):
            raise self._stream_error(data, resp)
        choices = data.get("choices") or [{}]
        choice = choices[0] if isinstance(choices[0], dict) else {}
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, list):  # content parts
            content = "".join(str(p.get("text") or "") for p in content if isinstance(p, dict))
        text = content if isinstance(content, str) else ""
        return self.response(
            request, content=text, model=data.get("model") or request.model,
            finish_reason=_finish(choice.get("finish_reason")), usage=self._usage(data.get("usage"), request, text),
            raw=data, tool_calls=tool_calls(message.get("tool_calls")),
            rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=resp.headers.get(self.request_id_header),
        )

    def _error_for(self, ctx: ErrorContext) -> ProviderError:
        message, code, etype = error_fields(ctx.body)
        cls = classify(ctx.status, message, code, etype)
        label = code if code is not None else etype
        detail = message or ctx.text[:200] or "(empty body)"
        return cls(f"HTTP {ctx.status}" + (f" {label}" if label is not None else "") + f": {detail}",
                   **self._error_kwargs(ctx, label))

    def _stream_error(self, chunk: dict[str, Any], resp: httpx.Response) -> ProviderError:
        """A typed error for an ``{"error": ...}`` payload that arrived with a 2xx status."""
        message, code, etype = error_fields(chunk)
        if isinstance(code, int) and code >= 400:
            status = code
        else:
            status = _STATUS_OF.get(str(code).lower(), _STATUS_OF.get(str(etype).lower(), 500))
        label = code if code is not None else etype
        return classify(status, message, code, etype)(
            f"error in a {resp.status_code} response" + (f" ({label})" if label is not None else "") + f": {message}",
            provider=self.name, status=resp.status_code, code=label, body=chunk,
            request_id=resp.headers.get(self.request_id_header),
        )

    # -- calls -----------------------------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        self._check_key()
        data, resp = await self._post_json(self.path_for(request, "chat/completions"), self.build_body(request),
                                           request.timeout)
        return self._to_response(request, data, resp)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self._check_key()
        state: dict[str, Any] = {}
        acc = _StreamState()
        events = self._stream_events(self.path_for(request, "chat/completions"), self.build_body(request, stream=True),
                                     request.timeout, state)
        async with aclosing(events):
            async for event in events:
                if acc.done:
                    continue  # drain what follows [DONE] so the connection can be reused
                if event.data.startswith("[DONE]"):
                    acc.done = True
                    continue
                try:
                    chunk = json.loads(event.data)
                except ValueError:
                    if event.event is not None:
                        continue  # a named event chat streams don't define (a keep-alive): not ours
                    raise e.ProviderConnectionError(f"malformed stream chunk: {event.data[:200]!r}",
                                                    provider=self.name) from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error") is not None:
                    raise self._stream_error(chunk, state["response"])
                text = acc.add(chunk)
                if text:
                    yield StreamChunk(text=text, raw=chunk)
        if not acc.done:
            raise self._stream_ended("data: [DONE]")
        resp: httpx.Response = state["response"]
        content = "".join(acc.parts)
        final = self.response(
            request, content=content, model=acc.model or request.model, finish_reason=_finish(acc.finish_reason),
            usage=self._usage(acc.usage, request, content), raw=acc.raw(content),
            tool_calls=tool_calls(acc.tool_calls()),
            rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=resp.headers.get(self.request_id_header),
        )
        yield StreamChunk(text="", finish_reason=final.finish_reason, response=final)

    async def health_check(self) -> None:
        self._check_key()
        await self._get("/models")

    def path_for(self, request: Request, endpoint: str) -> str:
        """The path of ``endpoint`` ("chat/completions", "embeddings") for ``request`` (Azure overrides)."""
        return f"/{endpoint}"

    # -- embeddings ------------------------------------------------------------------------------

    def embedding_body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {"model": request.model, "input": embedding_input(request),
                                "encoding_format": "float"}
        body.update((k, v) for k, v in request.extra.items() if k not in ("model", "input"))
        return body

    async def embed(self, request: Request) -> EmbeddingResponse:
        self._check_key()
        texts = embedding_input(request)
        data, resp = await self._post_json(self.path_for(request, "embeddings"), self.embedding_body(request),
                                           request.timeout)
        if not isinstance(data, dict) or not isinstance(data.get("data"), list):
            if isinstance(data, dict) and data.get("error") is not None:
                raise self._stream_error(data, resp)
            raise e.ProviderConnectionError("malformed embeddings response: no 'data' list", provider=self.name,
                                            status=resp.status_code)
        items = sorted((d for d in data["data"] if isinstance(d, dict)), key=lambda d: _n(d.get("index")))
        vectors = [_vector(d.get("embedding")) for d in items]  # a list of floats, or base64 float32
        if len(vectors) != len(texts) or not all(isinstance(v, list) for v in vectors):
            raise e.ProviderConnectionError(f"malformed embeddings response: {len(vectors)} vectors for "
                                            f"{len(texts)} inputs", provider=self.name, status=resp.status_code)
        raw_usage = data.get("usage")
        usage = (Usage(input_tokens=_n(raw_usage.get("prompt_tokens") or raw_usage.get("total_tokens")))
                 if isinstance(raw_usage, dict) else estimate_embedding_usage(request))
        return self.embedding_response(
            request, vectors, usage, model=data.get("model") or request.model,
            raw={k: v for k, v in data.items() if k != "data"}, rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=resp.headers.get(self.request_id_header))


def _vector(value: Any) -> Any:
    """An embedding as a list of floats: as sent, or decoded from ``encoding_format="base64"`` (the
    little-endian float32 bytes of the vector); anything else is returned as is (and found malformed)."""
    if not isinstance(value, str):
        return value
    import base64
    import binascii
    import struct

    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return value
    if len(raw) % 4:
        return value
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def tool_calls(calls: Any) -> list[ToolCall]:
    """OpenAI-shaped ``tool_calls`` (arguments a JSON string) as ``ToolCall`` objects."""
    out = []
    for call in calls or ():
        if isinstance(call, dict):
            fn: dict[str, Any] = call["function"] if isinstance(call.get("function"), dict) else {}
            out.append(ToolCall.from_json(call.get("id"), fn.get("name"), fn.get("arguments")))
    return out


def _finish(reason: Any) -> Any:
    """OpenAI's legacy ``function_call`` finish reason is today's ``tool_calls``."""
    return "tool_calls" if reason == "function_call" else reason


class _StreamState:
    """What a Chat Completions stream has said so far."""

    __slots__ = ("done", "finish_reason", "id", "model", "parts", "tools", "usage")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.tools: dict[int, dict[str, Any]] = {}
        self.usage: Any = None
        self.finish_reason: str | None = None
        self.model: str | None = None
        self.id: str | None = None
        self.done = False

    def add(self, chunk: dict[str, Any]) -> str:
        """Take in one chunk; return its text (choice 0 only)."""
        self.model = chunk.get("model") or self.model
        self.id = chunk.get("id") or self.id
        if chunk.get("usage"):
            self.usage = chunk["usage"]  # the last non-null usage wins (vLLM sends it on every chunk)
        text = ""
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text += delta["content"]
            for call in delta.get("tool_calls") or ():
                self._add_tool_call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        if text:
            self.parts.append(text)
        return text

    def _add_tool_call(self, call: dict[str, Any]) -> None:
        slot = self.tools.setdefault(call.get("index", len(self.tools)),
                                     {"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        if call.get("id"):
            slot["id"] = call["id"]
        if call.get("type"):
            slot["type"] = call["type"]
        fn = call.get("function") or {}
        slot["function"]["name"] += fn.get("name") or ""
        slot["function"]["arguments"] += fn.get("arguments") or ""

    def tool_calls(self) -> list[dict[str, Any]]:
        return [self.tools[i] for i in sorted(self.tools)]

    def raw(self, content: str) -> dict[str, Any]:
        """The stream assembled into the shape of a non-streamed ``chat.completion``."""
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if self.tools:
            message["tool_calls"] = self.tool_calls()
        return {"id": self.id, "object": "chat.completion", "model": self.model,
                "choices": [{"index": 0, "message": message, "finish_reason": self.finish_reason}],
                "usage": self.usage}
