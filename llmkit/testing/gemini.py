"""A fake of Google's Gemini API (native Generative Language REST) for ``llmkit.testing``.

``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent?alt=sse`` and
``:batchEmbedContents``; ``GET /v1beta/models``. Shapes as the public API reference gives them:
``candidates[].content.parts[]``, ``usageMetadata``, ``promptFeedback``, and errors as
``{"error": {"code", "message", "status", "details"}}``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from . import wire as w
from .base import FakeLLMServer
from .http import Action, RecordedRequest

_PATH = re.compile(r"^/v1beta/(?:models|tunedModels)/([^:/]+):"
                   r"(generateContent|streamGenerateContent|batchEmbedContents)$")

#: HTTP status -> (status name, default message), as the Gemini API sends them.
GEMINI_ERRORS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "Request had invalid authentication credentials."),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "models/{model} is not found for API version v1beta, or is not supported for "
                       "generateContent."),
    429: ("RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details."),
    500: ("INTERNAL", "An internal error has occurred. Please retry or report in "
                      "https://developers.generativeai.google/guide/troubleshooting"),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete."),
}


def gemini_error(status: int, *, wire_status: str | None = None, message: str | None = None,
                 details: Any = None, model: str = "") -> dict[str, Any]:
    name, text = GEMINI_ERRORS.get(status, ("UNKNOWN", f"HTTP {status}"))
    error: dict[str, Any] = {"code": status, "message": (message or text).replace("{model}", model),
                             "status": wire_status or name}
    if details is not None:
        error["details"] = details
    return {"error": error}


def _prompt_tokens(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    total = 0
    for content in [*(body.get("contents") or ()), body.get("systemInstruction") or {}]:
        parts = content.get("parts") if isinstance(content, dict) else None
        total += sum(w.estimate(str(p.get("text") or "")) for p in parts or () if isinstance(p, dict)) + 4
    return total


class FakeGeminiServer(FakeLLMServer):
    """A fake Gemini API; ``url`` ends in ``/v1beta``.

    ``api_key`` (optional): a wrong ``x-goog-api-key`` gets the real 400 ``INVALID_ARGUMENT`` /
    ``API_KEY_INVALID``, a missing one 403 ``PERMISSION_DENIED``. ``thoughts_tokens`` adds thinking
    tokens to usage (and a thought part the client must not show). ``enqueue(finish_reason="SAFETY")``
    sends a safety stop; ``enqueue_blocked()`` a prompt blocked by ``promptFeedback``. ``details=`` on
    ``enqueue_error`` (e.g. a ``RetryInfo``) goes into the error body; ``code=`` replaces its ``status``.

        >>> with FakeGeminiServer(reply="pong") as server:
        ...     server.url                                  # doctest: +ELLIPSIS
        'http://127.0.0.1:.../v1beta'
    """

    def __init__(self, *, thoughts_tokens: int = 0, embedding_dimensions: int = 32, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.thoughts_tokens = thoughts_tokens
        self.embedding_dimensions = embedding_dimensions

    @property
    def url(self) -> str:
        return f"{self.base}/v1beta"

    def enqueue_blocked(self, reason: str = "SAFETY") -> None:
        """Answer the next call with a 200 whose prompt was blocked (``promptFeedback.blockReason``)."""
        self.enqueue_raw({"promptFeedback": {"blockReason": reason, "safetyRatings": [
            {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH"}]},
            "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}, "modelVersion": "gemini-fake"})

    def is_completion(self, path: str) -> bool:
        m = _PATH.match(path)
        return m is not None and m.group(2) != "batchEmbedContents"

    def _is_stream(self, request: RecordedRequest) -> bool:
        return request.path.endswith(":streamGenerateContent")

    def _model(self, request: RecordedRequest, action: Action) -> str:
        m = _PATH.match(request.path)
        return action.model or self.model or (m.group(1) if m else "gemini-fake")

    def _headers(self, request: RecordedRequest) -> dict[str, str]:
        return {**super()._headers(request), "x-goog-request-id": f"fake{self._new_id():012d}"}

    def _check(self, request: RecordedRequest) -> Action | None:
        if self.api_key is not None:
            key = request.headers.get("x-goog-api-key")
            if not key:
                return Action("error", status=403, error={
                    "message": "Method doesn't allow unregistered callers (callers without established identity). "
                               "Please use API Key or other form of API consumer identity to call this API."})
            if key != self.api_key:
                return Action("error", status=400, error={"message": "API key not valid. Please pass a valid API key.",
                                                          "details": [{"@type": "type.googleapis.com/google.rpc."
                                                                       "ErrorInfo", "reason": "API_KEY_INVALID",
                                                                       "domain": "googleapis.com"}]})
        if not isinstance(request.json, dict) or not request.json.get("contents"):
            return Action("error", status=400, error={"message": "* GenerateContentRequest.contents: contents is "
                                                                 "not specified"})
        return None

    def _error_body(self, request: RecordedRequest, action: Action) -> Any:
        e = action.error
        code = e.get("code")
        return gemini_error(action.status, wire_status=code if isinstance(code, str) else None,
                            message=e.get("message"), details=e.get("details"), model=self._model(request, action))

    def _stream_error_event(self, request: RecordedRequest, action: Action) -> bytes:
        e = action.error
        status = {"RESOURCE_EXHAUSTED": 429, "INVALID_ARGUMENT": 400, "UNAVAILABLE": 503}.get(
            str(e.get("code") or e.get("type")), 500)
        return w.sse(gemini_error(status, message=e.get("message")))

    # -- replies ---------------------------------------------------------------------------------

    def _usage(self, request: RecordedRequest, action: Action, text: str, calls: list[tuple[str, str, str]],
               done: int | None = None) -> dict[str, Any]:
        if action.usage is not None:
            return action.usage
        prompt = _prompt_tokens(request.json)
        out = w.estimate(text) + sum(w.estimate(a) + 4 for _, _, a in calls)
        if done is not None:
            out = done
        usage: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": out,
                                 "totalTokenCount": prompt + out + self.thoughts_tokens,
                                 "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
        cached = min(self.cached_tokens, prompt)
        if cached:
            usage["cachedContentTokenCount"] = cached
        if self.thoughts_tokens:
            usage["thoughtsTokenCount"] = self.thoughts_tokens
        return usage

    def _parts(self, text: str, calls: list[tuple[str, str, str]]) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        if self.thoughts_tokens:
            parts.append({"text": "Thinking about it...", "thought": True})
        if text or not calls:
            parts.append({"text": text})
        parts += [{"functionCall": {"name": n, "args": json.loads(a)}} for _, n, a in calls]
        return parts

    def _reply_body(self, request: RecordedRequest, action: Action) -> dict[str, Any]:
        text = self._text(request, action)
        calls = w.tool_calls(action.tool_calls)
        return {"candidates": [{"content": {"parts": self._parts(text, calls), "role": "model"},
                                "finishReason": action.finish_reason or "STOP", "index": 0}],
                "usageMetadata": self._usage(request, action, text, calls),
                "modelVersion": self._model(request, action), "responseId": f"fake-{self._new_id()}"}

    def _reply_events(self, request: RecordedRequest, action: Action) -> list[bytes]:
        text = self._text(request, action)
        calls = w.tool_calls(action.tool_calls)
        model, rid = self._model(request, action), f"fake-{self._new_id()}"
        pieces = w.pieces(text) or [""]
        events, sent = [], 0
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            sent += w.estimate(piece)
            parts = self._parts(piece, calls if last else []) if (last or i == 0) else [{"text": piece}]
            if i > 0 and self.thoughts_tokens:
                parts = [p for p in parts if not p.get("thought")]
            candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if last:
                candidate["finishReason"] = action.finish_reason or "STOP"
            usage = self._usage(request, action, text, calls, None if last else sent)
            events.append(w.sse({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model,
                                 "responseId": rid}))
        return events

    # -- other routes ----------------------------------------------------------------------------

    def _route(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        headers = self._headers(request)
        m = _PATH.match(request.path)
        if m is not None and m.group(2) == "batchEmbedContents":
            from ..providers.mock import mock_embedding

            if self.api_key is not None and request.headers.get("x-goog-api-key") != self.api_key:
                self.send_json(writer, 400, headers, gemini_error(400, message="API key not valid. Please pass a "
                                                                  "valid API key."))
                return True

            body = request.json if isinstance(request.json, dict) else {}
            embeddings = []
            for item in body.get("requests") or ():
                text = "".join(str(p.get("text") or "") for p in (item.get("content") or {}).get("parts") or ())
                dims = int(item.get("outputDimensionality") or self.embedding_dimensions)
                embeddings.append({"values": mock_embedding(text, dims)})
            self.send_json(writer, 200, headers, {"embeddings": embeddings})
        elif request.path == "/v1beta/models" and request.method == "GET":
            model = self.model or "gemini-fake"
            self.send_json(writer, 200, headers, {"models": [{"name": f"models/{model}", "displayName": model}]})
        else:
            self.send_json(writer, 404, headers, gemini_error(404, message=f"Method not found: {request.path}"))
        return True
