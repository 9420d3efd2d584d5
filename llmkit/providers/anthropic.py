"""The Anthropic Messages adapter: ``POST {base_url}/v1/messages``, one call per attempt.

Wire in: OpenAI-shaped messages become Messages API ones: ``system``/``developer`` messages go to the
top-level ``system``, ``tool`` messages become ``tool_result`` blocks, an assistant's ``tool_calls``
become ``tool_use`` blocks; ``max_tokens`` is filled in when absent (option ``default_max_tokens``,
default 4096); ``temperature`` is clamped to 1.0; ``extra["stop"]`` becomes ``stop_sequences`` and
OpenAI-shaped ``tools``/``tool_choice`` are translated (``parallel_tool_calls: false`` becomes
``disable_parallel_tool_use``); a json_schema ``response_format`` becomes a forced tool whose
``input_schema`` is the schema (its input is the answer, returned as ``content``, streamed as text);
other ``extra`` keys pass through.
Wire out: text blocks concatenated, ``tool_use`` blocks as ``ToolCall`` objects, the stop
reason mapped to OpenAI's finish reasons, and usage normalised (``input_tokens`` includes cache
reads and writes).

Options: ``default_max_tokens`` (4096), ``anthropic_version`` (``"2023-06-01"``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

import httpx

from .. import _errors as e
from .. import structured
from .._config import ProviderConfig
from .._conversation import arguments
from .._errors import ConfigError, ProviderError
from .._secrets import logger
from .._types import Request, Response, StreamChunk, ToolCall, Usage
from ._http import ErrorContext, HTTPProvider, parse_rate_limit_headers

FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length", "tool_use": "tool_calls"}
_STATUS_OF = {
    "invalid_request_error": 400, "authentication_error": 401, "billing_error": 402, "permission_error": 403,
    "not_found_error": 404, "conflict_error": 409, "request_too_large": 413, "rate_limit_error": 429,
    "api_error": 500, "timeout_error": 504, "overloaded_error": 529,
}
_CONTEXT_MESSAGES = ("prompt is too long", "exceed context limit", "exceeds the context window")
_KNOWN_OPTIONS = frozenset({"default_max_tokens", "anthropic_version"})


def _n(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def anthropic_usage(raw: Any) -> Usage:
    """Normalise Anthropic usage: ``input_tokens`` there excludes cache reads and writes; here it includes them."""
    raw = raw if isinstance(raw, dict) else {}
    write, read = _n(raw.get("cache_creation_input_tokens")), _n(raw.get("cache_read_input_tokens"))
    return Usage(input_tokens=_n(raw.get("input_tokens")) + write + read, output_tokens=_n(raw.get("output_tokens")),
                 cache_read_tokens=read, cache_write_tokens=write)


def classify(status: int, etype: Any, message: str, details: Any = None) -> type[ProviderError]:
    """The error class for an Anthropic failure, by HTTP status and ``error.type``."""
    kind = str(etype or "")
    if status == 529 or kind == "overloaded_error":
        return e.OverloadedError
    if status == 402 or kind == "billing_error":
        return e.QuotaExceededError
    if status == 429:
        spend_cap = isinstance(details, dict) and details.get("error_code") == "enforced_spend_limit_reached"
        return e.QuotaExceededError if spend_cap else e.RateLimitError
    if status == 413 or kind == "request_too_large":
        return e.BadRequestError
    if status == 400 and any(m in message.lower() for m in _CONTEXT_MESSAGES):
        return e.ContextWindowExceededError
    by_status: dict[int, type[ProviderError]] = {
        401: e.AuthenticationError, 403: e.PermissionDeniedError, 404: e.NotFoundError,
        408: e.ServerError, 409: e.ServerError,
    }
    if status in by_status:
        return by_status[status]
    if 400 <= status < 500:
        return e.BadRequestError
    return e.ServerError if status >= 500 else ProviderError


def _error_parts(body: Any) -> tuple[str, Any, Any]:
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or ""), err.get("type"), err.get("details")
    return "", None, None


# ----------------------------------------------------------------------------------------------
# OpenAI-shaped messages and tools -> Messages API


def _text_blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return [{"type": "text", "text": str(content)}] if content else []


def _system(parts: list[Any]) -> str | list[dict[str, Any]]:
    if all(isinstance(p, str) for p in parts):
        return "\n\n".join(parts)
    return [block for p in parts for block in _text_blocks(p)]


def _message(m: dict[str, Any]) -> dict[str, Any]:
    role = m.get("role")
    if role == "tool":
        return {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": m.get("tool_call_id"), "content": m.get("content") or ""}]}
    if role == "assistant" and m.get("tool_calls"):
        blocks = _text_blocks(m.get("content"))
        for call in m["tool_calls"]:
            fn = call.get("function") or {}
            args = arguments(fn.get("arguments"))  # checked before sending (llmkit._conversation)
            blocks.append({"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": args})
        return {"role": "assistant", "content": blocks}
    return {"role": role, "content": m.get("content") if m.get("content") is not None else ""}


def _tool(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function")
    if tool.get("type") != "function" or not isinstance(fn, dict):
        return tool  # already in Anthropic's shape
    out = {"name": fn.get("name"), "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        out["description"] = fn["description"]
    return out


def _tool_choice(choice: Any) -> Any:
    if isinstance(choice, str):
        return {"type": {"required": "any"}.get(choice, choice)}
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    return choice


def _merge_tool_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI sends one ``tool`` message per call; Anthropic wants the results of one turn in one user message."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if out and _is_tool_results(m) and _is_tool_results(out[-1]):
            out[-1] = {"role": "user", "content": out[-1]["content"] + m["content"]}
        else:
            out.append(m)
    return out


def _is_tool_results(m: dict[str, Any]) -> bool:
    content = m.get("content")
    return m.get("role") == "user" and isinstance(content, list) and all(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content)


def _response_format(body: dict[str, Any], fmt: Any) -> None:
    """OpenAI's ``response_format`` for the Messages API: a json_schema becomes a forced tool whose input is
    the answer; json_object becomes a system instruction (Anthropic has no JSON mode); text needs nothing."""
    named = structured.output_schema(fmt)
    if named is not None:
        name, schema = named
        body["tools"] = [{"name": name, "description": "Give your answer as this tool's input.",
                          "input_schema": schema}]
        body["tool_choice"] = {"type": "tool", "name": name}
    elif isinstance(fmt, dict) and fmt.get("type") == "json_object":
        instruction = structured.schema_instruction(None)
        system = body.get("system")
        if system is None:
            body["system"] = instruction
        elif isinstance(system, str):
            body["system"] = f"{system}\n\n{instruction}"
        else:
            body["system"] = [*system, {"type": "text", "text": instruction}]


def output_tool(request: Request) -> str | None:
    """The forced tool that carries a structured answer (its input is the answer), if any."""
    named = structured.output_schema(request.extra.get("response_format"))
    return named[0] if named is not None else None


class AnthropicProvider(HTTPProvider):
    """Anthropic's Messages API (``adapter = "anthropic"``)."""

    adapter = "anthropic"
    price_provider_id = "anthropic"
    default_base_url = "https://api.anthropic.com"
    request_id_header = "request-id"

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        unknown = set(config.options) - _KNOWN_OPTIONS
        if unknown:
            raise ConfigError(f"provider {config.name!r}: unknown anthropic option {sorted(unknown)[0]!r}; "
                              f"expected one of {sorted(_KNOWN_OPTIONS)}")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        self.default_max_tokens = int(config.options.get("default_max_tokens", 4096))
        self.version = str(config.options.get("anthropic_version", "2023-06-01"))

    def _auth_headers(self) -> dict[str, str]:
        headers = {"anthropic-version": self.version}
        if self.api_key:
            headers["x-api-key"] = self.api_key
        return headers

    def _check_key(self) -> None:
        if not self.api_key:
            env = self.config.api_key_env or "ANTHROPIC_API_KEY"
            raise e.AuthenticationError(f"no API key: set api_key or the environment variable {env}",
                                        provider=self.name)

    # -- wire in ---------------------------------------------------------------------------------

    def build_body(self, request: Request, stream: bool = False) -> dict[str, Any]:
        system = [m.get("content") for m in request.messages if m.get("role") in ("system", "developer")]
        messages = _merge_tool_results([_message(m) for m in request.messages
                                        if m.get("role") not in ("system", "developer")])
        body: dict[str, Any] = {"model": request.model, "messages": messages,
                                "max_tokens": request.max_tokens or self.default_max_tokens}
        if system:
            body["system"] = _system(system)
        if request.temperature is not None:
            if request.temperature > 1.0:
                logger.warning("provider %r: temperature %s clamped to 1.0 (Anthropic's maximum)",
                               self.name, request.temperature)
            body["temperature"] = min(request.temperature, 1.0)
        for key, value in request.extra.items():
            if key == "stop":
                body["stop_sequences"] = [value] if isinstance(value, str) else list(value or ())
            elif key == "tools":
                body["tools"] = [_tool(t) for t in value]
            elif key == "tool_choice":
                body["tool_choice"] = _tool_choice(value)
            elif key == "response_format":
                _response_format(body, value)
            elif key not in ("model", "messages", "stream", "parallel_tool_calls"):
                body[key] = value
        choice = body.get("tool_choice") or {"type": "auto"}
        if request.extra.get("parallel_tool_calls") is False and "tools" in body and choice.get("type") != "none":
            body["tool_choice"] = {**choice, "disable_parallel_tool_use": True}
        if stream:
            body["stream"] = True
        return body

    # -- wire out --------------------------------------------------------------------------------

    def _to_response(self, request: Request, data: Any, resp: httpx.Response) -> Response:
        if not isinstance(data, dict):
            raise e.ProviderConnectionError(f"malformed response: expected a JSON object, got {type(data).__name__}",
                                            provider=self.name, status=resp.status_code)
        if data.get("type") == "error":
            raise self._stream_error(data, resp)
        text, calls, answer = [], [], None
        forced = output_tool(request)
        for block in data.get("content") or ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                text.append(str(block.get("text") or ""))
            elif block.get("type") == "tool_use" and forced is not None and block.get("name") == forced:
                answer = block.get("input")
            elif block.get("type") == "tool_use":
                calls.append(ToolCall.from_json(block.get("id"), block.get("name"), block.get("input") or {}))
        stop = data.get("stop_reason")
        finish = FINISH_REASONS.get(str(stop), stop)
        if answer is not None:  # the structured answer is the forced tool's input, not a call to make
            text, finish = [answer if isinstance(answer, str) else json.dumps(answer)], "stop"
        return self.response(
            request, content="".join(text), model=data.get("model") or request.model,
            finish_reason=finish, usage=anthropic_usage(data.get("usage")), raw=data,
            tool_calls=calls, rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=resp.headers.get(self.request_id_header),
        )

    def _error_for(self, ctx: ErrorContext) -> ProviderError:
        message, etype, details = _error_parts(ctx.body)
        cls = classify(ctx.status, etype, message, details)
        detail = message or ctx.text[:200] or "(empty body)"
        return cls(f"HTTP {ctx.status}" + (f" {etype}" if etype else "") + f": {detail}",
                   **self._error_kwargs(ctx, etype))

    def _stream_error(self, data: Any, resp: httpx.Response) -> ProviderError:
        """A typed error for an ``error`` event (or error body) that came with a 2xx status."""
        message, etype, details = _error_parts(data)
        status = _STATUS_OF.get(str(etype), 500)
        return classify(status, etype, message, details)(
            f"error event in a {resp.status_code} response ({etype}): {message}", provider=self.name,
            status=resp.status_code, code=etype, body=data, request_id=resp.headers.get(self.request_id_header),
        )

    # -- calls -----------------------------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        self._check_key()
        data, resp = await self._post_json("/v1/messages", self.build_body(request), request.timeout)
        return self._to_response(request, data, resp)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self._check_key()
        state: dict[str, Any] = {}
        acc = _StreamState(output_tool(request))
        events = self._stream_events("/v1/messages", self.build_body(request, stream=True), request.timeout, state)
        async with aclosing(events):
            async for event in events:
                if acc.done:
                    continue
                try:
                    data = json.loads(event.data)
                except ValueError:
                    if event.event not in _MESSAGE_EVENTS:
                        continue  # a ping or an event this adapter does not know: skip it
                    raise e.ProviderConnectionError(f"malformed stream event: {event.data[:200]!r}",
                                                    provider=self.name) from None
                if not isinstance(data, dict):
                    continue
                if (data.get("type") or event.event) == "error":
                    raise self._stream_error(data, state["response"])
                text = acc.add(data, event.event)
                if text:
                    yield StreamChunk(text=text, raw=data)
        if not acc.done:
            raise self._stream_ended("message_stop")
        resp: httpx.Response = state["response"]
        content = "".join(acc.parts)
        final = self.response(
            request, content=content, model=acc.message.get("model") or request.model,
            finish_reason=acc.finish_reason(), usage=anthropic_usage(acc.usage), raw=acc.raw(content),
            tool_calls=[ToolCall.from_json(c["id"], c["function"]["name"], c["function"]["arguments"])
                        for c in acc.tool_calls() if c["function"]["name"] != acc.forced],
            rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=resp.headers.get(self.request_id_header),
        )
        yield StreamChunk(text="", finish_reason=final.finish_reason, response=final)

    async def health_check(self) -> None:
        self._check_key()
        await self._get("/v1/models?limit=1")


