"""The in-process service behind a client: routing, budgets, costs, the ledger and health.

Requests run on llmkit's private loop, on an async caller's own loop, or on a sync caller's thread (see
``_loop``), all at once: what they share is thread-safe. ``execute`` and ``stream`` are the two request
paths; both end every request in exactly one ledger record (ok, error, or cancelled by its caller: a
cancelled task, ``cancel(id)``, an abandoned stream with its tokens so far estimated), written durably
before the result is handed back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from . import structured
from ._config import ClientConfig
from ._errors import ClientClosedError, OutputValidationError, ProviderTimeoutError, RequestTimeoutError
from ._events import EventLog
from ._secrets import logger, redact
from ._types import Attempt, Request, Response, StreamChunk, new_session_id
from ._validate import sane_usage
from .cache import ResponseCache, replay_chunks
from .ledger.pricing import Pricer
from .ledger.store import Ledger, LedgerRecord
from .providers import create_provider
from .providers.base import estimate_usage, prompt_tokens
from .routing.budget import Budget, Reservation
from .routing.health import HealthMonitor
from .routing.router import DEFAULT_OUTPUT_ESTIMATE, Router, Sleep, Slot
from .routing.timeouts import Timeout

if TYPE_CHECKING:
    from .shared import SharedState


class Flight:
    """One request's time on the loop, around its routing and its record: counted in ``in_flight`` (all but
    cache hits) and ended by ``close()`` from ``service.flight()`` on; its budget reservation (``await
    flight.reserve(request)``) is released by ``end()``, which the caller runs after writing the record
    (a ``finally``), so a budget never misses a cost in between.

    The request runs in its caller's task (``acompletion`` adds none), so ``close()`` cancels that task only
    while the flight lasts (``cancel``), waits for the flight and not the task (``on_end``), and gives the
    task its cancellation back (``closed_error``): the caller sees a ``ClientClosedError``, and its task is
    not left cancelling."""

    __slots__ = ("closed", "counted", "ended", "on_end", "recording", "refused", "service", "task", "token")

    def __init__(self, service: Service, counted: bool = True) -> None:
        self.service = service
        self.token: Any = None
        self.counted = counted
        self.ended = False
        self.closed = False  # close() cancelled its task
        self.refused = False  # a closing client refused it (``reserve``)
        self.recording = False  # its record is being written: close() lets it finish (and waits for it)
        self.on_end: Callable[[], None] | None = None  # a close waiting for it
        if counted:
            with service._count_lock:  # requests may run on several loops (threads) at once
                service.in_flight += 1
        self.task = asyncio.current_task()
        service._flights.add(self)

    async def reserve(self, request: Request) -> Any:
        """Reserve ``request``'s budget (held across processes with a shared budget); a closing client
        refuses it (``CancelledError``, recorded as ``ClientClosedError``)."""
        service = self.service
        if service.closing:
            self.refused = True
            raise asyncio.CancelledError
        self.token = service._reserve(request)
        await service._hold(self.token)
        return self.token

    def cancel(self) -> None:
        """On the task's loop: cancel the request if it is still running (``close()``)."""
        if not self.ended and not self.recording and self.task is not None and not self.task.done():
            self.closed = True
            self.task.cancel()

    def closed_error(self, request: Request, exc: BaseException) -> ClientClosedError | None:
        """Called first thing when the request fails (it then writes its record: ``recording``). A request cut
        short by ``close()`` (its cancellation, or refused by a closing client) ends with a
        ``ClientClosedError``, recorded as such, and close's cancellation of the task is taken back. Any other
        cancellation (its caller's, even during a close) stays a cancellation."""
        self.recording = True
        if not isinstance(exc, asyncio.CancelledError):
            return None
        if self.refused:
            return ClientClosedError(f"request {request.id} did not finish: the client was closed")
        if not self.closed:
            return None
        self.closed = False
        if self.task is not None and self.task.uncancel() > 0:  # cancelled by someone else as well: that goes on
            return None
        return ClientClosedError(f"request {request.id} did not finish: the client was closed")

    def end(self) -> None:
        service = self.service
        service._flights.discard(self)
        with service._count_lock:
            self.ended = True
            on_end, self.on_end = self.on_end, None
            last = False
            if self.counted:
                service.in_flight -= 1
                last = service.in_flight == 0 and service.ledger_close_pending
                if last:
                    service.ledger_close_pending = False
        if on_end is not None:
            on_end()
        if last:
            service.close_ledger_now()
        if self.token is not None and service.budget is not None:
            service.budget.release(self.token)


