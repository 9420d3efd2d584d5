"""The Gemini adapter on Google's native Generative Language REST API (``adapter = "gemini"``).

``POST {base_url}/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` and
``:batchEmbedContents``; the key in the ``x-goog-api-key`` header (``GEMINI_API_KEY``, else
``GOOGLE_API_KEY``).

Wire in: ``system``/``developer`` messages -> ``systemInstruction``; ``assistant`` -> role ``model``
(its ``tool_calls`` -> ``functionCall`` parts); ``tool`` results -> ``functionResponse`` parts;
``temperature``, ``max_tokens`` (``maxOutputTokens``), ``top_p``, ``top_k``, ``stop``, ``n``, ``seed``,
penalties -> ``generationConfig``; ``response_format`` (OpenAI shape) -> ``responseMimeType`` /
``responseSchema``; ``tools``/``tool_choice`` (OpenAI shape) -> ``functionDeclarations`` /
``toolConfig``. Gemini-native keys (``safetySettings``, ``cachedContent``, ``toolConfig``,
``generationConfig``, ``labels``) pass through. OpenAI-only arguments that don't change the answer
(``user``, ``parallel_tool_calls``, ``store``, ``service_tier``) are dropped with a debug log; anything else
raises ``UnsupportedArgumentError`` before sending (the router falls back, the breaker is untouched).

Wire out: ``usageMetadata`` normalised to ``Usage`` (input = ``promptTokenCount`` + tool-use prompt,
cached content included; output = ``candidatesTokenCount`` + ``thoughtsTokenCount``); thought parts
are not content; a blocked prompt (``promptFeedback.blockReason``) or a safety stop with no text
raises ``ContentFilterError``; the error body's ``status`` picks the error class.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from .. import _errors as e
from .._conversation import arguments
from .._errors import ProviderError
from .._secrets import logger
from .._types import EmbeddingResponse, Request, Response, StreamChunk, ToolCall, Usage
from ._http import ErrorContext, HTTPProvider, parse_duration, parse_rate_limit_headers
from .base import content_text, embedding_input, estimate_embedding_usage, estimate_usage

#: The error body's ``status`` -> the error class (HTTP status decides when the body has none).
_BY_STATUS: dict[str, type[ProviderError]] = {
    "INVALID_ARGUMENT": e.BadRequestError, "OUT_OF_RANGE": e.BadRequestError,
    "FAILED_PRECONDITION": e.PermissionDeniedError,  # billing / region: this account can't, another may
    "UNAUTHENTICATED": e.AuthenticationError, "PERMISSION_DENIED": e.PermissionDeniedError,
    "NOT_FOUND": e.NotFoundError, "RESOURCE_EXHAUSTED": e.RateLimitError,
    "INTERNAL": e.ServerError, "UNKNOWN": e.ServerError, "CANCELLED": e.ServerError,
    "UNAVAILABLE": e.OverloadedError, "DEADLINE_EXCEEDED": e.ProviderTimeoutError,
}
_BY_HTTP: dict[int, str] = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                            404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE",
                            504: "DEADLINE_EXCEEDED"}
_BLOCKED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "LANGUAGE"})
_FINISH = {"STOP": "stop", "MAX_TOKENS": "length", "MALFORMED_FUNCTION_CALL": "error"}
_GENERATION = {"top_p": "topP", "top_k": "topK", "n": "candidateCount", "seed": "seed",
               "presence_penalty": "presencePenalty", "frequency_penalty": "frequencyPenalty",
               "logprobs": "responseLogprobs", "top_logprobs": "logprobs"}
#: OpenAI arguments with no Gemini meaning that do not change the answer: dropped (debug log), not refused.
_OPENAI_ONLY = frozenset({"user", "parallel_tool_calls", "store", "service_tier"})
_NATIVE = ("safetySettings", "cachedContent", "toolConfig", "labels")
_CONTEXT = re.compile(r"input token count.*exceeds the maximum|exceeds the maximum number of tokens", re.I)


def _n(value: Any) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


def gemini_usage(raw: Any) -> Usage | None:
    """Normalise ``usageMetadata``; None when there is none."""
    if not isinstance(raw, dict) or ("promptTokenCount" not in raw and "candidatesTokenCount" not in raw):
        return None
    thoughts = _n(raw.get("thoughtsTokenCount"))
    return Usage(
        input_tokens=_n(raw.get("promptTokenCount")) + _n(raw.get("toolUsePromptTokenCount")),
        output_tokens=_n(raw.get("candidatesTokenCount")) + thoughts,
        cache_read_tokens=_n(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def _text_parts(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, list):
        return [{"text": str(p.get("text") or "")} for p in content if isinstance(p, dict) and "text" in p]
    return [{"text": content_text(content)}]


class GeminiProvider(HTTPProvider):
    """Google's Gemini API, native REST (``adapter = "gemini"``)."""

    adapter = "gemini"
    price_provider_id: str | None = "google"
    default_base_url = "https://generativelanguage.googleapis.com/v1beta"
    request_id_header = "x-goog-request-id"
    supports_embeddings = True
    max_embedding_batch: ClassVar[int] = 100  # batchEmbedContents takes at most 100 requests

    def _auth_headers(self) -> dict[str, str]:
        return {"x-goog-api-key": self.api_key} if self.api_key else {}

    def _check_key(self) -> None:
        if not self.api_key:
            env = self.config.api_key_env or "GEMINI_API_KEY (or GOOGLE_API_KEY)"
            raise e.AuthenticationError(f"no API key: set api_key or the environment variable {env}",
                                        provider=self.name)

    def _model_path(self, model: str, method: str) -> str:
        name = model if model.startswith(("models/", "tunedModels/")) else f"models/{model}"
        return f"/{quote(name, safe='/')}:{method}"

    # -- wire in ---------------------------------------------------------------------------------

    def build_body(self, request: Request) -> dict[str, Any]:
        body: dict[str, Any] = {}
        system, contents = self._contents(request.messages)
        body["contents"] = contents
        if system:
            body["systemInstruction"] = {"parts": system}
        config: dict[str, Any] = {}
        if request.temperature is not None:
            config["temperature"] = request.temperature
        if request.max_tokens is not None:
            config["maxOutputTokens"] = request.max_tokens
        extra = dict(request.extra)
        for key, wire in _GENERATION.items():
            if key in extra:
                config[wire] = extra.pop(key)
        if "stop" in extra:
            stop = extra.pop("stop")
            config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
        if "response_format" in extra:
            config.update(self._response_format(extra.pop("response_format")))
        if "tools" in extra:
            body["tools"] = [{"functionDeclarations": [self._declaration(t) for t in extra.pop("tools") or ()]}]
        if "tool_choice" in extra:
            body["toolConfig"] = {"functionCallingConfig": self._tool_choice(extra.pop("tool_choice"))}
        config.update(extra.pop("generationConfig", None) or {})
        for key in _NATIVE:
            if key in extra:
                body[key] = extra.pop(key)
        extra.pop("stream", None)
        extra.pop("stream_options", None)
        for key in _OPENAI_ONLY.intersection(extra):
            logger.debug("provider %r: %s dropped (an OpenAI argument with no Gemini meaning)", self.name, key)
            del extra[key]
        if extra:  # another provider may take it: fall back (no breaker), the error joins AllProvidersFailedError
            raise e.UnsupportedArgumentError(f"adapter 'gemini' does not support the argument {sorted(extra)[0]!r}; "
                                             "pass Gemini fields in generationConfig=...", provider=self.name)
        if config:
            body["generationConfig"] = config
        return body

    def _contents(self, messages: tuple[dict[str, Any], ...]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        system: list[dict[str, Any]] = []
        contents: list[dict[str, Any]] = []
        names: dict[str, str] = {}  # tool_call id -> function name, for the functionResponse parts
        for m in messages:
            role = m.get("role")
            if role in ("system", "developer"):
                system += _text_parts(m.get("content"))
                continue
            if role == "tool":
                try:
                    result = json.loads(m.get("content") or "null")
                except (TypeError, ValueError):
                    result = m.get("content")
                name = m.get("name") or names.get(str(m.get("tool_call_id")), "tool")
                parts = [{"functionResponse": {"name": name, "response": result if isinstance(result, dict)
                                               else {"result": result}}}]
                wire_role = "user"
            else:
                wire_role = "model" if role == "assistant" else "user"
                parts = _text_parts(m.get("content")) if m.get("content") else []
                for call in m.get("tool_calls") or ():
                    fn = call.get("function") or {}
                    names[str(call.get("id"))] = str(fn.get("name"))
                    parts.append({"functionCall": {"name": fn.get("name"),  # checked by llmkit._conversation
                                                   "args": arguments(fn.get("arguments"))}})
            if contents and contents[-1]["role"] == wire_role:
                contents[-1]["parts"].extend(parts)  # Gemini wants turns to alternate: merge neighbours
            else:
                contents.append({"role": wire_role, "parts": parts})
        return system, contents

    @staticmethod
    def _response_format(fmt: Any) -> dict[str, Any]:
        if not isinstance(fmt, dict) or fmt.get("type") == "text":
            return {}
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        schema = (fmt.get("json_schema") or {}).get("schema") if fmt.get("type") == "json_schema" else None
        if isinstance(schema, dict):
            out["responseJsonSchema"] = schema  # JSON Schema as is (responseSchema takes an OpenAPI subset)
        return out

    @staticmethod
    def _declaration(tool: Any) -> dict[str, Any]:
        fn = tool.get("function", tool) if isinstance(tool, dict) else {}
        decl = {"name": fn.get("name"), "description": fn.get("description", "")}
        if fn.get("parameters"):
            decl["parametersJsonSchema"] = fn["parameters"]
        return decl

    @staticmethod
    def _tool_choice(choice: Any) -> dict[str, Any]:
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name")
            return {"mode": "ANY", "allowedFunctionNames": [name]} if name else {"mode": "ANY"}
        return {"mode": {"none": "NONE", "required": "ANY"}.get(str(choice), "AUTO")}

    # -- wire out --------------------------------------------------------------------------------

    def _blocked(self, data: dict[str, Any], resp: httpx.Response, text: str) -> None:
        feedback = data.get("promptFeedback") or {}
        reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if reason:
            raise e.ContentFilterError(f"prompt blocked by Gemini (blockReason {reason})", provider=self.name,
                                       status=resp.status_code, code=str(reason), body=data,
                                       request_id=resp.headers.get(self.request_id_header))
        finish = self._candidate(data).get("finishReason")
        if finish in _BLOCKED and not text:
            raise e.ContentFilterError(f"answer blocked by Gemini (finishReason {finish})", provider=self.name,
                                       status=resp.status_code, code=str(finish), body=data,
                                       request_id=resp.headers.get(self.request_id_header))

    @staticmethod
    def _candidate(data: dict[str, Any]) -> dict[str, Any]:
        candidates = data.get("candidates") or [{}]
        return candidates[0] if isinstance(candidates[0], dict) else {}

    @staticmethod
    def _parts(candidate: dict[str, Any], seen: int = 0) -> tuple[str, list[ToolCall]]:
        """The text (thought parts left out) and function calls of a candidate.

        A call without Gemini's own ``id`` gets ``call_N``, N counting from ``seen`` (the calls already
        taken from earlier chunks of the same stream), so ids stay unique across a stream.
        """
        content = candidate.get("content") or {}
        texts: list[str] = []
        calls: list[ToolCall] = []
        for part in content.get("parts") or () if isinstance(content, dict) else ():
            if not isinstance(part, dict) or part.get("thought"):
                continue
            if isinstance(part.get("text"), str):
                texts.append(part["text"])
            call = part.get("functionCall")
            if isinstance(call, dict):
                calls.append(ToolCall.from_json(call.get("id") or f"call_{seen + len(calls)}", call.get("name"),
                                                call.get("args") or {}))
        return "".join(texts), calls

    @staticmethod
    def _finish(reason: Any, calls: list[ToolCall]) -> str | None:
        if reason is None:
            return None
        if calls and reason == "STOP":
            return "tool_calls"
        return "content_filter" if reason in _BLOCKED else _FINISH.get(str(reason), str(reason).lower())

    def _to_response(self, request: Request, data: Any, resp: httpx.Response) -> Response:
        if not isinstance(data, dict):
            raise e.ProviderConnectionError(f"malformed response: expected a JSON object, got {type(data).__name__}",
                                            provider=self.name, status=resp.status_code)
        if data.get("error") is not None:
            raise self._body_error(data, resp)
        candidate = self._candidate(data)
        text, calls = self._parts(candidate)
        self._blocked(data, resp, text)
        return self.response(
            request, content=text, model=data.get("modelVersion") or request.model,
            finish_reason=self._finish(candidate.get("finishReason"), calls),
            usage=gemini_usage(data.get("usageMetadata")) or estimate_usage(request, text), raw=data,
            tool_calls=calls, rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=data.get("responseId") or resp.headers.get(self.request_id_header),
        )

    def _classify(self, status: int, wire_status: Any, message: str, body: Any) -> type[ProviderError]:
        name = str(wire_status) if wire_status else _BY_HTTP.get(status, "")
        if name == "INVALID_ARGUMENT" and _CONTEXT.search(message):
            return e.ContextWindowExceededError
        if name == "INVALID_ARGUMENT" and ("API_KEY_INVALID" in json.dumps(body) or "API key not valid" in message):
            return e.AuthenticationError
        if name == "RESOURCE_EXHAUSTED" and status == 402:  # prepaid credits used up; a 429 is a rate limit
            return e.QuotaExceededError
        cls = _BY_STATUS.get(name)
        if cls is not None:
            return cls
        if 400 <= status < 500:
            return e.BadRequestError
        return e.ServerError if status >= 500 else ProviderError

    @staticmethod
    def _retry_delay(body: Any) -> float | None:
        """``RetryInfo.retryDelay`` ("37s") from the error's details."""
        err = body.get("error") if isinstance(body, dict) else None
        for detail in (err.get("details") or ()) if isinstance(err, dict) else ():
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                return parse_duration(str(detail.get("retryDelay", "")))
        return None

    def _error_for(self, ctx: ErrorContext) -> ProviderError:
        err = ctx.body.get("error") if isinstance(ctx.body, dict) else None
        err = err if isinstance(err, dict) else {}
        message = str(err.get("message") or ctx.text[:200] or "(empty body)")
        wire_status = err.get("status")
        cls = self._classify(ctx.status, wire_status, message, ctx.body)
        kwargs = self._error_kwargs(ctx, wire_status)
        if kwargs["retry_after"] is None:
            kwargs["retry_after"] = self._retry_delay(ctx.body)
        return cls(f"HTTP {ctx.status}" + (f" {wire_status}" if wire_status else "") + f": {message}", **kwargs)

    def _body_error(self, data: dict[str, Any], resp: httpx.Response) -> ProviderError:
        """An ``{"error": ...}`` payload inside a 2xx answer (a mid-stream error)."""
        found = data.get("error")
        err: dict[str, Any] = found if isinstance(found, dict) else {}
        code = _n(err.get("code")) or 500
        wire_status = err.get("status")
        message = str(err.get("message") or "")
        cls = self._classify(code, wire_status, message, data)
        return cls(f"error in a {resp.status_code} response ({wire_status or code}): {message}",
                   provider=self.name, status=resp.status_code, code=wire_status, body=data,
                   retry_after=self._retry_delay(data), request_id=resp.headers.get(self.request_id_header))

    # -- calls -----------------------------------------------------------------------------------

    async def complete(self, request: Request) -> Response:
        self._check_key()
        body = self.build_body(request)
        data, resp = await self._post_json(self._model_path(request.model, "generateContent"), body,
                                           request.timeout)
        return self._to_response(request, data, resp)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self._check_key()
        body = self.build_body(request)
        state: dict[str, Any] = {}
        parts: list[str] = []
        calls: list[ToolCall] = []
        usage: Any = None
        finish: Any = None
        model: str | None = None
        last: dict[str, Any] = {}
        path = self._model_path(request.model, "streamGenerateContent") + "?alt=sse"
        events = self._stream_events(path, body, request.timeout, state)
        async with aclosing(events):
            async for event in events:
                try:
                    chunk = json.loads(event.data)
                except ValueError:
                    raise e.ProviderConnectionError(f"malformed stream chunk: {event.data[:200]!r}",
                                                    provider=self.name) from None
                if not isinstance(chunk, dict):
                    continue
                if chunk.get("error") is not None:
                    raise self._body_error(chunk, state["response"])
                last = chunk
                usage = chunk.get("usageMetadata") or usage
                model = chunk.get("modelVersion") or model
                candidate = self._candidate(chunk)
                text, new_calls = self._parts(candidate, len(calls))
                calls += new_calls
                finish = candidate.get("finishReason") or finish
                self._blocked(chunk, state["response"], "".join(parts) + text)
                if text:
                    parts.append(text)
                    yield StreamChunk(text=text, raw=chunk)
        resp: httpx.Response = state["response"]
        if finish is None and not last.get("promptFeedback"):
            raise self._stream_ended("a chunk with finishReason")
        content = "".join(parts)
        raw = {**last, "candidates": [{"content": {"role": "model", "parts": [{"text": content}]},
                                       "finishReason": finish}], "usageMetadata": usage}
        final = self.response(
            request, content=content, model=model or request.model, finish_reason=self._finish(finish, calls),
            usage=gemini_usage(usage) or estimate_usage(request, content), raw=raw, tool_calls=calls,
            rate_limit=parse_rate_limit_headers(resp.headers),
            provider_request_id=last.get("responseId") or resp.headers.get(self.request_id_header),
        )
        yield StreamChunk(text="", finish_reason=final.finish_reason, response=final)

    async def embed(self, request: Request) -> EmbeddingResponse:
        self._check_key()
        texts = embedding_input(request)
        name = request.model if request.model.startswith("models/") else f"models/{request.model}"
        extra = dict(request.extra)
        common: dict[str, Any] = {}
        if extra.get("dimensions") is not None:
            common["outputDimensionality"] = extra["dimensions"]
        if extra.get("task_type") is not None:
            common["taskType"] = extra["task_type"]
        body = {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **common} for t in texts]}
        data, resp = await self._post_json(self._model_path(request.model, "batchEmbedContents"), body,
                                           request.timeout)
        items = data.get("embeddings") if isinstance(data, dict) else None
        if not isinstance(items, list) or len(items) != len(texts):
            if isinstance(data, dict) and data.get("error") is not None:
                raise self._body_error(data, resp)
            raise e.ProviderConnectionError("malformed batchEmbedContents response: expected one embedding per "
                                            "input", provider=self.name, status=resp.status_code)
        vectors = [item.get("values") if isinstance(item, dict) else None for item in items]
        if not all(isinstance(v, list) for v in vectors):
            raise e.ProviderConnectionError("malformed batchEmbedContents response: an embedding without values",
                                            provider=self.name, status=resp.status_code)
        meta = data.get("usageMetadata")
        usage = (Usage(input_tokens=_n(meta.get("promptTokenCount") or meta.get("totalTokenCount")))
                 if isinstance(meta, dict) else estimate_embedding_usage(request))
        return self.embedding_response(request, vectors, usage, raw={k: v for k, v in data.items()
                                                                     if k != "embeddings"},
                                       rate_limit=parse_rate_limit_headers(resp.headers),
                                       provider_request_id=resp.headers.get(self.request_id_header))

    async def health_check(self) -> None:
        self._check_key()
        await self._get("/models?pageSize=1")
