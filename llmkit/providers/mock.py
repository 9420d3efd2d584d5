"""The mock adapter: in-process, deterministic (seeded), scriptable. Every offline tutorial runs on it.

Options (``ProviderConfig.options``):

- ``replies``: a list of strings used in turn, or a dict mapping a prompt (the last user message) to a
  reply; otherwise the reply echoes the prompt.
- ``latency``: seconds per call (a number, or ``[low, high]`` drawn from the seeded generator).
- ``failure_rate``: probability (0..1) that a call fails; ``failure_kinds``: the kinds it picks from
  (``server``, ``overloaded``, ``rate_limit``, ``timeout``, ``connection``, ``auth``, ``quota``,
  ``bad_request``, ``context_window``, ``not_found``), default ``["server"]``.
- ``cached_ratio``: the share of prompt tokens reported as cache reads; ``seed``: the generator's seed.
- ``price_as``: price the mock's usage as this provider would (``"openai"``, ``"anthropic"``), so costs
  look real in a simulation; by default the mock is unpriced (``cost_usd`` None) unless ``pricing`` is set.
- ``embedding_dimensions``: the length of the mock's embedding vectors (default 256). Embeddings are
  deterministic and unit-norm: words (and word pairs) are hashed into signed buckets, so the same text
  always gets the same vector and texts that share words point the same way.

At run time, ``set_down(True)`` simulates an outage and ``fail_next(n, kind)`` scripts failures.

Structured output and tools (``llmkit.structured``): a json_schema ``response_format`` (or
``response_model``) is answered with a value generated from the schema, and ``tools`` with a call of the
chosen tool with generated arguments (``mock_schema``), both seeded by ``seed`` and the request's content,
so the same request always gets the same answer. The entry's ``reply`` field, a callable taking the
``Request`` and returning text, a dict (sent as JSON) or a list of ``ToolCall``, answers instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import math
import random
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

from .. import _errors as e
from .. import structured
from .._config import ProviderConfig
from .._errors import ConfigError, ProviderError
from .._types import EmbeddingResponse, Request, Response, StreamChunk, ToolCall, Usage
from .base import Provider, embedding_input, estimate_tokens
from .base import prompt_tokens as base_prompt_tokens
from .mock_schema import instance

_FAILURES: dict[str, Callable[[str], ProviderError]] = {
    "server": lambda p: e.ServerError("mock: internal server error", provider=p, status=500),
    "overloaded": lambda p: e.OverloadedError("mock: overloaded", provider=p, status=529, code="overloaded_error"),
    "rate_limit": lambda p: e.RateLimitError("mock: rate limited", provider=p, status=429, retry_after=1.0),
    "timeout": lambda p: e.ProviderTimeoutError("mock: timed out", provider=p),
    "connection": lambda p: e.ProviderConnectionError("mock: connection refused", provider=p),
    "auth": lambda p: e.AuthenticationError("mock: invalid api key", provider=p, status=401),
    "quota": lambda p: e.QuotaExceededError("mock: quota exceeded", provider=p, status=429,
                                            code="insufficient_quota"),
    "bad_request": lambda p: e.BadRequestError("mock: invalid request", provider=p, status=400),
    "context_window": lambda p: e.ContextWindowExceededError(
        "mock: context length exceeded", provider=p, status=400, code="context_length_exceeded"),
    "not_found": lambda p: e.NotFoundError("mock: model not found", provider=p, status=404, code="model_not_found"),
}
FAILURE_KINDS = tuple(_FAILURES)


class MockProvider(Provider):
    adapter = "mock"
    price_provider_id = None

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        opts = dict(config.options)
        known = {"replies", "latency", "failure_rate", "failure_kinds", "cached_ratio", "seed", "chunk_words",
                 "price_as", "embedding_dimensions"}
        unknown = set(opts) - known
        if unknown:
            raise ConfigError(f"provider {config.name!r}: unknown mock option {sorted(unknown)[0]!r}; "
                              f"expected one of {sorted(known)}")
        self._seed = opts.get("seed", 0)
        self._rng = random.Random(self._seed)
        self._replies = opts.get("replies")
        self._reply_index = 0
        latency = opts.get("latency", 0.0)
        if isinstance(latency, (int, float)):
            latency = (float(latency), float(latency))
        self.latency: tuple[float, float] = (float(latency[0]), float(latency[1]))
        self.failure_rate = float(opts.get("failure_rate", 0.0))
        if not 0.0 <= self.failure_rate <= 1.0:
            raise ConfigError(f"provider {config.name!r}: option 'failure_rate': expected 0..1")
        kinds = list(opts.get("failure_kinds", ["server"]))
        for kind in kinds:
            if kind not in _FAILURES:
                raise ConfigError(f"provider {config.name!r}: option 'failure_kinds': unknown kind {kind!r}; "
                                  f"expected some of {list(FAILURE_KINDS)}")
        self.failure_kinds = kinds
        self.cached_ratio = float(opts.get("cached_ratio", 0.0))
        self.chunk_words = int(opts.get("chunk_words", 1))
        price_as = opts.get("price_as")
        if price_as is not None and not isinstance(price_as, str):
            raise ConfigError(f"provider {config.name!r}: option 'price_as': expected a provider id like 'openai'")
        self.price_provider_id = price_as
        dims = opts.get("embedding_dimensions", 256)
        if not isinstance(dims, int) or isinstance(dims, bool) or dims < 2:
            raise ConfigError(f"provider {config.name!r}: option 'embedding_dimensions': expected an integer >= 2")
        self.embedding_dimensions = dims
        self.down = False
        self.calls = 0
        self._scripted: deque[str] = deque()

    # -- run-time controls ---------------------------------------------------------------------

    def set_down(self, down: bool = True) -> None:
        """Simulate an outage: every call (and health check) fails with a connection error."""
        self.down = down

    def fail_next(self, n: int = 1, kind: str = "server") -> None:
        """Make the next ``n`` calls fail with ``kind``."""
        if kind not in _FAILURES:
            raise ValueError(f"unknown failure kind {kind!r}; expected one of {list(FAILURE_KINDS)}")
        self._scripted.extend([kind] * n)

    # -- the adapter ---------------------------------------------------------------------------

    def _maybe_fail(self) -> None:
        if self.down:
            raise _FAILURES["connection"](self.name)
        if self._scripted:
            raise _FAILURES[self._scripted.popleft()](self.name)
        if self.failure_rate and self._rng.random() < self.failure_rate:
            raise _FAILURES[self._rng.choice(self.failure_kinds)](self.name)

    def _reply_for(self, request: Request) -> str:
        prompt = _prompt(request)
        replies = self._replies
        if isinstance(replies, dict):
            if prompt in replies:
                return str(replies[prompt])
        elif replies:
            reply = str(replies[self._reply_index % len(replies)])
            self._reply_index += 1
            return reply
        return f"Mock reply to: {prompt[:200]}"

    def _answer(self, request: Request) -> tuple[str, list[ToolCall]]:
        """The reply text and tool calls: the entry's ``reply`` callable, else scripted ``replies``, else a
        call of the chosen tool or a value generated from the schema (seeded by the request), else an echo."""
        if self.config.reply is not None:
            return _from_callable(self.config.reply(request))
        if self._replies and (not isinstance(self._replies, dict) or _prompt(request) in self._replies):
            return self._reply_for(request), []
        if request.extra:  # (no extra arguments: no tools and no response format)
            asked = self._asked_shape(request)
            if asked is not None:
                return asked
        if request.messages and request.messages[-1].get("role") == "tool":
            results = [str(m.get("content") or "") for m in request.messages if m.get("role") == "tool"]
            return f"Mock answer from {len(results)} tool result(s): {'; '.join(results)[:200]}", []
        return self._reply_for(request), []

    def _asked_shape(self, request: Request) -> tuple[str, list[ToolCall]] | None:
        """A call of the chosen tool, or a value generated from the schema (a JSON object for json_object)."""
        extra = request.extra
        if extra.get("tools"):  # the generator is built only when a tool call or a schema needs it
            calls = _tool_calls(request, self._request_rng(request))
            if calls:
                return "", calls
        named = structured.output_schema(extra.get("response_format")) if "response_format" in extra else None
        if named is not None:
            return json.dumps(instance(named[1], self._request_rng(request)), ensure_ascii=False), []
        fmt = extra.get("response_format")
        if isinstance(fmt, dict) and fmt.get("type") == "json_object":
            return json.dumps({"answer": self._reply_for(request)}), []
        return None

    def _request_rng(self, request: Request) -> random.Random:
        """A generator seeded by the mock's seed and the request's content: the same request gets the same
        answer, whatever ran before it (concurrent batches, retries of other requests)."""
        key = json.dumps([request.model, request.messages, request.extra.get("response_format"),
                          request.extra.get("tools"), request.extra.get("tool_choice")], sort_keys=True, default=str)
        return random.Random(f"{self._seed}|{hashlib.sha256(key.encode()).hexdigest()}")

    def _usage(self, request: Request, reply: str, calls: list[ToolCall] | None = None) -> Usage:
        prompt_tokens = base_prompt_tokens(request)
        out = estimate_tokens(reply)
        if calls:
            out += sum(estimate_tokens(c.raw_arguments) + 4 for c in calls)
        if request.max_tokens is not None:
            out = min(out, request.max_tokens)
        return Usage(input_tokens=prompt_tokens, output_tokens=out,
                     cache_read_tokens=int(prompt_tokens * self.cached_ratio))

    async def _wait(self) -> None:
        low, high = self.latency
        delay = low if low == high else self._rng.uniform(low, high)
        if delay > 0:
            await asyncio.sleep(delay)

    async def complete(self, request: Request) -> Response:
        self.calls += 1
        low, high = self.latency
        if low != high or low > 0:  # (no latency: no wait, and the generator is not drawn from)
            await self._wait()
        self._maybe_fail()
        reply, calls = self._answer(request)
        raw: dict[str, Any] = {"mock": True, "content": reply}
        if calls:
            raw["tool_calls"] = [c.to_openai() for c in calls]
        return self.response(request, content=reply, finish_reason="tool_calls" if calls else "stop",
                             usage=self._usage(request, reply, calls), raw=raw, tool_calls=calls)

    async def stream(self, request: Request) -> AsyncIterator[StreamChunk]:
        self.calls += 1
        await self._wait()
        self._maybe_fail()
        reply, calls = self._answer(request)
        words = reply.split(" ") if reply else []
        step = max(1, self.chunk_words)
        for i in range(0, len(words), step):
            piece = " ".join(words[i:i + step])
            yield StreamChunk(text=piece if i == 0 else " " + piece)
            await asyncio.sleep(0)
        finish = "tool_calls" if calls else "stop"
        raw: dict[str, Any] = {"mock": True, "content": reply}
        if calls:
            raw["tool_calls"] = [c.to_openai() for c in calls]
        final = self.response(request, content=reply, finish_reason=finish,
                              usage=self._usage(request, reply, calls), raw=raw, tool_calls=calls)
        yield StreamChunk(text="", finish_reason=finish, response=final)

    supports_embeddings = True

    async def embed(self, request: Request) -> EmbeddingResponse:
        self.calls += 1
        await self._wait()
        self._maybe_fail()
        texts = embedding_input(request)
        dims = request.extra.get("dimensions") or self.embedding_dimensions
        vectors = [mock_embedding(text, int(dims)) for text in texts]
        usage = Usage(input_tokens=sum(estimate_tokens(t) for t in texts))
        return self.embedding_response(request, vectors, usage, raw={"mock": True})

    async def health_check(self) -> None:
        if self.down:
            raise _FAILURES["connection"](self.name)


def _prompt(request: Request) -> str:
    """The last user message's content (as text), or ""."""
    for m in reversed(request.messages):
        if m.get("role") == "user":
            return str(m.get("content") or "")
    return ""


