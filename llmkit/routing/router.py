"""Routing: candidates -> fallback -> retries -> one attempt.

The chain reads like httpx's send path, one concern a step:

``route`` walks the candidates (providers serving the model by priority, then the model's fallbacks) and
moves on when a failure is the provider's problem; ``_with_retries`` retries one candidate with tenacity
(exponential backoff with jitter, ``retry-after`` first); ``_attempt`` waits for a concurrency slot and
the rate limit (in priority order), asks the breaker, and makes one call under the per-attempt timeout.
Every step is recorded as an ``Attempt`` and as events.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from .._config import ProviderConfig
from .._errors import (
    AllProvidersFailedError,
    BudgetExceededError,
    CircuitOpenError,
    LLMError,
    NoProviderError,
    ProviderError,
    ProviderTimeoutError,
    QuotaExceededError,
    RateLimitError,
    is_fallback_error,
)
from .._events import EventLog
from .._secrets import logger, redact
from .._types import Attempt, EmbeddingResponse, Request, Response, StreamChunk
from ..providers.base import Provider, prompt_tokens
from .breaker import Breaker
from .limits import PausedTooLong, PriorityGate, Throttle
from .timeouts import Timeout

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]
#: Called before each candidate is tried (the budget's check for that provider and model); it raises
#: ``BudgetExceededError`` to refuse, which ends the request: nothing more is sent.
BeforeCandidate = Callable[["Slot", Request], None]


class Slot:
    """A provider and its resilience state: breaker, rate limits, concurrency cap."""

    def __init__(self, provider: Provider, clock: Callable[[], float], events: EventLog,
                 sleep: Sleep | None = None) -> None:
        self.provider = provider
        self.config: ProviderConfig = provider.config
        self.name = provider.name
        self.breaker = Breaker(self.name, self.config.breaker, clock, events)
        self.throttle = Throttle(self.config.rate_limit, self.config.tokens_per_minute, clock, sleep)
        self.gate = PriorityGate(self.config.max_concurrency)

    def serves(self, model: str) -> bool:
        return self.config.serves(model)

    @property
    def waiting(self) -> int:
        return self.gate.waiting + self.throttle.waiting


class _ServerAwareWait(wait_base):
    """Honour a server's ``retry-after`` (capped); otherwise exponential backoff with jitter."""

    def __init__(self, cap: float) -> None:
        self.cap = cap
        self.backoff = wait_exponential_jitter(multiplier=0.5, max=8.0, jitter=0.25)

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        after = getattr(exc, "retry_after", None)
        if after is not None and after > 0:
            return float(min(after, self.cap))
        return float(self.backoff(retry_state))


class _StopAtDeadline(stop_base):
    """Stop when the next sleep would end past the request's deadline."""

    def __init__(self, deadline: float, clock: Callable[[], float]) -> None:
        self.deadline = deadline
        self.clock = clock

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.clock() + retry_state.upcoming_sleep >= self.deadline


def _retryable(cap: float) -> Callable[[BaseException], bool]:
    def check(exc: BaseException) -> bool:
        if not isinstance(exc, ProviderError) or not exc.retryable:
            return False
        after = exc.retry_after
        return after is None or after <= cap  # asked to wait longer than we allow: fall back instead

    return check


def _complete(provider: Provider, request: Request) -> Awaitable[Response]:
    """The call ``route`` makes: the provider's completion (its coroutine, awaited by the router)."""
    return provider.complete(request)


def _describe(exc: BaseException) -> tuple[str, str]:
    return type(exc).__name__, redact(str(exc))[:500]


