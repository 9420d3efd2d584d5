"""The provider interface: one abstract coroutine, ``complete``; optional ``stream`` and ``health_check``.

An adapter translates a ``Request`` into its wire format, makes one HTTP call and translates the
answer (or the error) back. It does no retries, fallback or rate limiting: the router does.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, ClassVar

from .._errors import ConfigError
from .._types import EmbeddingResponse, Request, Response, StreamChunk, Usage

if TYPE_CHECKING:
    from .._config import ProviderConfig


def estimate_tokens(text: str) -> int:
    """A cheap token estimate (about four characters a token) for when a server sends no usage."""
    return max(1, math.ceil(len(text) / 4)) if text else 0


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens(request: Request) -> int:
    """Estimated prompt tokens of a request (about four characters a token, plus a few per message;
    for an embedding request, which has no messages, its input texts)."""
    if not request.messages:
        return sum(estimate_tokens(t) for t in embedding_input(request))
    total = 0
    for m in request.messages:
        total += estimate_tokens(content_text(m.get("content"))) + 4
    return total


def embedding_input(request: Request) -> list[str]:
    """The texts of an embedding request (``request.extra["input"]``)."""
    texts = request.extra.get("input", ())
    return [texts] if isinstance(texts, str) else list(texts)


def estimate_embedding_usage(request: Request) -> Usage:
    return Usage(input_tokens=prompt_tokens(request), estimated=True)


def estimate_usage(request: Request, output_text: str) -> Usage:
    prompt = prompt_tokens(request)
    return Usage(input_tokens=prompt, output_tokens=estimate_tokens(output_text), estimated=True)


class Provider(ABC):
    """Base class of every adapter. Subclasses set ``adapter`` and implement ``complete``."""

    adapter: ClassVar[str] = "custom"
    #: Whether ``embed`` is implemented; the most inputs one embedding request may carry.
    supports_embeddings: ClassVar[bool] = False
    max_embedding_batch: ClassVar[int] = 2048
    #: Name genai-prices knows this provider by ("openai", "anthropic"); None for local/unpriced.
    price_provider_id: str | None = None

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abstractmethod
    async def complete(self, request: Request) -> Response:
        """Send ``request`` (``request.model`` is the model to ask for) and return the reply."""

    def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        """Yield text chunks; the last chunk carries the final ``Response`` (usage included)."""
        raise ConfigError(f"adapter {self.adapter!r} (provider {self.name!r}) does not support streaming")

    async def embed(self, request: Request) -> EmbeddingResponse:
        """Embed ``request.extra["input"]`` with ``request.model``; ``vectors`` is a list of float lists."""
        raise ConfigError(f"adapter {self.adapter!r} (provider {self.name!r}) does not support embeddings")

    def embedding_response(self, request: Request, vectors: Any, usage: Usage, **fields: Any) -> EmbeddingResponse:
        fields.setdefault("model", request.model)
        return EmbeddingResponse(id=request.id, provider=self.name, vectors=vectors, usage=usage,
                                 requested_model=request.model, **fields)

    async def health_check(self) -> None:
        """Raise a ``ProviderError`` if the provider is not reachable. The default checks nothing."""

    def prepare(self) -> None:
        """Called once on the client's event loop when the client starts: set up what the first call needs."""

    async def aclose(self) -> None:
        """Release connections."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} adapter={self.adapter!r}>"

    def response(self, request: Request, **fields: Any) -> Response:
        """A ``Response`` for ``request`` from this provider (the router fills in cost, attempts, latency)."""
        fields.setdefault("model", request.model)
        return Response(id=request.id, provider=self.name, requested_model=request.model, **fields)