def _tool_calls(request: Request, rng: random.Random) -> list[ToolCall]:
    """A call of the chosen tool (``tool_choice`` named, else one drawn from ``tools``) with arguments generated
    from its parameters; none for ``tool_choice="none"``, or for ``"auto"`` once tool results came back."""
    tools = [t for t in request.extra.get("tools") or () if t.get("type") == "function"]
    choice = request.extra.get("tool_choice", "auto")
    if not tools or choice == "none":
        return []
    if choice == "auto" and request.messages and request.messages[-1].get("role") == "tool":
        return []  # the results are in: answer in text, as a model would
    named = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    tool = next((t for t in tools if t["function"].get("name") == named), None) or rng.choice(tools)
    params = tool["function"].get("parameters") or {"type": "object", "properties": {}}
    args = json.dumps(instance(params, rng), ensure_ascii=False)
    return [ToolCall.from_json(f"call_mock_{rng.getrandbits(48):012x}", tool["function"]["name"], args)]


def _from_callable(result: Any) -> tuple[str, list[ToolCall]]:
    """What a mock entry's ``reply`` callable returned: text, a dict (sent as JSON), a pydantic instance, or a
    list of ``ToolCall`` (or ``{"name", "arguments"}`` dicts)."""
    if isinstance(result, str):
        return result, []
    if isinstance(result, dict):
        return json.dumps(result, ensure_ascii=False), []
    if hasattr(result, "model_dump_json"):
        return str(result.model_dump_json()), []
    if isinstance(result, (list, tuple)) and all(isinstance(c, (ToolCall, dict)) for c in result):
        calls = []
        for i, c in enumerate(result):
            if isinstance(c, dict):
                fn: dict[str, Any] = c["function"] if isinstance(c.get("function"), dict) else c
                c = ToolCall.from_json(c.get("id") or f"call_mock_{i}", fn.get("name"), fn.get("arguments", {}))
            calls.append(c)
        return "", calls
    raise TypeError(f"the mock's reply callable returned {type(result).__name__}; expected str, dict, "
                    "a pydantic instance or a list of llmkit.ToolCall")
_WORD = re.compile(r"\w+")


def mock_embedding(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for ``text``: its words and word pairs hashed into ``dims`` signed buckets."""
    words = _WORD.findall(text.lower())
    features = words + [f"{a} {b}" for a, b in itertools.pairwise(words)] or [text or "<empty>"]
    vector = [0.0] * dims
    for feature in features:
        digest = hashlib.blake2b(feature.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        bucket = int.from_bytes(digest[:4], "little") % dims
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:  # the hashed features cancelled out: fall back to one bucket
        vector[int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=4).digest(),
                              "little") % dims] = 1.0
        return vector
    return [v / norm for v in vector]
