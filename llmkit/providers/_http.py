"""The shared HTTP layer of the wire adapters: one lazily created ``httpx.AsyncClient`` per provider,
one POST (JSON or SSE) per call, transport errors mapped to llmkit errors, an SSE decoder, and the
parsing of rate-limit and retry-after headers.

Subclasses (``openai.py``, ``anthropic.py``) build the request body and translate the answer; they
implement ``_auth_headers`` and ``_error_for`` (a non-2xx response, parsed, to a typed error).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import re
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, cast

import httpx

from .._errors import ProviderConnectionError, ProviderError, ProviderTimeoutError
from .._secrets import redact, register_secret, split_userinfo
from .._types import RateLimitInfo
from .base import Provider

if TYPE_CHECKING:
    from .._config import ProviderConfig

# ----------------------------------------------------------------------------------------------
# SSE


@dataclass(slots=True)
class SSEEvent:
    """One server-sent event: ``event`` is None when the stream sent no ``event:`` line."""

    data: str
    event: str | None = None
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class SSEDecoder:
    """An incremental SSE decoder: ``feed(bytes)`` returns the events completed so far, ``flush()``
    the last one when the stream ends without a blank line. Handles LF, CRLF and lone CR (even when
    a CRLF is split across two chunks), ``:`` comments, ``event:``/``id:`` fields and multi-line data.

        >>> d = SSEDecoder()
        >>> d.feed(b'event: ping\\r\\ndata: {"a":1}\\r\\n\\r\\ndata: x')
        [SSEEvent(data='{"a":1}', event='ping', id=None)]
        >>> d.flush()
        [SSEEvent(data='x', event=None, id=None)]
    """

    __slots__ = ("_buffer", "_data", "_decoder", "_event", "_id")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        text = self._buffer + self._decoder.decode(chunk)
        if text.endswith("\r"):  # maybe the first half of a CRLF: wait for the next chunk
            self._buffer, text = "\r", text[:-1]
        else:
            self._buffer = ""
        lines = _LINE_BREAK.split(text)
        self._buffer = lines.pop() + self._buffer
        return [ev for ev in map(self._line, lines) if ev is not None]

    def flush(self) -> list[SSEEvent]:
        """The events left at end of stream (a final event without a trailing blank line)."""
        rest = (self._buffer + self._decoder.decode(b"", final=True)).rstrip("\r")
        self._buffer = ""
        events = [ev for ev in map(self._line, _LINE_BREAK.split(rest)) if ev is not None] if rest else []
        last = self._line("")
        return [*events, last] if last is not None else events

    def _line(self, line: str) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = None
                return None
            event = SSEEvent("\n".join(self._data), self._event, self._id)
            self._data, self._event = [], None
            return event
        if line[0] == ":":
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def parse_sse(payload: bytes) -> list[SSEEvent]:
    """Every event in a complete SSE payload."""
    decoder = SSEDecoder()
    return decoder.feed(payload) + decoder.flush()


# ----------------------------------------------------------------------------------------------
# rate-limit and retry-after headers

_GO_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|us|µs|ns|h|m|s)")


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Go duration (``6ms``, ``1s``, ``6m0s``, ``23m16.298s``) or a plain number."""
    if value is None:
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _GO_PART.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _GO_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and pos > 0 else None


def parse_timestamp_delay(value: str | None, now: float | None = None) -> float | None:
    """Seconds from ``now`` until an RFC 3339 timestamp (never negative)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        return parse_duration(value)
    return max(0.0, when - (time.time() if now is None else now))


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """``retry-after-ms`` (wins), else ``retry-after`` in seconds or as an HTTP date; seconds or None."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


_RATE_PREFIXES = ("x-ratelimit-", "anthropic-ratelimit-", "retry-after")


