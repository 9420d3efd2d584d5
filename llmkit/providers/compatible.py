"""The adapter for OpenAI-compatible servers: Ollama, vLLM, llama.cpp's ``llama-server``, LM Studio.

It is the OpenAI adapter with the local servers' differences (see wire-formats.md section 4):
``max_tokens`` instead of ``max_completion_tokens`` (Ollama ignores the latter), no key required (a
Bearer header only when one is configured), usage optional (estimated when absent, with
``estimated=True``), integer ``error.code`` and vLLM's top-level ``{"object": "error"}`` bodies.

Options (``ProviderConfig.options``):

- ``health_path``: what ``health_check`` GETs, e.g. ``"/health"`` (vLLM, llama.cpp) or ``"/"`` (Ollama).
  A path starting with ``/`` is taken from the server's root; otherwise it is relative to ``base_url``.
  Default: ``{base_url}/models``.
- ``include_usage``: send ``stream_options.include_usage`` when streaming (default True).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .._config import DEFAULT_BASE_URLS
from .._types import Request
from .openai import OpenAIProvider


class OpenAICompatibleProvider(OpenAIProvider):
    """A local or self-hosted OpenAI-compatible server (``adapter = "openai_compatible"``)."""

    adapter = "openai_compatible"
    price_provider_id: str | None = None
    default_base_url = DEFAULT_BASE_URLS["openai_compatible"]
    max_tokens_field = "max_tokens"
    requires_key = False
    known_options = frozenset({"health_path", "include_usage"})

    def build_body(self, request: Request, stream: bool = False) -> dict[str, Any]:
        body = super().build_body(request, stream)
        if stream and not self.config.options.get("include_usage", True) and "stream_options" not in request.extra:
            body.pop("stream_options", None)
        return body

    def health_url(self) -> str:
        path = self.config.options.get("health_path")
        if not path:
            return f"{self.base_url}/models"
        path = str(path)
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/"):
            parts = urlsplit(self.base_url)
            return f"{parts.scheme}://{parts.netloc}{path}"
        return f"{self.base_url}/{path}"

    async def health_check(self) -> None:
        await self._get(self.health_url())
