"""Plain data: the request, the response, token usage, attempts, stream chunks. No I/O here."""

from __future__ import annotations

import html
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

ROLES = frozenset({"system", "user", "assistant", "developer", "tool"})

Outcome = Literal["ok", "error", "skipped"]

_ids = itertools.count(1)
_ID_PREFIX = f"req-{os.getpid():x}-{int(time.time() * 1000) % 0xFFFFFFFF:x}-"


def new_session_id() -> str:
    """A globally unique id for one Client's session (sortable by start time: hex seconds first)."""
    import os
    import time

    return f"{int(time.time()):08x}-{os.urandom(6).hex()}"


def new_request_id() -> str:
    """A process-unique, sortable-enough request id (cheap: no uuid4 entropy needed)."""
    return f"{_ID_PREFIX}{next(_ids)}"


@dataclass(slots=True)
class Usage:
    """Token counts, normalised across providers.

    ``input_tokens`` counts *all* prompt tokens, cached reads and cache writes included
    (OpenAI's ``prompt_tokens`` already does; adapters add Anthropic's cache fields in).
    ``output_tokens`` includes reasoning tokens. ``estimated`` is True when the server sent
    no usage and the counts were estimated from text length. ``suspect`` is True when the server sent
    a count that cannot be real (negative, not an integer, or above 2**53) and it was clamped.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False
    suspect: bool = False

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(slots=True)
class RateLimitInfo:
    """What a provider's response headers said about its rate limits (seconds, not dates)."""

    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None
    retry_after_s: float | None = None

    def pause_s(self) -> float | None:
        """How long the provider asked us to wait: retry-after, or a reset when nothing remains."""
        waits = []
        if self.retry_after_s is not None:
            waits.append(self.retry_after_s)
        if self.remaining_requests == 0 and self.reset_requests_s is not None:
            waits.append(self.reset_requests_s)
        if self.remaining_tokens == 0 and self.reset_tokens_s is not None:
            waits.append(self.reset_tokens_s)
        return max(waits) if waits else None


@dataclass(frozen=True, slots=True)
class Request:
    """One validated call, in the OpenAI message shape. Adapters translate from this."""

    model: str
    messages: tuple[dict[str, Any], ...]
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None
    priority: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    provider: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_request_id)
    #: Wait for an open breaker's probe or a server pause (within the timeout) instead of failing (``map``).
    wait_for_breaker: bool = False


@dataclass(slots=True)
class Attempt:
    """One thing the router tried: a provider and model, and how it ended."""

    provider: str
    model: str
    outcome: Outcome
    error: str | None = None
    error_message: str | None = None
    duration_s: float = 0.0
    retry: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "model": self.model,
            "outcome": self.outcome,
            "error": self.error,
            "error_message": self.error_message,
            "duration_s": self.duration_s,
            "retry": self.retry,
        }


@dataclass(slots=True)
class Response:
    """A finished completion. ``cost_usd`` is None when the model's price is unknown."""

    id: str
    content: str
    provider: str
    model: str
    finish_reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    raw: Any = None
    requested_model: str | None = None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    rate_limit: RateLimitInfo | None = field(default=None, repr=False)
    provider_request_id: str | None = field(default=None, repr=False)
    cached: bool = False  # answered from the response cache (cost_usd is then 0.0)

    @property
    def fallback(self) -> bool:
        """True when a provider other than the first one tried served the request."""
        return bool(self.attempts) and (
            self.attempts[0].provider != self.provider or self.attempts[0].model != self.model
        )

    def __str__(self) -> str:
        return self.content

    def _repr_html_(self) -> str:
        cost = "unpriced" if self.cost_usd is None else f"${self.cost_usd:.6f}"
        u = self.usage
        tried = " → ".join(f"{a.provider}/{a.model}: {a.outcome}" for a in self.attempts) or "-"
        rows = [
            ("provider", f"{self.provider} / {self.model}"),
            ("tokens", f"{u.input_tokens} in ({u.cache_read_tokens} cached) · {u.output_tokens} out"),
            ("cost", cost),
            ("latency", f"{self.latency_s * 1000:.1f} ms"),
            ("finish", str(self.finish_reason)),
            ("attempts", tried),
        ]
        body = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td style='text-align:left'>{html.escape(v)}</td></tr>"
            for k, v in rows
        )
        return (
            f"<div><pre style='white-space:pre-wrap'>{html.escape(self.content)}</pre>"
            f"<table>{body}</table></div>"
        )


@dataclass(slots=True)
class StreamChunk:
    """A piece of a streamed reply. The last chunk of a stream carries the final ``response``."""

    text: str = ""
    finish_reason: str | None = None
    response: Response | None = None
    raw: Any = field(default=None, repr=False)