def parse_rate_limit_headers(headers: Mapping[str, str], now: float | None = None) -> RateLimitInfo | None:
    """Rate-limit state from OpenAI-style ``x-ratelimit-*`` or Anthropic ``anthropic-ratelimit-*``
    headers (plus retry-after); None when the response carried none of them.

    For Anthropic, whose limits are split into tokens / input-tokens / output-tokens, the token fields
    describe the most exhausted of the groups present (lowest remaining share of its limit).
    """
    keys = headers.keys()
    if not any(k.lower().startswith(_RATE_PREFIXES) for k in keys):
        return None  # the common case: one pass over the names instead of a dozen lookups
    retry_after = parse_retry_after(headers, now)
    info = RateLimitInfo(retry_after_s=retry_after)
    found = retry_after is not None
    if "x-ratelimit-limit-requests" in headers or "x-ratelimit-remaining-requests" in headers \
            or "x-ratelimit-remaining-tokens" in headers:
        info.limit_requests = _int(headers.get("x-ratelimit-limit-requests"))
        info.remaining_requests = _int(headers.get("x-ratelimit-remaining-requests"))
        info.reset_requests_s = parse_duration(headers.get("x-ratelimit-reset-requests"))
        info.limit_tokens = _int(headers.get("x-ratelimit-limit-tokens"))
        info.remaining_tokens = _int(headers.get("x-ratelimit-remaining-tokens"))
        info.reset_tokens_s = parse_duration(headers.get("x-ratelimit-reset-tokens"))
        found = True
    prefix = "anthropic-ratelimit-"
    if f"{prefix}requests-remaining" in headers or f"{prefix}requests-limit" in headers:
        info.limit_requests = _int(headers.get(f"{prefix}requests-limit"))
        info.remaining_requests = _int(headers.get(f"{prefix}requests-remaining"))
        info.reset_requests_s = parse_timestamp_delay(headers.get(f"{prefix}requests-reset"), now)
        found = True
    groups = []
    for group in ("tokens", "input-tokens", "output-tokens"):
        limit = _int(headers.get(f"{prefix}{group}-limit"))
        remaining = _int(headers.get(f"{prefix}{group}-remaining"))
        if limit is not None or remaining is not None:
            share = remaining / limit if (remaining is not None and limit) else 1.0
            groups.append((share, limit, remaining, headers.get(f"{prefix}{group}-reset")))
    if groups:
        _, info.limit_tokens, info.remaining_tokens, reset = min(groups, key=lambda g: g[0])
        info.reset_tokens_s = parse_timestamp_delay(reset, now)
        found = True
    return info if found else None


def error_retry_after(status: int, info: RateLimitInfo | None) -> float | None:
    """What an error should carry as ``retry_after``: the server's retry-after, or for a 429 the
    reset of an exhausted limit."""
    if info is None:
        return None
    if info.retry_after_s is not None:
        return info.retry_after_s
    return info.pause_s() if status == 429 else None


def should_retry_header(headers: Mapping[str, str]) -> bool | None:
    value = headers.get("x-should-retry")
    if value is None:
        return None
    value = value.strip().lower()
    return True if value == "true" else False if value == "false" else None


def redact_json(value: Any) -> Any:
    """``value`` with every string scrubbed of secrets (error bodies can echo a key)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact_json(v) for v in value]
    return value


# ----------------------------------------------------------------------------------------------
# the base adapter


@dataclass(slots=True)
class ErrorContext:
    """What ``_error_for`` gets to build an error from: status, parsed body (or None), headers."""

    status: int
    body: Any
    text: str
    headers: httpx.Headers
    rate_limit: RateLimitInfo | None
    request_id: str | None


#: Connections per httpx pool; a provider's ``max_concurrency`` is spread over several pools.
SHARD_CONNECTIONS = 4


async def _close_with_loop(pools: list[list[Any]], loop: asyncio.AbstractEventLoop) -> AsyncGenerator[None, None]:
    """Parked on ``loop`` as an async generator (``_park``), so the loop's ``shutdown_asyncgens`` closes these
    pools while the loop still runs: at the end of ``asyncio.run``, or as a thread's loop for sync calls goes.
    ``HTTPProvider.aclose`` closes it sooner. Closed anywhere else (its loop gone), it lets the pools go."""
    try:
        yield
    finally:
        if asyncio._get_running_loop() is loop:
            for client, *_ in pools:
                if not client.is_closed:
                    with contextlib.suppress(Exception):
                        await client.aclose()


def _park(gen: AsyncGenerator[None, None]) -> None:
    """Step ``gen`` to its ``yield`` now: the running loop's first-iteration hook starts tracking it."""
    step = gen.__anext__()
    with contextlib.suppress(StopIteration):
        step.send(None)


