"""``Client``: the sync and async facade. Thin: validate, hand to the service on the private loop, wait.

All state lives in a ``Service`` on the client's event loop thread (see ``_loop``), so the sync API
works in scripts, Jupyter cells and threads, and the async API works from any loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ._config import ClientConfig, ProviderConfig, default_providers, load_config, parse_client_config
from ._handle import Handle
from ._loop import ClientLoop, LoopFactory, LoopThread, fork_generation, shared_loop
from ._streams import AsyncStream, Stream, _Feed
from ._types import EmbeddingResponse, Request, Response
from ._validate import build_request
from .cache import with_mode
from .monitor import Monitor

if TYPE_CHECKING:
    import pandas as pd

    from ._events import Event
    from ._service import Service
    from .providers.base import Provider


#: ``completion_async`` keeps results packed once this many wait to be fetched (see ``llmkit._handle``).
PACK_FROM = 1_000


class _Results:
    """Results of ``completion_async`` requests, kept until fetched: nothing is ever dropped.

    At most ``limit`` unfetched requests (running or finished) are held; one more submission raises
    ``ResultLimitError`` instead of silently forgetting an older answer. Every operation is O(1).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._futures: dict[str, Handle[Response] | bytes] = {}  # bytes: a finished response, packed
        self._reserved = 0  # slots taken by submissions between reserve() and add()/release()
        self._lock = threading.Lock()

    def reserve(self) -> None:
        """Take one slot, or raise ``ResultLimitError`` when ``limit`` results are already waiting to be
        fetched. Check and take happen under one lock, so concurrent submitters never pass the limit;
        the slot is handed to ``add`` or given back with ``release``."""
        with self._lock:
            held = len(self._futures) + self._reserved
            if held >= self.limit:
                from ._errors import ResultLimitError

                raise ResultLimitError(
                    f"{held} results of completion_async are waiting to be fetched (max_results="
                    f"{self.limit}); fetch some with get_result() first, or raise max_results")
            self._reserved += 1

    def add(self, request_id: str, future: Handle[Response]) -> None:
        """Fill a slot taken by ``reserve``."""
        with self._lock:
            self._reserved -= 1
            self._futures[request_id] = future
        future.keep_in(self, request_id)

    def settled(self, request_id: str, handle: Handle[Any]) -> None:
        """A held request finished packed: keep its bytes alone (no object for the collector to walk)."""
        with self._lock:
            if self._futures.get(request_id) is handle:
                self._futures[request_id] = handle.packed_value()

    def release(self) -> None:
        """Give back a slot taken by ``reserve`` whose submission failed."""
        with self._lock:
            self._reserved -= 1

    def __len__(self) -> int:
        return len(self._futures)

    def get(self, request_id: str) -> Handle[Response]:
        with self._lock:
            try:
                held = self._futures[request_id]
            except KeyError:
                raise KeyError(f"unknown request id {request_id!r} (never submitted, or already fetched)") from None
        return Handle.from_packed(held) if type(held) is bytes else held  # type: ignore[return-value]

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._futures.pop(request_id, None)