class Router:
    """Turns a ``Request`` into a ``Response`` across providers, or raises a typed error."""

    def __init__(self, slots: Sequence[Slot], fallbacks: Mapping[str, Sequence[str]], events: EventLog,
                 clock: Callable[[], float], sleep: Sleep | None = None, retry_after_cap: float = 60.0,
                 on_attempt: Callable[[str, bool, float], None] | None = None) -> None:
        self.slots = sorted(slots, key=lambda s: s.config.priority)
        self.by_name = {s.name: s for s in self.slots}
        self.fallbacks = fallbacks
        self.events = events
        self.clock = clock
        self.sleep: Sleep = sleep or asyncio.sleep
        self.retry_after_cap = retry_after_cap
        self.on_attempt = on_attempt
        self._is_retryable = _retryable(retry_after_cap)
        # candidates by (model, provider): slots and fallbacks never change after construction
        self._candidates: dict[tuple[str, str | None], list[tuple[Slot, str]]] = {}

    # -- candidates ----------------------------------------------------------------------------

    def candidates(self, model: str, provider: str | None = None) -> list[tuple[Slot, str]]:
        """(slot, model) pairs to try in order (a fresh list); raises ``NoProviderError`` when there are none."""
        found = self._candidates.get((model, provider))
        if found is not None:
            return found.copy()
        found = self._find_candidates(model, provider)
        if len(self._candidates) >= _CANDIDATES_KEPT:
            self._candidates.clear()  # many distinct model names: start over rather than grow without bound
        self._candidates[(model, provider)] = found
        return found.copy()

    def _find_candidates(self, model: str, provider: str | None) -> list[tuple[Slot, str]]:
        if provider is not None and provider not in self.by_name:
            raise NoProviderError(f"no provider named {provider!r}; configured: {sorted(self.by_name)}")
        out: list[tuple[Slot, str]] = []
        for m in (model, *self.fallbacks.get(model, ())):
            for slot in self.slots:
                if (provider is None or slot.name == provider) and slot.serves(m) and (slot, m) not in out:
                    out.append((slot, m))
        if not out:
            pinned = f" on provider {provider!r}" if provider else ""
            raise NoProviderError(
                f"no configured provider serves model {model!r}{pinned}; providers and their models: "
                + ", ".join(f"{s.name}={list(s.config.models)}" for s in self.slots)
            )
        return out

    # -- the chain -----------------------------------------------------------------------------

    async def route(self, request: Request, attempts: list[Attempt], deadline: float,
                    before: BeforeCandidate | None = None) -> Response:
        if request.wait_for_breaker:
            return await self._waiting_out_outages(request, attempts, deadline, _complete, before)
        return await self._with_fallback(request, attempts, deadline, _complete, before)

    async def route_call(self, request: Request, attempts: list[Attempt], deadline: float,
                         call: Callable[[Provider, Request], Awaitable[T]], before: BeforeCandidate | None = None,
                         candidates: list[tuple[Slot, str]] | None = None) -> T:
        """Route a call other than a completion (an embedding) through the same chain: ``candidates``
        (default: every provider serving the model, then its fallbacks), limits, breakers, retries."""
        return await self._with_fallback(request, attempts, deadline, call, before, candidates)

    async def _waiting_out_outages(self, request: Request, attempts: list[Attempt], deadline: float,
                                   call: Callable[[Provider, Request], Awaitable[T]],
                                   before: BeforeCandidate | None = None) -> T:
        """``wait_for_breaker``: when every candidate failed only because of an outage (breaker open, a
        server pause, rate limited), wait until the earliest one may be tried again (the breaker's probe,
        the pause's end) and go again, within the request's deadline; any other failure is raised.

        A timed wait (a breaker's ``reset_timeout``, a pause) uses the injected ``sleep``; while another
        request's half-open probe is in flight the wait is for that event, so it polls on the loop's own
        clock (0.05 s, doubling up to 1 s)."""
        polls = 0
        while True:
            try:
                return await self._with_fallback(request, attempts, deadline, call, before)
            except LLMError as exc:
                wait = self._outage_wait(request, exc)
                if wait is None or self.clock() + wait >= deadline:
                    raise
                self.events.emit("outage_wait", None, request.id, model=request.model, waited_s=wait,
                                 error=type(exc).__name__)
                if wait > 0:
                    polls = 0
                    # at least a millisecond, so a float-rounding remainder cannot spin at one instant, and a
                    # turn of the loop even under an injected sleep that never yields (a fake clock)
                    await self.sleep(max(wait, 1e-3))
                    await asyncio.sleep(0)
                else:  # a probe is in flight, or rate limited with no pause announced: look again soon
                    await asyncio.sleep(min(OUTAGE_POLL_S * 2 ** min(polls, 5), OUTAGE_POLL_MAX_S))
                    polls += 1

    def _outage_wait(self, request: Request, exc: LLMError) -> float | None:
        """Seconds until a candidate may be tried again when ``exc`` is only an outage, else None."""
        errors = exc.errors if isinstance(exc, AllProvidersFailedError) else [exc]
        for err in errors:
            if isinstance(err, CircuitOpenError) or (isinstance(err, RateLimitError)
                                                     and not isinstance(err, QuotaExceededError)):
                continue
            slot = self.by_name.get(getattr(err, "provider", None) or "")
            if slot is None or slot.breaker.retry_in() is None:  # a failure while the breaker stays closed
                return None
        waits = [max(s.breaker.retry_in() or 0.0, s.throttle.paused_for())
                 for s, _ in self.candidates(request.model, request.provider)]
        return min(waits)

    async def open_stream(self, request: Request, attempts: list[Attempt], deadline: float,
                          before: BeforeCandidate | None = None
                          ) -> tuple[Slot, StreamChunk, AsyncIterator[StreamChunk]]:
        """Open a stream with fallback and retries up to its first chunk; later errors are not retried."""
        opened: dict[str, Any] = {}

        async def call(provider: Provider, req: Request) -> StreamChunk:
            agen = provider.stream(req).__aiter__()
            try:
                first = await agen.__anext__()
            except StopAsyncIteration:
                first = StreamChunk()
            opened["agen"] = agen
            opened["slot"] = self.by_name[provider.name]
            return first

        first = await self._with_fallback(request, attempts, deadline, call, before)
        return opened["slot"], first, opened["agen"]

    async def _with_fallback(self, request: Request, attempts: list[Attempt], deadline: float,
                             call: Callable[[Provider, Request], Awaitable[T]],
                             before: BeforeCandidate | None = None,
                             candidates: list[tuple[Slot, str]] | None = None) -> T:
        errors: list[BaseException] = []
        if candidates is None:
            candidates = self.candidates(request.model, request.provider)
        for index, (slot, model) in enumerate(candidates):
            req = request if model == request.model else dataclasses.replace(request, model=model)
            if before is not None:
                try:
                    before(slot, req)
                except BudgetExceededError as exc:  # not the provider's fault: no breaker, no fallback
                    self._record(attempts, slot, req, "skipped", exc, 0.0, 0)
                    raise
            try:
                return await self._with_retries(slot, req, attempts, deadline, call)
            except LLMError as exc:
                if not (is_fallback_error(exc) or type(exc) is ProviderError):
                    raise  # a malformed request fails anywhere: don't try the others
                errors.append(exc)
                if index + 1 < len(candidates):
                    nxt, nxt_model = candidates[index + 1]
                    self.events.emit("fallback", slot.name, request.id, model=model, to_provider=nxt.name,
                                     to_model=nxt_model, error=type(exc).__name__)
        if len(errors) == 1:
            raise errors[0]
        raise AllProvidersFailedError(request.model, errors)

    async def _with_retries(self, slot: Slot, request: Request, attempts: list[Attempt], deadline: float,
                            call: Callable[[Provider, Request], Awaitable[T]]) -> T:
        # The first try runs bare: most calls succeed, and building a tenacity loop costs more than the
        # rest of the pipeline. Only a retryable failure enters tenacity, which replays that failure as
        # its own first attempt, so backoff, retry-after and stop rules stay tenacity's.
        try:
            return await self._attempt(slot, request, attempts, 0, call)
        except Exception as exc:
            if slot.config.max_retries == 0 or not self._is_retryable(exc):
                raise
            first = exc
        retrying = AsyncRetrying(
            sleep=self.sleep,
            stop=stop_after_attempt(slot.config.max_retries + 1) | _StopAtDeadline(deadline, self.clock),
            wait=_ServerAwareWait(self.retry_after_cap),
            retry=retry_if_exception(self._is_retryable),
            before_sleep=lambda rs: self._before_sleep(slot, request, rs),
            reraise=True,
        )
        retry = 0
        async for attempt in retrying:
            with attempt:
                if retry == 0:
                    raise first
                return await self._attempt(slot, request, attempts, retry, call)
            retry += 1
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _before_sleep(self, slot: Slot, request: Request, rs: RetryCallState) -> None:
        exc = rs.outcome.exception() if rs.outcome else None
        self.events.emit("retry", slot.name, request.id, model=request.model,
                         error=type(exc).__name__ if exc else None, sleep_s=rs.upcoming_sleep,
                         retry=rs.attempt_number)

    async def _attempt(self, slot: Slot, request: Request, attempts: list[Attempt], retry: int,
                       call: Callable[[Provider, Request], Awaitable[T]]) -> T:
        self._skip_if_open(slot, request, attempts, retry)  # fail fast: don't queue for an open circuit
        throttle, gate = slot.throttle, slot.gate
        self._skip_if_paused(slot, request, attempts, retry, throttle.paused_for())
        start = None
        if not gate.try_acquire():  # no free place: wait for one, in priority order
            start = self.clock()
            await gate.acquire(request.priority)
        try:
            if start is not None and (queued := self.clock() - start) > 0.001:
                self.events.emit("queue_wait", slot.name, request.id, waited_s=queued)
            # the token estimate is only used by a tokens-per-minute limit (none configured: never computed)
            estimate = request_tokens(request) if throttle.limits is not None else 0
            if throttle.active:  # rate limits, or a server's pause: wait for them
                try:
                    waited = await throttle.acquire(request.priority, estimate, self.retry_after_cap)
                except PausedTooLong as exc:  # the pause grew past the cap while this request waited
                    self._skip_if_paused(slot, request, attempts, retry, exc.remaining_s)
                    raise
                if waited > 0.001:
                    self.events.emit("rate_limit_wait", slot.name, request.id, waited_s=waited)
            return await self._call(slot, request, attempts, retry, call, estimate)
        finally:
            gate.release()

    def _skip_if_open(self, slot: Slot, request: Request, attempts: list[Attempt], retry: int) -> None:
        wait = slot.breaker.retry_in()
        if wait is not None and wait > 0:
            exc = CircuitOpenError(slot.name, wait)
            self._record(attempts, slot, request, "skipped", exc, 0.0, retry)
            raise exc

    def _skip_if_paused(self, slot: Slot, request: Request, attempts: list[Attempt], retry: int,
                        remaining: float) -> None:
        """A server pause longer than ``retry_after_cap`` is not sat out: fall back, or fail fast with a
        ``RateLimitError`` carrying what is left of the pause (``retry_after``)."""
        if remaining <= self.retry_after_cap:
            return
        exc = RateLimitError(
            f"paused by the server for {remaining:.1f}s more, longer than retry_after_cap "
            f"({self.retry_after_cap:g}s): not waiting", provider=slot.name, code="paused",
            retryable=False, retry_after=remaining)
        self._record(attempts, slot, request, "skipped", exc, 0.0, retry)
        raise exc

    async def _call(self, slot: Slot, request: Request, attempts: list[Attempt], retry: int,
                    call: Callable[[Provider, Request], Awaitable[T]], estimate: int) -> T:
        breaker = slot.breaker
        if breaker.syncs:
            await breaker.sync()  # a shared breaker reads its state (a local one has nothing to read)
        try:
            probe = breaker.admit()
        except CircuitOpenError as exc:
            self._record(attempts, slot, request, "skipped", exc, 0.0, retry)
            raise
        start = self.clock()
        try:
            with Timeout(slot.config.timeout):
                result = await call(slot.provider, request)
        except asyncio.CancelledError:
            if probe:
                slot.breaker.release_probe()
            self._record(attempts, slot, request, "error", _Cancelled(), self.clock() - start, retry)
            raise
        except BaseException as raw:
            error = _as_provider_error(raw, slot, request)
            duration = self.clock() - start
            slot.breaker.report(error, probe)
            self._record(attempts, slot, request, "error", error, duration, retry)
            pause = getattr(error, "retry_after", None)
            if isinstance(error, RateLimitError) and pause:
                slot.throttle.pause(pause)
                self.events.emit("provider_pause", slot.name, request.id, pause_s=pause)
            if error is raw:
                raise
            raise error from None  # the original may carry secrets (a key in a URL): its text is scrubbed
        duration = self.clock() - start
        slot.breaker.report(None, probe)
        self._record(attempts, slot, request, "ok", None, duration, retry)
        if isinstance(result, (Response, EmbeddingResponse)):
            self._after_response(slot, request, result, estimate)
        return result

    def _after_response(self, slot: Slot, request: Request, response: Response | EmbeddingResponse,
                        estimate: int) -> None:
        if slot.throttle.limits is not None:  # (no limits: nothing to correct)
            slot.throttle.correct(estimate, response.usage.total_tokens)
        info = response.rate_limit
        pause = info.pause_s() if info is not None else None
        if pause:
            slot.throttle.pause(pause)
            self.events.emit("provider_pause", slot.name, request.id, pause_s=pause)

    def _record(self, attempts: list[Attempt], slot: Slot, request: Request, outcome: str,
                exc: BaseException | None, duration: float, retry: int) -> None:
        error, message = _describe(exc) if exc is not None else (None, None)
        attempt = Attempt(slot.name, request.model, outcome, error, message, duration, retry)  # type: ignore[arg-type]
        attempts.append(attempt)
        self.events.emit("attempt", slot.name, request.id, model=request.model, outcome=outcome, error=error,
                         duration_s=duration, retry=retry)
        if outcome != "skipped" and self.on_attempt is not None and not isinstance(exc, _Cancelled):
            self.on_attempt(slot.name, outcome == "ok", duration)