def _finish(gen: AsyncGenerator[None, None] | None) -> None:
    """Close a parked ``_close_with_loop`` whose loop is not running here (it awaits nothing then)."""
    if gen is None:
        return
    step = gen.aclose()
    try:
        step.send(None)
    except (StopIteration, StopAsyncIteration, RuntimeError):
        return
    step.close()  # pragma: no cover - it awaited: not its loop after all


#: Parsed request URLs and timeouts, shared by every adapter (both immutable; bounded, cleared when full).
_PARSED_URLS: dict[str, httpx.URL] = {}
_TIMEOUTS: dict[float, httpx.Timeout] = {}
_PARSED_URLS_MAX = 256


class HTTPProvider(Provider):
    """An adapter that speaks HTTP with one lazily created ``httpx.AsyncClient``.

    The client is created on first use inside the running event loop (and again if a later call runs
    on another loop), with the connection pool sized by ``config.max_concurrency``.
    """

    request_id_header: ClassVar[str] = "x-request-id"
    default_base_url: ClassVar[str] = ""

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.api_key = config.resolved_api_key()
        register_secret(self.api_key)
        base, _, query = (config.base_url or self.default_base_url).partition("?")
        # https://user:password@host: sent as Basic auth, kept out of every URL (and so of logs and errors)
        base, self._credentials = split_userinfo(base)
        self.base_url = base.rstrip("/")
        #: ``?api-version=...`` from ``base_url`` (Azure and gateways): kept on every request.
        self.base_query = query.partition("#")[0]
        # Connection pools per event loop (a connection belongs to the loop that opened it; requests may run
        # on several: the caller's and llmkit's own): loop -> [client, requests in flight, size] lists.
        self._loop_pools: dict[asyncio.AbstractEventLoop, list[list[Any]]] = {}
        self._closers: dict[asyncio.AbstractEventLoop, AsyncGenerator[None, None]] = {}  # see _close_with_loop
        self._pools_lock = threading.Lock()
        self._verify: Any = None

    # -- hooks -----------------------------------------------------------------------------------

    def _auth_headers(self) -> dict[str, str]:
        return {}

    def _error_for(self, ctx: ErrorContext) -> ProviderError:
        raise NotImplementedError

    # -- the client ------------------------------------------------------------------------------

    def _timeout(self, timeout: float | None) -> httpx.Timeout:
        total = timeout if timeout is not None else self.config.timeout
        made = _TIMEOUTS.get(total)
        if made is None:  # one object per distinct value (building one costs ~2 µs a request)
            if len(_TIMEOUTS) >= _PARSED_URLS_MAX:
                _TIMEOUTS.clear()
            made = _TIMEOUTS[total] = httpx.Timeout(total, connect=min(5.0, total))
        return made

    def _headers(self) -> dict[str, str]:
        return {"content-type": "application/json", "accept": "application/json",
                **self._auth_headers(), **dict(self.config.headers)}

    @property
    def client(self) -> httpx.AsyncClient:
        """The running loop's first pooled client (created on first use)."""
        return self._shards()[0][0]

    def _shards(self) -> list[list[Any]]:
        """The running loop's connection pools made so far, as ``[client, requests in flight, size]`` lists.

        ``max_concurrency`` connections are split over pools of at most ``SHARD_CONNECTIONS``: httpcore's
        pool does work for every connection it holds on each request it queues and releases
        (encode/httpcore#1035), so at 32 concurrent requests one 32-connection pool costs about three
        times the CPU per request of eight 4-connection pools, for the same connections in total.
        Pools are made lazily (:meth:`_lease` adds one when every pool made so far is full), so a large
        ``max_concurrency`` (a safety net) costs nothing until that many requests are in flight.
        Each event loop that sends requests has pools of its own (only that loop's thread touches them).
        """
        loop = asyncio.get_running_loop()
        pools = self._loop_pools.get(loop)
        if pools is None or pools[0][0].is_closed:
            pools = self._new_pools(loop)
        return pools

    def _new_pools(self, loop: asyncio.AbstractEventLoop) -> list[list[Any]]:
        """A first pool for ``loop`` (closed with the loop, see ``_close_with_loop``); pools of loops that
        have closed are let go."""
        if self._verify is None:  # a plain-http server (a local model) never needs TLS; https pools share one context
            self._verify = httpx.create_ssl_context() if not self.base_url.startswith("http://") else False
        pools: list[list[Any]] = []
        self._add_shard(pools)
        closer = _close_with_loop(pools, loop)
        _park(closer)
        with self._pools_lock:  # first calls on two loops at once: neither loses the other's pools
            gone = [other for other in self._loop_pools if other is loop or other.is_closed()]
            kept = {other: p for other, p in self._loop_pools.items() if other not in gone}
            kept[loop] = pools
            self._loop_pools = kept  # replaced whole: a reader on another loop's thread never sees it half-built
            for other in gone:
                _finish(self._closers.pop(other, None))
            self._closers[loop] = closer
        return pools

    def _add_shard(self, pools: list[list[Any]]) -> list[Any] | None:
        """One more pool of at most ``SHARD_CONNECTIONS`` (None once ``max_concurrency`` connections exist)."""
        made = sum(s[2] for s in pools)
        size = min(SHARD_CONNECTIONS, self.config.max_concurrency - made)
        if size <= 0:
            return None
        auth = httpx.BasicAuth(*self._credentials) if self._credentials is not None else None
        limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
        shard = [httpx.AsyncClient(headers=self._headers(), timeout=self._timeout(None), verify=self._verify,
                                   auth=auth, limits=limits), 0, size]
        pools.append(shard)
        return shard

    @contextlib.contextmanager
    def _lease(self) -> Iterator[httpx.AsyncClient]:
        """The least busy pool, for one request (a new pool when every one is full and the cap allows)."""
        pools = self._shards()
        shard = min(pools, key=lambda s: s[1])
        if shard[1] >= shard[2]:
            shard = self._add_shard(pools) or shard
        shard[1] += 1
        try:
            yield shard[0]
        finally:
            shard[1] -= 1

    def prepare(self) -> None:
        """Build the first connection pool now (TLS setup costs tens of ms), not inside the first call's timeout."""
        self._shards()

    def client_if_any(self) -> httpx.AsyncClient | None:
        """A pooled client if one was created (for inspection; does not create one)."""
        for pools in list(self._loop_pools.values()):
            if pools:
                return cast("httpx.AsyncClient", pools[0][0])
        return None

    async def aclose(self) -> None:
        """Close every loop's pools: the running loop's here, another loop's on that loop (at once if it is
        running; an idle one, a thread's loop for sync calls, on its next run: ``ClientLoop.settle_here``)."""
        here = asyncio.get_running_loop()
        with self._pools_lock:  # (every loop's pools have their closer: closing it closes them)
            self._loop_pools = {}
            closers, self._closers = self._closers, {}
        for loop, closer in closers.items():
            if loop is here:
                await closer.aclose()  # closes that loop's pools
            elif loop.is_closed():
                _finish(closer)
            else:
                try:
                    asyncio.run_coroutine_threadsafe(closer.aclose(), loop)
                except RuntimeError:  # it closed meanwhile
                    _finish(closer)

    def url(self, path: str) -> str:
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}{path}"
        if self.base_query:
            url = f"{url}{'&' if '?' in url else '?'}{self.base_query}"
        return url

    def _parsed_url(self, path: str) -> httpx.URL:
        """``url(path)`` as an ``httpx.URL``, parsed once per URL: httpx parses a string URL again on every
        request (~40 µs of each call). Keyed by the full string, so a changed ``base_url`` is honoured."""
        url = self.url(path)
        parsed = _PARSED_URLS.get(url)
        if parsed is None:
            if len(_PARSED_URLS) >= _PARSED_URLS_MAX:
                _PARSED_URLS.clear()
            parsed = _PARSED_URLS[url] = httpx.URL(url)
        return parsed

    # -- requests --------------------------------------------------------------------------------

    async def _post_json(self, path: str, body: dict[str, Any], timeout: float | None = None,
                         ) -> tuple[Any, httpx.Response]:
        """POST ``body`` and return the parsed JSON of a 2xx answer (else raise the typed error).

        ``timeout`` bounds the whole attempt, not only each read.
        """
        limit = timeout if timeout is not None else self.config.timeout
        try:
            async with asyncio.timeout(limit):
                with self._lease() as client:
                    request = client.build_request("POST", self._parsed_url(path), json=body,
                                                   timeout=self._timeout(timeout))
                    resp = await client.send(request, stream=True)
                    try:
                        await self._read_bounded(resp)
                    finally:
                        await resp.aclose()
        except TimeoutError:
            raise ProviderTimeoutError(f"no complete answer within {limit:g}s", provider=self.name) from None
        except httpx.HTTPError as exc:
            self._raise_transport(exc, limit)
        return self._parse_json(resp), resp

    async def _get(self, path: str, timeout: float | None = None) -> httpx.Response:
        """GET ``path``: the 2xx response, else the typed error (used by health checks)."""
        limit = timeout if timeout is not None else min(self.config.timeout, 10.0)
        try:
            async with asyncio.timeout(limit):
                with self._lease() as client:
                    resp = await client.send(client.build_request("GET", self._parsed_url(path),
                                                                  timeout=self._timeout(limit)), stream=True)
                    try:
                        await self._read_bounded(resp)
                    finally:
                        await resp.aclose()
        except TimeoutError:
            raise ProviderTimeoutError(f"no answer within {limit:g}s", provider=self.name) from None
        except httpx.HTTPError as exc:
            self._raise_transport(exc, limit)
        if not resp.is_success:
            raise self._status_error(resp, resp.text)
        return resp

    async def _stream_events(self, path: str, body: dict[str, Any], timeout: float | None = None,
                             state: dict[str, Any] | None = None) -> AsyncGenerator[SSEEvent, None]:
        """POST ``body`` and yield the SSE events of a 2xx answer (raise the typed error otherwise).

        ``timeout`` bounds the wait for the headers and each read, not the whole stream. When given,
        ``state`` receives the response under ``"response"`` once the headers are in.
        """
        limit = timeout if timeout is not None else self.config.timeout
        with self._lease() as client:
            request = client.build_request("POST", self._parsed_url(path), json=body,
                                           timeout=self._timeout(timeout))
            resp: httpx.Response | None = None
            try:
                async with asyncio.timeout(limit):
                    resp = await client.send(request, stream=True)
                if state is not None:
                    state["response"] = resp
                if not resp.is_success:
                    await self._read_bounded(resp)
                    text = resp.content.decode("utf-8", "replace")
                    raise self._status_error(resp, text)
                decoder = SSEDecoder()
                seen, cap = 0, self.config.max_response_bytes
                async for chunk in resp.aiter_bytes():  # decoded: gzip/deflate/br streams arrive readable
                    seen += len(chunk)
                    if seen > cap:
                        raise self._too_large(resp, cap)
                    for event in decoder.feed(chunk):
                        if event.data.strip():  # an empty ``data:`` line is a keep-alive, not an event
                            yield event
                for event in decoder.flush():
                    if event.data.strip():
                        yield event
            except TimeoutError:
                raise ProviderTimeoutError(f"no answer within {limit:g}s", provider=self.name) from None
            except httpx.HTTPError as exc:
                self._raise_transport(exc, limit)
            finally:
                if resp is not None:
                    await resp.aclose()

    async def _read_bounded(self, resp: httpx.Response) -> None:
        """Read the body of ``resp`` (decoded) into ``resp.content``, failing past ``max_response_bytes``."""
        cap = self.config.max_response_bytes
        declared = resp.headers.get("content-length", "")
        if declared.isdigit() and "content-encoding" not in resp.headers and int(declared) > cap:
            raise self._too_large(resp, cap)
        parts, seen = [], 0
        async for part in resp.aiter_bytes():
            seen += len(part)
            if seen > cap:
                raise self._too_large(resp, cap)
            parts.append(part)
        resp._content = b"".join(parts)  # what ``resp.content``/``resp.text`` return from now on

    def _too_large(self, resp: httpx.Response, cap: int) -> ProviderError:
        return ProviderError(
            f"response larger than max_response_bytes ({cap} bytes): refused instead of read into memory",
            provider=self.name, status=resp.status_code, code="response_too_large", retryable=False,
            request_id=resp.headers.get(self.request_id_header))

    # -- answers to errors -----------------------------------------------------------------------

    def _parse_json(self, resp: httpx.Response) -> Any:
        if not resp.is_success:
            raise self._status_error(resp, resp.text)
        try:
            return json.loads(resp.content)
        except ValueError:
            raise ProviderConnectionError(
                f"malformed response (HTTP {resp.status_code}, not JSON): {resp.text[:200]!r}",
                provider=self.name, status=resp.status_code, request_id=resp.headers.get(self.request_id_header),
            ) from None

    def _status_error(self, resp: httpx.Response, text: str) -> ProviderError:
        try:
            body: Any = json.loads(text) if text.strip() else None
        except ValueError:
            body = None
        ctx = ErrorContext(
            status=resp.status_code, body=redact_json(body), text=redact(text[:500]), headers=resp.headers,
            rate_limit=parse_rate_limit_headers(resp.headers), request_id=resp.headers.get(self.request_id_header),
        )
        err = self._error_for(ctx)
        retry = should_retry_header(resp.headers)
        if retry is not None:
            err.retryable = retry
        return err

    def _error_kwargs(self, ctx: ErrorContext, code: str | int | None) -> dict[str, Any]:
        return {"provider": self.name, "status": ctx.status, "code": code, "body": ctx.body,
                "request_id": ctx.request_id, "retry_after": error_retry_after(ctx.status, ctx.rate_limit)}

    def _raise_transport(self, exc: httpx.HTTPError, limit: float) -> NoReturn:
        if isinstance(exc, httpx.TimeoutException):
            raise ProviderTimeoutError(f"{type(exc).__name__} after {limit:g}s: {exc}",
                                       provider=self.name) from None
        what = str(exc) or ("connection reset" if isinstance(exc, httpx.ReadError) else "connection failed")
        try:
            where = f" ({exc.request.method} {exc.request.url})"
        except RuntimeError:  # no request attached
            where = ""
        raise ProviderConnectionError(f"{type(exc).__name__}: {what}{where}", provider=self.name) from None

    def _stream_ended(self, expected: str) -> ProviderConnectionError:
        return ProviderConnectionError(f"stream ended before {expected}", provider=self.name)