class Client:
    """One client for every configured provider. See the README for the full tour.

    ``Client()`` uses the providers whose keys are in the environment (``OPENAI_API_KEY``,
    ``ANTHROPIC_API_KEY``), else the offline ``mock`` adapter. ``providers``: a list of dicts or
    ``ProviderConfig``; ``fallbacks``: model -> equivalent models; ``ledger``: a SQLite path,
    ``"default"`` (the user's data folder) or ``None`` (memory only); ``budget_usd`` with
    ``budget_period`` ("day", "month" or "total"); ``timeout``: the overall deadline of a request.
    ``cache``: the response cache (``True``, a file path or ``":memory:"``; see ``cache_info``), with
    ``cache_ttl`` and ``cache_max_bytes``.

    For tests and simulations: ``sleep`` (an async callable) replaces the waits of retries and server
    pauses, ``clock`` the clock of breakers, health and cache expiry, ``loop_factory`` the private event loop
    (``llmkit.testing.VirtualTimeLoop`` makes time-driven behaviour instant).
    """

    def __init__(self, providers: Sequence[Mapping[str, Any] | ProviderConfig] | None = None, *,
                 fallbacks: Mapping[str, Sequence[str]] | None = None,
                 ledger: str | os.PathLike[str] | None = "default",
                 budget_usd: float | None = None, budget_period: str | None = None, timeout: float | None = 600.0,
                 health_interval: float | None = 30.0, config: ClientConfig | None = None,
                 sleep: Any = None, clock: Any = None, loop_factory: LoopFactory | None = None,
                 **options: Any) -> None:
        if config is None:
            raw: dict[str, Any] = {
                "providers": list(providers) if providers is not None else list(default_providers()),
                "fallbacks": dict(fallbacks or {}), "ledger": ledger, "budget_usd": budget_usd,
                "budget_period": budget_period, "timeout": timeout, "health_interval": health_interval,
                **options,
            }
            config = parse_client_config(raw)
        if not config.providers:
            config = parse_client_config({**_as_dict(config), "providers": list(default_providers())})
        self.config = config
        self._closed = False
        self._results = _Results(config.max_results)
        self._generation = fork_generation()
        self._make = (loop_factory, sleep, clock)  # what a forked child rebuilds from (see _after_fork)
        self._loop_thread = self._new_loop(loop_factory)
        self._svc: Service = self._loop_thread.run(self._build(sleep, clock))

    def _new_loop(self, loop_factory: LoopFactory | None) -> ClientLoop:
        loop = LoopThread(loop_factory=loop_factory) if loop_factory else shared_loop()
        if loop is not shared_loop():  # a client dropped unclosed stops its loop thread once collected
            weakref.finalize(self, loop.stop)
        # async callers run requests on their own loop, except under a test loop factory (virtual time) or
        # with shared state (its Redis connection lives on the private loop)
        return ClientLoop(loop, direct=loop_factory is None and self.config.shared_state is None)

    # A client used before os.fork() works in the child: the child has none of the parent's threads (the
    # loop, the ledger writer), so on first use there it builds a new loop and service from its config
    # (connection pools, limiters, breakers, health checks; a file ledger is reopened and reloaded, a
    # memory-only one starts empty). The parent's queued results are not the child's to fetch.

    @property
    def _loop(self) -> ClientLoop:
        if self._generation != fork_generation():
            self._after_fork()
        return self._loop_thread

    @property
    def _service(self) -> Service:
        if self._generation != fork_generation():
            self._after_fork()
        return self._svc

    def _after_fork(self) -> None:
        self._generation = fork_generation()
        _left_behind.append(self._svc)  # the parent's; never closed or collected here
        loop_factory, sleep, clock = self._make
        self._results = _Results(self.config.max_results)
        self._loop_thread = self._new_loop(loop_factory)
        if not self._closed:
            self._svc = self._loop_thread.run(self._build(sleep, clock))

    async def _build(self, sleep: Any, clock: Any) -> Service:
        from ._service import Service

        service = Service(self.config, clock or asyncio.get_running_loop().time, sleep=sleep, cache_clock=clock)
        service.start()
        return service

    @classmethod
    def from_config(cls, path_or_dict: str | os.PathLike[str] | Mapping[str, Any], **overrides: Any) -> Client:
        """Build a client from a TOML file or a dict of the same shape."""
        config = load_config(path_or_dict)
        if overrides:
            config = parse_client_config({**_as_dict(config), **overrides})
        return cls(config=config)

    # -- calls ---------------------------------------------------------------------------------

    def _request(self, model: Any, messages: Any, _stream: bool = False, **kwargs: Any) -> Request:
        self._check_open()
        cache = kwargs.pop("cache", None)
        named = {k: kwargs.pop(k) for k in ("temperature", "max_tokens", "timeout", "priority", "metadata",
                                              "provider") if k in kwargs}
        request = build_request(model, messages, stream=_stream, extra=kwargs, **named)
        self._service.router.candidates(request.model, request.provider)  # NoProviderError before any I/O
        return request if cache is None else with_mode(request, cache)

    def completion(self, model: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Response:
        """Send one chat completion and wait for it. Raises the request's typed error."""
        request = self._request(model, messages, **kwargs)
        return self._loop.call(self._service.execute(request))

    async def acompletion(self, model: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Response:
        """``completion`` for async code (any event loop, a notebook's included)."""
        request = self._request(model, messages, **kwargs)
        return await self._loop.arun(self._service.execute(request))

    def completion_async(self, model: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> str:
        """Queue a request and return its id at once; fetch it with ``get_result``."""
        request = self._request(model, messages, **kwargs)
        self._results.reserve()
        try:
            self._service.note_submitted()
            # Once many results wait, each new one is kept packed (one bytes value the garbage collector
            # skips): full collections then cost about the same at 100,000 results held as at 1,000.
            pack = len(self._results) >= PACK_FROM
            future = self._loop.hold(self._service.execute(request, submitted=True), pack)
        except BaseException:
            self._results.release()
            raise
        self._results.add(request.id, future)
        return request.id

    def get_result(self, request_id: str, timeout: float | None = None) -> Response:
        """Wait for a queued request. Unknown id: ``KeyError``; past ``timeout``: ``TimeoutError``
        (the request keeps running and can be fetched later)."""
        future = self._results.get(request_id)
        if self._loop.in_loop_thread() and not future.done():
            raise RuntimeError("get_result would block llmkit's own loop; use await client.aget_result(...)")
        if not future.done():
            self._loop.check_can_block(self._service.saturated)
        try:
            future.join(timeout)
        except BaseException as exc:
            if not future.done():  # our wait timed out (or was interrupted); the request keeps running
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(f"request {request_id} not finished within {timeout}s; "
                                       "it keeps running") from None
                raise
        return self._fetch(request_id, future)

    def _fetch(self, request_id: str, future: Handle[Response]) -> Response:
        """Hand over a finished request's outcome (its response, or its own error) and forget it."""
        self._results.forget(request_id)
        return future.outcome()

    async def aget_result(self, request_id: str, timeout: float | None = None) -> Response:
        """``get_result`` for async code."""
        future = self._results.get(request_id)
        try:
            await asyncio.wait_for(future.wait(), timeout)
        except BaseException as exc:
            if not future.done():
                if isinstance(exc, TimeoutError):
                    raise TimeoutError(f"request {request_id} not finished within {timeout}s; "
                                       "it keeps running") from None
                raise
        return self._fetch(request_id, future)

    def cancel(self, request_id: str) -> bool:
        """Cancel a queued or running request; True if it was still running."""
        return self._results.get(request_id).cancel()

    def stream(self, model: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> Stream:
        """``for chunk in client.stream(...)``; the stream's ``.response`` holds usage and cost at the end."""
        request = self._request(model, messages, True, **kwargs)
        self._loop.check_can_block(self._service.saturated)
        return Stream(self._loop.thread, lambda: self._feed(request))

    def astream(self, model: str, messages: Sequence[Mapping[str, Any]], **kwargs: Any) -> AsyncStream:
        """``async for chunk in client.astream(...)``."""
        request = self._request(model, messages, True, **kwargs)
        return AsyncStream(self._loop.thread, lambda: self._feed(request))

    async def _feed(self, request: Request) -> _Feed:
        return _Feed(lambda emit: self._service.stream(request, emit))

    # -- embeddings (llmkit/embeddings.py) -----------------------------------------------------

    def embedding(self, model: str, input: str | Sequence[str], **kwargs: Any) -> EmbeddingResponse:
        """Embed ``input`` in one routed call: ``vectors`` is a float32 numpy array, one row per text."""
        from .embeddings import build_embedding_request, run_embedding

        self._check_open()
        return self._loop.call(run_embedding(self._service, build_embedding_request(model, input, **kwargs)))

    async def aembedding(self, model: str, input: str | Sequence[str], **kwargs: Any) -> EmbeddingResponse:
        from .embeddings import build_embedding_request, run_embedding

        self._check_open()
        return await self._loop.arun(run_embedding(self._service, build_embedding_request(model, input, **kwargs)))

    def embed(self, data: Any, model: str, *, batch_size: int | None = None, as_array: bool = False,
              progress: bool = True, max_concurrency: int | None = None, cache: Any = True, **kwargs: Any) -> Any:
        """Embed a Series or list of texts in batches: a DataFrame with the input's index and one
        ``embedding`` column (a numpy array with ``as_array=True``). See ``llmkit.embeddings``.

        ``cache=True`` (the default) uses the client's per-text cache: none with ``Client(cache=False)``; in
        memory (no file) when the client has no ``cache=`` setting and ``ledger=None``; else the client's
        response cache (``cache=`` a file, ``":memory:"``, ``"redis"``, a backend; by default ``cache.sqlite3``
        beside the ledger). ``cache=False`` skips it for this call; any object with ``get_many``/``put_many``
        is used instead."""
        from .embeddings import embed

        self._check_open()
        self._loop.check_can_block()
        return embed(self._loop, self._service, data, model, batch_size=batch_size, as_array=as_array,
                     progress=progress, max_concurrency=max_concurrency, cache=self._embed_cache(cache), **kwargs)

    async def aembed(self, data: Any, model: str, *, batch_size: int | None = None, as_array: bool = False,
                     progress: bool = True, max_concurrency: int | None = None, cache: Any = True,
                     **kwargs: Any) -> Any:
        from .embeddings import aembed

        self._check_open()
        return await aembed(self._loop, self._service, data, model, batch_size=batch_size, as_array=as_array,
                            progress=progress, max_concurrency=max_concurrency, cache=self._embed_cache(cache),
                            **kwargs)

    def _embed_cache(self, cache: Any) -> Any:
        """``cache=True``: the client's per-text embedding cache (``llmkit.embeddings.client_cache``: none for
        ``Client(cache=False)``, in memory for a memory-only client, else the response cache's store);
        False/None: none; else the object given."""
        if cache is True:
            from .embeddings import client_cache

            made = getattr(self, "_embeddings_cache", False)
            if made is False:
                made = self._embeddings_cache = client_cache(self.config, self._service.cache)
            return made
        return None if cache is None or cache is False else cache
    # -- batches -------------------------------------------------------------------------------

    def map(self, inputs: Any, *, model: str, prompt: str | None = None, system: str | None = None,
            response_model: Any = None, max_concurrency: int | None = None, on_error: str = "record",
            progress: Any = True, cache: Any = True, **call_kwargs: Any) -> pd.DataFrame:
        """One request per row of a Series, DataFrame or list; a DataFrame of answers with the input's
        index. Errors stay in their rows; Ctrl-C keeps what finished. See ``llmkit.batch``."""
        from .batch import map_rows

        self._check_open()
        self._loop.check_can_block()
        return map_rows(self, self._loop, inputs, model=model, prompt=prompt, system=system,
                        response_model=response_model, max_concurrency=max_concurrency, on_error=on_error,
                        progress=progress, cache=cache, **call_kwargs)

    async def amap(self, inputs: Any, *, model: str, prompt: str | None = None, system: str | None = None,
                   response_model: Any = None, max_concurrency: int | None = None, on_error: str = "record",
                   progress: Any = True, cache: Any = True, **call_kwargs: Any) -> pd.DataFrame:
        """``map`` for async code; cancelling it cancels the rows in flight."""
        from .batch import amap

        self._check_open()
        return await amap(self, self._loop, inputs, model=model, prompt=prompt, system=system,
                          response_model=response_model, max_concurrency=max_concurrency, on_error=on_error,
                          progress=progress, cache=cache, **call_kwargs)

    def estimate(self, inputs: Any, *, model: str, prompt: str | None = None, system: str | None = None,
                 cache: Any = True, budget_usd: float | None = None, **call_kwargs: Any) -> Any:
        """What ``map`` with the same arguments would send and cost, without sending anything: a mapping
        with requests, cached, input_tokens, max_output_tokens, cost_usd_low, cost_usd_high."""
        from .estimate import estimate

        self._check_open()
        return estimate(self, inputs, model=model, prompt=prompt, system=system, cache=cache,
                        budget_usd=budget_usd, **call_kwargs)

    # -- observability -------------------------------------------------------------------------

    def usage(self, since: Any = None, until: Any = None, scope: str | None = None) -> pd.DataFrame:
        """One row per finished request (ok or error), with tokens, cost, latency and ``meta.<key>``
        columns. This session by default; ``since``/``until`` (ISO string, datetime, or a duration back
        from now like "7d") reach every session in that range, ``scope="all"`` the whole ledger."""
        from .frames import usage_frame

        return usage_frame(self._service.ledger, self._selection(since, until, scope))

    def cost_summary(self, by: str | Sequence[str] = ("provider", "model"), since: Any = None, until: Any = None,
                     scope: str | None = None) -> pd.DataFrame:
        """Requests, tokens and cost grouped ``by`` provider, model, day, "meta.<key>", ... over the records
        ``usage`` would return for the same ``since``/``until``/``scope`` (budget in ``.attrs``)."""
        from .frames import cost_summary_frame

        frame = cost_summary_frame(self._service.ledger, by=by, selection=self._selection(since, until, scope))
        frame.attrs["budget"] = self.budget_status()
        return frame

    def _selection(self, since: Any, until: Any, scope: str | None) -> Any:
        from .ledger.queries import selection

        return selection(since, until, scope, session_id=self.session_id, now=self._service.wallclock())

    def prune_ledger(self, before: Any, rollup: bool = True) -> dict[str, Any]:
        """Delete the ledger file's requests that finished before ``before`` (a date, datetime, ISO string,
        or an age like "90d"), from every session. With ``rollup`` their daily totals per provider and
        model stay, so ``cost_summary(by="day", scope="all")`` and the budget still count them.
        Returns ``{"deleted", "before", "rollup", "rollup_rows"}``."""
        from ._errors import ConfigError
        from .ledger.queries import to_epoch

        history = self._service.ledger.history
        if history is None:
            raise ConfigError("prune_ledger needs a ledger file; this client keeps its ledger in memory only")
        cutoff = to_epoch(before, "before", self._service.wallclock())
        assert cutoff is not None
        return history.prune(cutoff, rollup=rollup)

    def health(self) -> pd.DataFrame:
        """One row per provider: breaker state, health, uptime, error rate, latency percentiles.

        ``requests``/``errors``/``error_rate`` count the calls this provider received in the rolling
        window (retries included), which is what its health is judged on."""
        from .frames import health_frame

        return health_frame(self._service.health.rows())

    def latency(self, freq: str = "10s", since: Any = None, until: Any = None,
                scope: str | None = None) -> pd.DataFrame:
        """Latency p50/p95 and request counts per provider over time, for plots (records as ``usage``)."""
        from .frames import latency_frame

        return latency_frame(self._service.ledger, freq=freq, selection=self._selection(since, until, scope))

    def events(self, kind: str | None = None) -> pd.DataFrame:
        """Attempts, retries, fallbacks, breaker transitions, waits and health checks, oldest first."""
        from .frames import events_frame

        return events_frame(self._service.events.snapshot(kind), kind)

    def event_list(self, kind: str | None = None) -> list[Event]:
        return self._service.events.snapshot(kind)

    def budget_status(self) -> dict[str, Any] | None:
        """The budget: limit_usd, period, period_start (UTC), spent_usd, reserved_usd, remaining_usd,
        used_pct; None when no budget is set."""
        budget = self._service.budget
        if budget is None:
            return None
        refresh = getattr(budget, "refresh", None)  # a shared (Redis) budget: the team's spend, read now
        if refresh is not None and not self._closed and not self._loop.in_loop_thread():
            try:
                self._loop.run(refresh(), timeout=5.0)
            except Exception as err:  # Redis away or slow: the last known figures (local ones at worst)
                from ._secrets import logger

                logger.debug("reading the shared budget: %s", err)
        status = dict(budget.status())
        start = status.get("period_start")
        if isinstance(start, (int, float)):
            status["period_start"] = datetime.fromtimestamp(start, UTC)
        for key in ("spent_usd", "reserved_usd", "remaining_usd"):
            if isinstance(status.get(key), float):
                status[key] = round(status[key], 12)
        return status

    def cache_info(self) -> dict[str, Any]:
        """The response cache: ``hits``, ``misses`` and ``saved_usd`` (this client's), ``entries`` and
        ``size_bytes`` (the whole file, shared with other clients), and its ``path``."""
        return self._service.cache.info()

    def clear_cache(self) -> None:
        """Empty the response cache (for every client on its file) and reset this client's hit counts."""
        self._service.cache.clear()

    def queue_depth(self) -> int:
        """Requests waiting right now: queued by ``completion_async`` and not started, or waiting for a
        provider's concurrency slot or rate limit."""
        return self._service.waiting

    def in_flight(self) -> int:
        """Requests submitted and not yet finished (waiting or running)."""
        return self._service.pending

    def check_health(self, provider: str | None = None) -> pd.DataFrame:
        """Run a health check now (all providers, or one) and return ``health()``."""
        self._loop.run(self._service.health.check(provider))
        return self.health()

    def provider(self, name: str) -> Provider:
        """The adapter instance behind a provider name (e.g. to drive the mock's ``set_down``)."""
        try:
            return self._service.providers[name]
        except KeyError:
            raise KeyError(f"no provider named {name!r}; configured: {sorted(self._service.providers)}") from None

    @property
    def monitor(self) -> Monitor:
        """The public, read-only view of this client's records, events and health (for dashboards)."""
        return Monitor(self._service)

    @property
    def session_id(self) -> str:
        """This client's session: every record it writes carries it (``usage()`` columns ``session_id``)."""
        return self._service.session_id

    @property
    def providers(self) -> list[str]:
        return [s.name for s in self._service.router.slots]

    # -- dashboard -----------------------------------------------------------------------------

    def dashboard(self, **options: Any) -> Any:
        """The live dashboard as a Panel object: shows inline in a notebook."""
        return _dashboard_app().create_app(self, **options)

    def serve_dashboard(self, port: int = 0, address: str = "127.0.0.1", show: bool = False, **options: Any) -> Any:
        """Serve the dashboard from this process; returns a handle with ``.url`` and ``.stop()``."""
        return _dashboard_app().serve(self, port=port, address=address, show=show, **options)

    # -- lifecycle -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            from ._errors import ClientClosedError

            raise ClientClosedError("this client is closed")

    def close(self) -> None:
        """Stop background work, release connections and flush the ledger."""
        if self._closed:
            return
        self._closed = True
        # a loop running in this thread (a notebook cell) is blocked until the close returns
        self._loop.run(self._service.aclose(parked=asyncio._get_running_loop()))
        self._loop.settle_here()  # this thread's connections for sync calls close now
        if self._loop.thread is not shared_loop():
            self._loop.stop()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._loop.arun(self._service.aclose())
        if self._loop.thread is not shared_loop():  # return the private loop's thread, as close() does
            await asyncio.get_running_loop().run_in_executor(None, self._loop.stop)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        names = ", ".join(f"{p.name}({p.adapter})" for p in self.config.providers)
        state = "closed" if self._closed else "open"
        return f"<llmkit.Client [{names}] {state}>"


_left_behind: list[Any] = []  # in a forked child: the parent's services, kept from the garbage collector


def _as_dict(config: ClientConfig) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(config, f.name) for f in fields(config)}


def _dashboard_app() -> Any:
    """The dashboard, loaded on demand. It stands above the client (it reads the client through public
    names only), so the client names it instead of importing it: no import cycle, and Panel stays out of
    ``import llmkit``."""
    import importlib

    return importlib.import_module("llmkit.dashboard.app")
