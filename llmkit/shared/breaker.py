"""Circuit breakers shared through Redis: one state, failure count and opened-at per provider for every
client on the same keys, so one process's outage discovery opens the breaker for all, and only one
half-open probe runs cluster-wide.

``SharedBreaker`` has the shape of ``routing.breaker.Breaker`` (the router and the health monitor call
the same methods) and keeps pybreaker's rules: ``fail_max`` consecutive failures open it; after
``reset_timeout`` one probe may go; its success closes it, its failure opens it again; an exception
that does not count against the breaker counts as a success; an open breaker counts nothing.

The state lives in a Redis hash (``state``, ``fails``, ``opened_at`` in Redis's microseconds) and the
probe in a key taken with ``SET NX PX`` (it expires after the provider's timeout, so a probe whose
process died does not hold the breaker half-open forever). Before each call the router awaits
``sync()``: one script reads the state into a local mirror and, when a probe is due, claims it; the
synchronous reads (``state``, ``retry_in``, ``admit``) then answer from the mirror. Reports go out in the
background, and a success on a closed breaker with no failures counted sends nothing. While Redis is
away the provider's local breaker decides.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, Protocol

from .._config import BreakerConfig
from .._errors import CircuitOpenError, ProviderConnectionError, counts_against_breaker
from .._events import EventLog
from .link import RedisLink

State = Literal["closed", "open", "half_open"]

SYNC = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 'state', 'fails', 'opened_at')
local state, fails, opened = h[1] or 'closed', tonumber(h[2] or '0'), tonumber(h[3] or '0')
local probe = 0
if ARGV[1] == '1' and (state == 'half_open' or (state == 'open' and now >= opened + tonumber(ARGV[2]))) then
  if redis.call('SET', KEYS[2], ARGV[3], 'NX', 'PX', ARGV[4]) then
    probe = 1
    if state == 'open' then
      state = 'half_open'
      redis.call('HSET', KEYS[1], 'state', state)
    end
  end
end
return {state, fails, string.format('%.0f', opened), string.format('%.0f', now), probe}
"""

REPORT = """
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
local h = redis.call('HMGET', KEYS[1], 'state', 'fails', 'opened_at')
local state, fails, opened = h[1] or 'closed', tonumber(h[2] or '0'), tonumber(h[3] or '0')
local outcome = ARGV[1]
if outcome == 'ok' and state ~= 'open' then
  state, fails = 'closed', 0
elseif outcome == 'fail' and state == 'half_open' then
  state, opened = 'open', now
elseif (outcome == 'fail' or outcome == 'check_fail') and state == 'closed' then
  fails = fails + 1
  if fails >= tonumber(ARGV[2]) then state, opened = 'open', now end
elseif outcome == 'check_ok' and state == 'open' then
  state = 'half_open'
end
if outcome ~= 'release' then
  redis.call('HSET', KEYS[1], 'state', state, 'fails', fails, 'opened_at', string.format('%.0f', opened))
  redis.call('PEXPIRE', KEYS[1], 604800000)
end
return {state, fails, string.format('%.0f', opened), string.format('%.0f', now), 0}
"""

_tokens = itertools.count()
#: How long the state the rate-limit script brought along stands in for ``sync()``'s own round trip.
PREFETCH_FRESH_S = 0.05


class LocalBreaker(Protocol):
    """The provider's own breaker (``routing.breaker.Breaker``), which decides while Redis is away."""

    transitions: list[tuple[float, State | None, State]]

    @property
    def state(self) -> State: ...

    @property
    def fail_count(self) -> int: ...

    def retry_in(self) -> float | None: ...

    def admit(self) -> bool: ...

    def report(self, exc: BaseException | None, probe: bool = False) -> None: ...

    def release_probe(self) -> None: ...

    def record_check(self, ok: bool, error: BaseException | None = None) -> None: ...