#: The Messages stream events whose payload must parse; others (``ping``, new kinds) may be skipped.
_MESSAGE_EVENTS = frozenset({None, "message_start", "content_block_start", "content_block_delta",
                             "content_block_stop", "message_delta", "message_stop", "error"})


def _tool_call(call_id: Any, name: Any, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


class _StreamState:
    """What a Messages stream has said so far."""

    __slots__ = ("blocks", "delta", "done", "forced", "message", "parts", "usage")

    def __init__(self, forced: str | None = None) -> None:
        self.forced = forced  # the tool whose input is the structured answer: streamed as text
        self.message: dict[str, Any] = {}
        self.usage: dict[str, Any] = {}
        self.delta: dict[str, Any] = {}
        self.blocks: dict[int, dict[str, Any]] = {}
        self.parts: list[str] = []
        self.done = False

    def add(self, data: dict[str, Any], event: str | None) -> str:
        """Take in one event; return the text it adds."""
        kind = data.get("type") or event
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = str(delta.get("text") or "")
                self.parts.append(text)
                return text
            if delta.get("type") == "input_json_delta":
                block = self.blocks.setdefault(data.get("index", 0), {})
                part = str(delta.get("partial_json") or "")
                if self.forced is not None and block.get("name") == self.forced:
                    self.parts.append(part)
                    return part
                block.setdefault("json", []).append(part)
        elif kind == "content_block_start":
            self.blocks.setdefault(data.get("index", 0), {}).update(data.get("content_block") or {})
        elif kind == "message_start":
            self.message = data.get("message") or {}
            self.usage.update({k: v for k, v in (self.message.get("usage") or {}).items() if v is not None})
        elif kind == "message_delta":
            self.delta.update(data.get("delta") or {})
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "message_stop":
            self.done = True
        return ""

    def finish_reason(self) -> str | None:
        stop = self.delta.get("stop_reason")
        if stop == "tool_use" and self.forced is not None and not any(
                c["function"]["name"] != self.forced for c in self.tool_calls()):
            return "stop"  # the structured answer came as the forced tool's input
        return FINISH_REASONS.get(str(stop), stop)

    def tool_calls(self) -> list[dict[str, Any]]:
        calls = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            if block.get("type") == "tool_use":
                args = "".join(block.get("json") or ()) or json.dumps(block.get("input") or {})
                calls.append(_tool_call(block.get("id"), block.get("name"), args))
        return calls

    def raw(self, content: str) -> dict[str, Any]:
        """The stream assembled into the shape of a non-streamed ``message``."""
        blocks: list[dict[str, Any]] = [{"type": "text", "text": content}] if content and not self.forced else []
        blocks += [{"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
                    "input": _loads(content if c["function"]["name"] == self.forced else c["function"]["arguments"])}
                   for c in self.tool_calls()]
        return {**self.message, "content": blocks, "stop_reason": self.delta.get("stop_reason"),
                "stop_sequence": self.delta.get("stop_sequence"), "usage": dict(self.usage)}


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text