class Service:
    """Owns a client's providers and everything that protects, prices and records their calls."""

    def __init__(self, config: ClientConfig, clock: Callable[[], float], *, sleep: Sleep | None = None,
                 wallclock: Callable[[], float] = time.time, cache_clock: Callable[[], float] | None = None) -> None:
        self.config = config
        self.session_id = new_session_id()
        self.clock = clock
        self.wallclock = wallclock
        self.events = EventLog(config.max_events, wallclock)
        self.providers = {p.name: create_provider(p) for p in config.providers}
        self.slots = [Slot(p, clock, self.events, sleep) for p in self.providers.values()]
        self.shared = self._share_state(config)  # Redis-backed limits and breakers (None: local only)
        self.health = HealthMonitor(self.providers, {s.name: s.breaker for s in self.slots}, self.events,
                                    interval=config.health_interval, clock=clock, wallclock=wallclock)
        self.router = Router(self.slots, config.fallbacks, self.events, clock, sleep, config.retry_after_cap,
                             on_attempt=self.health.record_request)
        self.pricer = Pricer({p.name: p.pricing for p in config.providers if p.pricing})
        ledger_path = None if config.ledger in (None, ":memory:") else config.ledger
        # a budget reads the spend of every client on the file: each record committed before its call returns
        self.ledger = Ledger(ledger_path, memory_records=config.memory_records, session_id=self.session_id,
                             journal=config.budget_usd is None)
        self.budget = (Budget(config.budget_usd, config.budget_period, self.ledger, wallclock)
                       if config.budget_usd is not None else None)
        if self.shared is not None and self.budget is not None:
            self.budget = self.shared.share_budget(self.budget, self.events)  # type: ignore[assignment]
        self.in_flight = 0  # requests started on the loop and not yet finished
        self._submitted = 0  # requests handed over by completion_async that have not started yet
        self._count_lock = threading.Lock()
        self._flights: set[Flight] = set()  # requests running (on any loop), ended by aclose()
        self.closing = False
        self.ledger_close_pending = False  # closed by the last request a close could not wait for (``aclose``)
        self.cache = ResponseCache(config, self.events, cache_clock or wallclock)

    # -- requests ------------------------------------------------------------------------------

    def note_submitted(self) -> None:
        """Called from the caller's thread when a request is queued, so queue depth counts it at once."""
        with self._count_lock:
            self._submitted += 1

    async def execute(self, request: Request, submitted: bool = False) -> Response:
        """Route ``request``; record it; return the response or raise its typed error."""
        if submitted:
            with self._count_lock:
                self._submitted -= 1
        t0, started = self.clock(), self.wallclock()
        hit = None if self.closing else self.cache.lookup(request)
        if hit is not None:  # answered from the response cache: no provider, budget, limit or breaker
            return await self._serve_hit(request, *hit, started, t0)
        attempts: list[Attempt] = []
        paid: list[Response] = []  # each answered try (validation retries): charged however the request ends
        flight = self.flight()
        try:
            # no budget: nothing to reserve (``reserve`` would only refuse a closing client)
            token = None if self.budget is None and not self.closing else await flight.reserve(request)
            rebudget, deadline = self._rebudget(token, request, paid), self._deadline_at(request, t0)
            # structured output or tools (never without extra arguments or a response model): checked, and
            # asked again on a bad answer
            if (request.extra or request.response_model is not None) and structured.wants_check(request):
                work = structured.complete(
                    request, lambda req: self.router.route(req, attempts, deadline, rebudget),
                    lambda resp: self._finish_response(request, resp, attempts, t0),
                    self.config.max_validation_retries, lambda n, errors: self._note_retry(request, n, errors), paid)
            else:
                work = self._answer(request, attempts, deadline, rebudget, t0, paid)
            response = await self._deadline(request, t0, attempts, work)
            self.cache.store(request, response)  # validated answers only
        except BaseException as exc:
            closed = flight.closed_error(request, exc)
            await self._record(request, None, closed or exc, attempts, started, t0, paid=paid)
            if closed is not None:
                raise closed from None
            raise
        else:
            flight.recording = True
            await self._record(request, response, None, attempts, started, t0)
            return response
        finally:
            flight.end()

    async def _answer(self, request: Request, attempts: list[Attempt], deadline: float,
                      rebudget: Callable[[Slot, Request], None] | None, t0: float, paid: list[Response]) -> Response:
        """One routed answer, stamped and priced: ``structured.complete`` for a request with nothing to check,
        without its callbacks."""
        response = await self.router.route(request, attempts, deadline, rebudget)
        self._finish_response(request, response, attempts, t0)
        paid.append(response)
        return response

    async def stream(self, request: Request, emit: Callable[[StreamChunk], Awaitable[None]]) -> Response:
        """Stream ``request`` into ``emit``: fallback and retries until the first chunk, then pass chunks on.

        A coroutine, not a generator, so one task drives the whole stream and cancellation (the reader
        went away) lands at an ``await`` where it can still be recorded.
        """
        t0, started = self.clock(), self.wallclock()
        hit = None if self.closing else self.cache.lookup(request)
        if hit is not None:  # replayed from the response cache as chunks
            return await self._serve_hit(request, *hit, started, t0, emit)
        attempts: list[Attempt] = []
        response: Response | None = None
        texts: list[str] = []
        slot: Slot | None = None
        flight = self.flight()
        try:
            token = await flight.reserve(request)
            loop = asyncio.get_running_loop()
            total = self._timeout(request)
            hard = loop.time() + total if total is not None else math.inf
            slot, first, agen = await self._deadline(
                request, t0, attempts, self.router.open_stream(request, attempts, self._deadline_at(request, t0),
                                                               self._rebudget(token, request)))
            try:
                response = await self._pump(request, slot, first, agen, emit, texts, hard)
            finally:
                with contextlib.suppress(Exception):
                    await agen.aclose()
            complete = response is not None  # only an answer the adapter finished is cached
            if response is None:  # the adapter ended without a final response: build one
                content = "".join(texts)
                response = Response(id=request.id, content=content, provider=slot.name, model=request.model,
                                    usage=estimate_usage(request, content), requested_model=request.model)
            self._finish_response(request, response, attempts, t0)
            structured.finish_stream(request, response)
            if complete:
                self.cache.store(request, response)
        except BaseException as exc:
            closed = flight.closed_error(request, exc)
            if closed is None and isinstance(exc, asyncio.CancelledError) and slot is not None:
                # abandoned by its reader: one record, ok if the answer was complete, else cancelled with
                # the tokens so far (estimated: servers report usage at the end)
                partial = response or self._partial(request, slot, texts)
                self._finish_response(request, partial, attempts, t0)
                await self._record(request, partial, None, attempts, started, t0, stream=True,
                                   status="ok" if response is not None else "cancelled")
                raise
            await self._record(request, None, closed or exc, attempts, started, t0, stream=True)
            if closed is not None:
                raise closed from None
            raise
        else:  # recorded before the reservation is released: the budget never misses the cost in between
            flight.recording = True
            await self._record(request, response, None, attempts, started, t0, stream=True)
            return response
        finally:
            flight.end()

    async def _pump(self, request: Request, slot: Slot, chunk: StreamChunk | None, agen: AsyncIterator[StreamChunk],
                    emit: Callable[[StreamChunk], Awaitable[None]], texts: list[str], hard: float) -> Response | None:
        """Pass a stream's chunks on until its final response, within the stall timeout and the deadline."""
        loop = asyncio.get_running_loop()
        while chunk is not None:
            if chunk.response is not None:
                return chunk.response
            texts.append(chunk.text)
            await emit(chunk)
            remaining = hard - loop.time()
            wait = min(slot.config.timeout, remaining)
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(wait):
                    chunk = await agen.__anext__()
            except StopAsyncIteration:
                return None
            except TimeoutError:
                if hard - loop.time() <= 0 or wait < slot.config.timeout:
                    raise RequestTimeoutError(
                        f"request {request.id} passed its {self._timeout(request):g}s deadline "
                        "while streaming") from None
                err = ProviderTimeoutError(f"stream stalled for {slot.config.timeout:g}s", provider=slot.name)
                slot.breaker.report(err)
                raise err from None
            except Exception as exc:
                slot.breaker.report(exc)
                raise
        return None

    async def _serve_hit(self, request: Request, response: Response, saved: float, started: float, t0: float,
                         emit: Callable[[StreamChunk], Awaitable[None]] | None = None) -> Response:
        """Hand over a cached answer (replayed as chunks to a stream) and record it: cost 0, ``cost_saved_usd``."""
        flight = Flight(self, counted=False)  # (ended by close() like any request, not counted in flight)
        try:
            if emit is not None:
                for piece in replay_chunks(response.content):
                    await emit(StreamChunk(text=piece))
        except BaseException as exc:  # the reader went away, or the client closed
            closed = flight.closed_error(request, exc)
            await self._record(request, None, closed or exc, [], started, t0, stream=True)
            if closed is not None:
                raise closed from None
            raise
        finally:
            flight.end()
        response.latency_s = self.clock() - t0
        structured.apply(request, response)  # ``parsed`` for a response_model / schema (stored answers validated)
        await self._record(request, response, None, [], started, t0, stream=emit is not None, saved=saved)
        return response

    # -- pieces --------------------------------------------------------------------------------

    @staticmethod
    def _partial(request: Request, slot: Slot, texts: list[str]) -> Response:
        """What an abandoned stream got: its text so far and estimated usage (``usage.estimated``)."""
        content = "".join(texts)
        return Response(id=request.id, content=content, provider=slot.name, model=request.model,
                        usage=estimate_usage(request, content), requested_model=request.model)

    def flight(self) -> Flight:
        """Start a request's time on the loop (see ``Flight``); the caller ends it in a ``finally``."""
        return Flight(self)


    def _timeout(self, request: Request) -> float | None:
        """The request's overall timeout: its own, else the client's (None: no deadline)."""
        return request.timeout if request.timeout is not None else self.config.timeout

    def _deadline_at(self, request: Request, t0: float) -> float:
        timeout = self._timeout(request)
        return t0 + timeout if timeout is not None else math.inf

    async def _deadline(self, request: Request, t0: float, attempts: list[Attempt], work: Any) -> Any:
        """Bound ``work`` by the request's overall timeout (on the loop's own clock)."""
        timeout = self._timeout(request)
        try:
            with Timeout(timeout):
                return await work
        except TimeoutError:
            tried = ", ".join(f"{a.provider}:{a.outcome}" for a in attempts) or "nothing yet"
            raise RequestTimeoutError(
                f"request {request.id} passed its {timeout:g}s deadline (tried: {tried})") from None

    def _reserve(self, request: Request) -> Reservation | None:
        if self.budget is None:
            return None
        slot, model = self.router.candidates(request.model, request.provider)[0]
        return self.budget.reserve(self._estimate(slot, model, request))

    async def _hold(self, token: Reservation | None) -> None:
        """A shared budget makes the reservation atomic across processes (may raise BudgetExceededError)."""
        hold = getattr(self.budget, "hold", None)
        if token is not None and hold is not None:
            await hold(token)

    def _share_state(self, config: ClientConfig) -> SharedState | None:
        if config.shared_state is None:
            return None
        from .shared import SharedState

        shared = SharedState(config.shared_state, config.namespace, self.events)
        shared.attach(self.slots, self.events)
        return shared

    def _estimate(self, slot: Slot, model: str, request: Request) -> float | None:
        estimate = self.pricer.estimate(slot.name, slot.provider.price_provider_id, model,
                                        prompt_tokens(request), request.max_tokens or DEFAULT_OUTPUT_ESTIMATE)
        return None if estimate is None else float(estimate)

    def _rebudget(self, token: Reservation | None, request: Request,
                  paid: list[Response] | None = None) -> Callable[[Slot, Request], None] | None:
        """The budget's check before each provider is tried: the reservation moves to that provider's
        estimate (a pricier fallback is checked again) or the request ends in ``BudgetExceededError``.
        Before a validation retry's re-ask it holds what the earlier tries in ``paid`` cost plus the next
        try's estimate (those tries reach the ledger only with the request's one record)."""
        budget = self.budget
        if token is None or budget is None:
            return None
        tried = 0

        def check(slot: Slot, req: Request) -> None:
            nonlocal tried
            tried += 1
            if tried > 1:  # the first candidate is the one ``_reserve`` held for
                estimate, spent = self._estimate(slot, req.model, req), structured.paid_usd(paid or ())
                budget.resize(token, spent + (estimate or 0.0) if spent else estimate)

        return check

    def _note_retry(self, request: Request, tries: int, errors: list[Any]) -> None:
        self.events.emit("validation_retry", None, request.id, retry=tries, errors=len(errors))

    def _finish_response(self, request: Request, response: Response, attempts: list[Attempt], t0: float) -> None:
        response.id = request.id
        response.attempts = attempts
        response.latency_s = self.clock() - t0
        response.requested_model = request.model
        if sane_usage(response.usage).suspect:
            logger.warning("provider %s sent implausible token counts; clamped (usage.suspect)", response.provider)
        slot = self.router.by_name.get(response.provider)
        price_id = slot.provider.price_provider_id if slot is not None else None
        cost: Decimal | None = self.pricer.cost(response.provider, price_id, response.model, response.usage)
        if cost is None and response.model != request.model and response.provider in self.router.by_name:
            # a served model id the price table lacks (an alias resolved by the server): try the asked one
            cost = self.pricer.cost(response.provider, price_id, request.model, response.usage)
        response.cost_usd = None if cost is None else float(cost)

    async def _record(self, request: Request, response: Response | None, exc: BaseException | None,
                      attempts: list[Attempt], started: float, t0: float, stream: bool = False,
                      status: str = "ok", saved: float = 0.0, paid: list[Response] | None = None) -> None:
        now = self.wallclock()
        if response is not None:
            u = response.usage
            cancelled = status == "cancelled"
            record = LedgerRecord(  # by position, in FIELDS order (28 keywords cost a request ~1 µs)
                request.id, now, started, response.provider, response.model, request.model, status,
                "CancelledError" if cancelled else None,  # error_type
                _cancelled_message(request, stream) if cancelled else None,  # error_message
                u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens, u.reasoning_tokens,
                u.estimated, response.cost_usd, response.latency_s, len(attempts), response.fallback, stream,
                request.priority, request.metadata or None, self._prompt(request), self.session_id,
                "completion", response.cached, saved, u.suspect,  # kind, cached, cost_saved_usd, usage_suspect
            )
        else:
            last = attempts[-1] if attempts else None
            record = LedgerRecord(
                request_id=request.id, time=now, started=started, provider=last.provider if last else None,
                model=last.model if last else None, requested_model=request.model,
                status="cancelled" if isinstance(exc, asyncio.CancelledError) else "error",
                error_type=type(exc).__name__,
                error_message=(_cancelled_message(request, stream) if isinstance(exc, asyncio.CancelledError)
                               else redact(str(exc))[:500]), input_tokens=0,
                output_tokens=0, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0,
                usage_estimated=False, cost_usd=0.0, latency_s=self.clock() - t0, attempts=len(attempts),
                fallback=len({a.provider for a in attempts}) > 1, stream=stream, priority=request.priority,
                metadata=request.metadata or None, prompt=self._prompt(request), session_id=self.session_id,
            )
        charged = (exc.response if isinstance(exc, OutputValidationError) and exc.response is not None
                   else structured.paid_response(paid or ()) if exc is not None else None)
        if charged is not None:  # answers that did not validate (or came before a timeout...) were paid for
            record = _charged(record, charged)
        await self.commit(record)

    async def commit(self, record: LedgerRecord, **event: Any) -> None:
        """Write a finished request's record (a failing ledger never turns an answer into a failure) and emit
        its ``request`` event (``event``: extra fields, e.g. ``call="embedding"``)."""
        try:
            await self.ledger.append(record)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            logger.error("llmkit could not write the ledger record for %s: %s", record.request_id, err)
        self.events.emit("request", record.provider, record.request_id, status=record.status,
                         error_type=record.error_type, cost_usd=record.cost_usd, latency_s=record.latency_s, **event)

    def _prompt(self, request: Request) -> str | None:
        if not self.config.store_prompts:
            return None
        return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in request.messages)[:2000]

    # -- state for the client ------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Requests waiting: queued and not started, or waiting for a concurrency slot or a rate limit."""
        return self._submitted + sum(s.waiting for s in self.slots)

    def saturated(self) -> bool:
        """Is anything waiting for a concurrency slot or rate-limit turn, or is some provider's every slot taken?"""
        return any(s.waiting or s.gate.in_use >= s.gate.capacity for s in self.slots)

    @property
    def pending(self) -> int:
        """Requests not finished: waiting, or running."""
        return self._submitted + self.in_flight

    def start(self) -> None:
        """On the loop: prepare the providers (connection pools) and start health checks."""
        for provider in self.providers.values():
            try:
                provider.prepare()
            except Exception as err:  # a provider that cannot prepare fails on its first call instead
                logger.warning("preparing provider %s: %s", provider.name, redact(str(err)))
        self.health.start()
        if self.shared is not None:
            self.shared.start()

    async def aclose(self, parked: asyncio.AbstractEventLoop | None = None) -> None:
        """Cancel what is running (on every loop) and wait for its records, then release everything.

        ``parked``: a loop that this close blocks (``close()`` called from a notebook cell while requests of
        the cell's loop are running): its requests cannot end until the close returns, so they are
        cancelled without waiting, and the ledger is closed by the last of them, after its record."""
        self.closing = True
        await asyncio.sleep(0)  # requests handed over just before close start (and are tracked) first
        here = asyncio.get_running_loop()
        flights = [f for f in list(self._flights) if f.task is not None and not f.ended]
        for flight in flights:
            _cancel(flight, here)
        # (a loop that is not running, like one left by run_until_complete, cannot end its requests either)
        waitable = [f for f in flights if f.task.get_loop() is not parked and f.task.get_loop().is_running()]  # type: ignore[union-attr]
        if waitable:
            await self._wait_flights(waitable, here, timeout=10)
        await self.health.stop()
        for provider in self.providers.values():
            try:
                await provider.aclose()
            except Exception as err:  # closing must not fail because one provider did
                logger.warning("closing provider %s: %s", provider.name, err)
        await here.run_in_executor(None, self.cache.close)
        if self.shared is not None:
            await self.shared.aclose()
        with self._count_lock:
            pending = self.ledger_close_pending = self.in_flight > 0 and any(not f.ended for f in flights)
        if not pending:  # (read under the lock: the last of those requests may close the ledger itself)
            await here.run_in_executor(None, self.ledger.close)

    async def _wait_flights(self, flights: list[Flight], here: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Wait up to ``timeout`` for requests on any loop to end (their flights, not their callers' tasks)."""
        waiters: list[asyncio.Future[None]] = []
        for flight in flights:
            with self._count_lock:
                if flight.ended:
                    continue
                ended: asyncio.Future[None] = here.create_future()
                flight.on_end = functools.partial(_wake, here, ended)
            waiters.append(ended)
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)

    def close_ledger_now(self) -> None:
        """The last request that a close could not wait for has its record: close the ledger."""
        try:
            self.ledger.close()
        except Exception as err:  # pragma: no cover - closing must not fail the request that ends
            logger.warning("closing the ledger: %s", err)


def _cancel(flight: Flight, here: asyncio.AbstractEventLoop) -> None:
    """Cancel ``flight``'s request on its own loop (requests may run on several)."""
    loop = flight.task.get_loop()  # type: ignore[union-attr]
    if loop is here:
        flight.cancel()
    elif not loop.is_closed():
        with contextlib.suppress(RuntimeError):  # it closed just now
            loop.call_soon_threadsafe(flight.cancel)


def _wake(loop: asyncio.AbstractEventLoop, ended: asyncio.Future[None]) -> None:
    """From a flight's end, on any thread: wake the close waiting for it."""
    if loop is asyncio._get_running_loop():
        _resolve(ended)
    else:
        with contextlib.suppress(RuntimeError):  # that loop closed meanwhile
            loop.call_soon_threadsafe(_resolve, ended)


def _resolve(ended: asyncio.Future[None]) -> None:
    if not ended.done():
        ended.set_result(None)


def _charged(record: LedgerRecord, response: Response) -> LedgerRecord:
    """An error record carrying the tokens and cost of the answers its request paid for."""
    import dataclasses

    u = response.usage
    return dataclasses.replace(
        record, provider=response.provider, model=response.model, input_tokens=u.input_tokens,
        output_tokens=u.output_tokens, cache_read_tokens=u.cache_read_tokens, cache_write_tokens=u.cache_write_tokens,
        reasoning_tokens=u.reasoning_tokens, usage_estimated=u.estimated, cost_usd=response.cost_usd)


def _cancelled_message(request: Request, stream: bool) -> str:
    """The ledger's note on a request its caller cancelled (a cancelled task or gather, ``cancel(id)``,
    a stream whose reader stopped)."""
    return ("stream abandoned by its reader before the end" if stream
            else f"request {request.id} cancelled by its caller")
