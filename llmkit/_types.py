"""Plain data: the request, the response, token usage, attempts, stream chunks. No I/O here."""

from __future__ import annotations

import html
import itertools
import json
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


def _new_prefix_in_child() -> None:
    """A forked child continues the parent's counter: give it a prefix of its own (its pid)."""
    global _ID_PREFIX
    _ID_PREFIX = f"req-{os.getpid():x}-{int(time.time() * 1000) % 0xFFFFFFFF:x}-"


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_prefix_in_child)


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
    # structured output (llmkit.structured): the pydantic class the answer is validated into (its JSON schema
    # is in ``extra["response_format"]``), and how often a failed validation is asked again (None: the config's)
    response_model: Any = field(default=None, repr=False, compare=False)
    max_validation_retries: int | None = field(default=None, repr=False, compare=False)
    cache: bool | str | None = None  # the call's cache=True | False | "refresh"; None: the client's default
    #: Wait for an open breaker's probe or a server pause (within the timeout) instead of failing (``map``).
    wait_for_breaker: bool = False


@dataclass(slots=True)
class ToolCall:
    """A tool (function) the model asked to call: ``arguments`` parsed from the wire's JSON string.

    ``raw_arguments`` keeps the string as sent; when it is not a JSON object, ``arguments`` is ``{}`` and
    ``error`` says why (the call is then asked again, see ``llmkit.structured``).
    """

    id: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    raw_arguments: str = field(default="", repr=False, compare=False)
    error: str | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_json(cls, id: Any, name: Any, raw: Any) -> ToolCall:
        """A call from the wire: ``raw`` a JSON string (OpenAI) or an already-decoded object (Anthropic)."""
        text = raw if isinstance(raw, str) else json.dumps(raw if raw is not None else {})
        try:
            args = json.loads(text) if text.strip() else {}
        except ValueError as exc:
            return cls(str(id or ""), str(name or ""), {}, text, f"arguments are not valid JSON ({exc})")
        if not isinstance(args, dict):
            return cls(str(id or ""), str(name or ""), {}, text,
                       f"arguments are not a JSON object (got {type(args).__name__})")
        return cls(str(id or ""), str(name or ""), args, text)

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI wire shape, for an assistant message that replays this call."""
        args = self.raw_arguments or json.dumps(self.arguments)
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": args}}


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
    tool_calls: list[ToolCall] = field(default_factory=list)
    rate_limit: RateLimitInfo | None = field(default=None, repr=False)
    provider_request_id: str | None = field(default=None, repr=False)
    cached: bool = False  # answered from the response cache (cost_usd is then 0.0)
    parsed: Any = None  # the validated answer of a response_model (an instance) or a JSON-schema response_format

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


@dataclass(slots=True)
class EmbeddingResponse:
    """A finished embedding call: one vector per input, in input order.

    ``vectors`` is a float32 numpy array of shape ``(len(input), dimensions)`` once the client hands
    it back (adapters fill it with lists of floats; numpy is imported only by ``llmkit.embeddings``).
    ``cost_usd`` is None when the model's price is unknown.
    """

    id: str
    provider: str
    model: str
    vectors: Any
    usage: Usage = field(default_factory=Usage)
    cost_usd: float | None = None
    latency_s: float = 0.0
    attempts: list[Attempt] = field(default_factory=list)
    raw: Any = field(default=None, repr=False)
    requested_model: str | None = None
    rate_limit: RateLimitInfo | None = field(default=None, repr=False)
    provider_request_id: str | None = field(default=None, repr=False)
    cached: bool = False

    @property
    def dimensions(self) -> int:
        """The length of each vector (0 when there are none)."""
        shape = getattr(self.vectors, "shape", None)
        if shape is not None:
            return int(shape[1]) if len(shape) == 2 else 0
        return len(self.vectors[0]) if len(self.vectors) else 0

    @property
    def fallback(self) -> bool:
        return bool(self.attempts) and (
            self.attempts[0].provider != self.provider or self.attempts[0].model != self.model
        )