class SharedBreaker:
    """One provider's breaker, shared through Redis under ``<namespace>:breaker:{<provider>}``."""

    syncs = True  # the router awaits ``sync()`` before each ``admit()``

    def __init__(self, provider: str, config: BreakerConfig, timeout_s: float, link: RedisLink,
                 local: LocalBreaker, events: EventLog | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.provider = provider
        self.config = config
        self.local = local
        self._link = link
        self._events = events
        self._clock = clock
        base = link.key("breaker", "{" + provider + "}")
        self.keys = [base, base + ":probe"]
        self._lock_ms = int((timeout_s + 5.0) * 1000)
        self._owner = uuid.uuid4().hex[:12]
        # the mirror of the shared state, as of the last script's answer
        self._state: State = "closed"
        self._fails = 0
        self._opened_us = 0
        self._server_us = 0
        self._seen_at = clock()
        self._mirrored = False
        self._granted: str | None = None   # a probe claimed by sync() and not yet taken by admit()
        self._probe: str | None = None     # the probe this process is running
        self._prefetched_at: float | None = None  # when the rate-limit script last brought the state along
        self.transitions: list[tuple[float, State | None, State]] = []

    @property
    def shared(self) -> bool:
        """Whether the mirror is live (else the local breaker decides)."""
        return self._mirrored and self._link.sharing

    # -- reading -------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        if not self.shared:
            return self.local.state
        if self._state == "open" and self.retry_in() == 0.0:
            return "half_open"
        return self._state

    def retry_in(self) -> float | None:
        if not self.shared:
            return self.local.retry_in()
        if self._state != "open":
            return None
        elapsed = (self._server_us - self._opened_us) / 1e6 + (self._clock() - self._seen_at)
        return max(0.0, self.config.reset_timeout - elapsed)

    @property
    def fail_count(self) -> int:
        return self._fails if self.shared else self.local.fail_count

    # -- driving -------------------------------------------------------------------------------

    def new_token(self) -> str:
        return f"{self._owner}:{next(_tokens)}"

    def probe_args(self, token: str) -> list[Any]:
        """What a script needs to claim the probe as ``token``: reset timeout (µs), token, lock time (ms)."""
        return [int(self.config.reset_timeout * 1e6), token, self._lock_ms]

    def prefetched(self, result: Any, token: str) -> None:
        """The provider's rate-limit script read this breaker (and maybe claimed the probe) on its way."""
        self._apply(result)
        if int(result[4]):
            self._granted = token
        self._prefetched_at = self._clock()

    async def sync(self) -> None:
        """Before a call: read the shared state and claim the half-open probe when one is due (free when
        the rate-limit script did it just now)."""
        fetched, self._prefetched_at = self._prefetched_at, None
        if fetched is not None and self._clock() - fetched < PREFETCH_FRESH_S and self._link.sharing:
            return
        token = self.new_token()
        result = await self._link.run("breaker.sync", SYNC, self.keys, ["1", *self.probe_args(token)])
        if result is None:
            self._mirrored = False
            return
        self._apply(result)
        if int(result[4]):
            self._granted = token

    def admit(self) -> bool:
        """Raise ``CircuitOpenError``, or return True if this call is the (cluster-wide) half-open probe."""
        if not self.shared:
            return self.local.admit()
        if self._granted is not None:
            self._probe, self._granted = self._granted, None
            return True
        if self._state == "closed":
            return False
        wait = self.retry_in()
        raise CircuitOpenError(self.provider, wait if wait is not None else 0.0)

    def report(self, exc: BaseException | None, probe: bool = False) -> None:
        outcome = "ok" if exc is None or not counts_against_breaker(exc) else "fail"
        token = ""
        if probe:
            token, self._probe = self._probe or "", None
        if not self.shared:
            self.local.report(exc, probe)
            if token:
                self._send("release", token)
            return
        if outcome == "ok" and not token and self._state == "closed" and self._fails == 0:
            return  # nothing to change: no round trip on the common path
        self._send(outcome, token, lambda: self.local.report(exc, probe))

    def release_probe(self) -> None:
        token, self._probe = self._probe, None
        self.local.release_probe()
        if token:
            self._send("release", token)

    def record_check(self, ok: bool, error: BaseException | None = None) -> None:
        """A health-check result: a pass moves an open breaker to half-open; a failure counts while closed."""
        if not self.shared:
            self.local.record_check(ok, error)
            return
        if ok and self._state != "open":
            return
        if not ok and self._state != "closed":
            return
        if error is None and not ok:
            error = ProviderConnectionError("health check failed", provider=self.provider)
        self._send("check_ok" if ok else "check_fail", "", lambda: self.local.record_check(ok, error))

    # -- the mirror ----------------------------------------------------------------------------

    def _send(self, outcome: str, token: str, otherwise: Callable[[], None] | None = None) -> None:
        async def send() -> None:
            result = await self._link.run("breaker.report", REPORT, self.keys,
                                          [outcome, self.config.fail_max, token])
            if result is None:
                self._mirrored = False
                if otherwise is not None:
                    otherwise()
            else:
                self._apply(result)

        self._link.spawn(send())

    def _apply(self, result: Any) -> None:
        raw = result[0]
        state = raw.decode() if isinstance(raw, bytes) else str(raw)
        fails, opened, now = int(result[1]), int(result[2]), int(result[3])
        old = self._state if self._mirrored else None
        self._fails, self._opened_us, self._server_us, self._seen_at = fails, opened, now, self._clock()
        self._state = state if state in ("closed", "open", "half_open") else "closed"  # type: ignore[assignment]
        self._mirrored = True
        if old is not None and old != self._state:
            self.transitions.append((self._clock(), old, self._state))
            if self._events is not None:
                self._events.emit("breaker", self.provider, old=old, new=self._state, shared=True)

    def __repr__(self) -> str:
        return f"<SharedBreaker {self.provider} {self.state}{'' if self.shared else ' (local)'}>"
