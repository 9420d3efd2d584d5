"""A fake Azure OpenAI resource for ``llmkit.testing``: OpenAI's wire format behind Azure's routes,
headers and error bodies.

Routes: ``/openai/deployments/{deployment}/chat/completions?api-version=...`` (and ``/embeddings``),
``/openai/v1/chat/completions`` (and ``/embeddings``, ``/models``). The key goes in the ``api-key``
header (or ``Authorization: Bearer``). Errors have Azure's shape, ``{"error": {"code": "429",
"message": ...}}`` with ``retry-after``/``retry-after-ms`` on 429s, and content-filter 400s carry
``innererror.content_filter_result``.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from . import wire as w
from .http import Action, RecordedRequest
from .servers import FakeOpenAIServer

_DEPLOYMENT = re.compile(r"^/openai/deployments/([^/]+)/(chat/completions|embeddings)$")
_V1 = re.compile(r"^/openai/v1/(chat/completions|embeddings)$")

AZURE_MESSAGES = {
    401: ("401", "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                 "valid key for an active subscription and use a correct regional API endpoint for your resource."),
    404: ("DeploymentNotFound", "The API deployment for this resource does not exist. If you created the "
                                "deployment within the last 5 minutes, please wait a moment and try again."),
    429: ("429", "Requests to the ChatCompletions_Create Operation under Azure OpenAI API version {version} have "
                 "exceeded token rate limit of your current OpenAI S0 pricing tier. Please retry after 1 second."),
    500: ("InternalServerError", "The server had an error while processing your request."),
    503: ("ServiceUnavailable", "The service is temporarily unable to process your request."),
}
_FILTER = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
           "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": True, "severity": "high"}}


class FakeAzureOpenAIServer(FakeOpenAIServer):
    """A fake Azure OpenAI resource; ``url`` is the resource endpoint (configure it as ``base_url``).

    ``deployments`` (optional): the deployment names that exist (others get 404 DeploymentNotFound).
    ``enqueue_error(400, code="content_filter")`` sends a prompt blocked by the content filter;
    ``enqueue(reply="", finish_reason="content_filter")`` an answer cut by it.
    """

    def __init__(self, *, deployments: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(flavor="openai", **kwargs)
        self.deployments = set(deployments) if deployments is not None else None
        self.error_indent = None

    @property
    def url(self) -> str:
        return self.base

    def is_completion(self, path: str) -> bool:
        m = _DEPLOYMENT.match(path) or _V1.match(path)
        return m is not None and path.endswith("/chat/completions")

    def _headers(self, request: RecordedRequest) -> dict[str, str]:
        headers = super()._headers(request)
        headers.pop("x-request-id", None)
        headers["apim-request-id"] = f"fake-{self._new_id():08d}"
        return headers

    def _rate_headers(self) -> dict[str, str]:
        r = self._rate or {}
        return {"x-ratelimit-limit-requests": str(r["limit_requests"]),
                "x-ratelimit-remaining-requests": str(r["remaining_requests"]),
                "x-ratelimit-limit-tokens": str(r["limit_tokens"]),
                "x-ratelimit-remaining-tokens": str(r["remaining_tokens"])}

    def _version(self, request: RecordedRequest) -> str | None:
        m = re.search(r"(?:^|&)api-version=([^&]+)", request.query)
        return m.group(1) if m else None

    def _check(self, request: RecordedRequest) -> Action | None:
        if self.api_key is not None:
            sent = request.headers.get("api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if sent != self.api_key:
                return Action("error", status=401)
        m = _DEPLOYMENT.match(request.path)
        if m is not None:
            if self._version(request) is None:
                return Action("error", status=404, error={"code": "404", "message": "Resource not found"})
            if self.deployments is not None and m.group(1) not in self.deployments:
                return Action("error", status=404)
        if not isinstance(request.json, dict) or "model" not in request.json:
            return Action("error", status=400, error={"code": "BadRequest", "message": "model is required"})
        return None

    def _error_body(self, request: RecordedRequest, action: Action) -> Any:
        e = action.error
        if e.get("code") == "content_filter":
            return {"error": {"message": e.get("message") or "The response was filtered due to the prompt "
                              "triggering Azure OpenAI's content management policy.", "type": None,
                              "param": "prompt", "code": "content_filter", "status": 400,
                              "innererror": {"code": "ResponsibleAIPolicyViolation",
                                             "content_filter_result": _FILTER}}}
        code, message = AZURE_MESSAGES.get(action.status, (str(action.status), f"HTTP {action.status}"))
        text = (e.get("message") or message).replace("{version}", self._version(request) or "v1")
        return {"error": {"code": e.get("code") or code, "message": text}}

    async def handle(self, request: RecordedRequest, action: Action | None, writer: asyncio.StreamWriter) -> bool:
        if action is not None and action.kind == "error" and action.status == 429:
            seconds = float(action.headers.setdefault("retry-after", "1"))
            action.headers.setdefault("retry-after-ms", f"{seconds * 1000:g}")  # Azure sends both
        return await super().handle(request, action, writer)

    def _reply_body(self, request: RecordedRequest, action: Action) -> dict[str, Any]:
        body = super()._reply_body(request, action)
        body["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": {
            k: {"filtered": False, "severity": "safe"} for k in _FILTER}}]
        return body

    def _route(self, request: RecordedRequest, writer: asyncio.StreamWriter) -> bool:
        headers = self._headers(request)
        if (_DEPLOYMENT.match(request.path) or _V1.match(request.path)) and request.path.endswith("/embeddings"):
            problem = self._check(request) if request.method == "POST" else None
            if problem is not None:
                self.send_json(writer, problem.status, headers, self._error_body(request, problem))
                return True
            body = request.json if isinstance(request.json, dict) else {}
            dims = int(body.get("dimensions") or self.embedding_dimensions)
            self.send_json(writer, 200, headers, w.openai_embeddings(body, dims, str(body.get("model") or "")))
        elif request.path in ("/openai/v1/models", "/openai/models"):
            self.send_json(writer, 200, headers, {"object": "list", "data": [{"id": self.model or "gpt-4o",
                                                                             "object": "model"}]})
        else:
            self.send_json(writer, 404, headers, {"error": {"code": "404", "message": "Resource not found"}})
        return True