class _Cancelled(Exception):
    """How an attempt cut short (by the request's deadline, or the caller) shows in ``attempts``."""

    def __init__(self) -> None:
        super().__init__("cancelled: the request's deadline passed or the caller went away")


_Cancelled.__name__ = "Cancelled"


#: (model, provider) pairs whose candidates the router keeps (cleared when full).
_CANDIDATES_KEPT = 1024

#: How often a request waiting out an outage looks again while a probe is in flight (doubling up to the max).
OUTAGE_POLL_S = 0.05
OUTAGE_POLL_MAX_S = 1.0

#: Output tokens assumed for a request without ``max_tokens`` (rate limits and budgets estimate with it).
DEFAULT_OUTPUT_ESTIMATE = 256


def request_tokens(request: Request) -> int:
    """Tokens a request may use, for the tokens-per-minute limit: prompt estimate plus max output."""
    return prompt_tokens(request) + (request.max_tokens or DEFAULT_OUTPUT_ESTIMATE)


def _as_provider_error(exc: BaseException, slot: Slot, request: Request) -> BaseException:
    """Timeouts become ``ProviderTimeoutError``; a custom adapter's stray exception becomes a ProviderError."""
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, TimeoutError):
        return ProviderTimeoutError(f"no answer within {slot.config.timeout:g}s", provider=slot.name)
    if isinstance(exc, Exception):
        logger.warning("provider %s raised %s", slot.name, type(exc).__name__)
        return ProviderError(f"adapter raised {type(exc).__name__}: {exc}", provider=slot.name, retryable=False)
    return exc


__all__ = ["Router", "Slot", "request_tokens"]
