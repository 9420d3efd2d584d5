"""The one connection to Redis behind shared state, and what happens when Redis goes away.

``RedisLink`` runs Lua scripts (one round trip each, atomic on the server) and never raises a Redis
error: a failed call marks the link down, emits a ``shared_state`` warning event (``state="down"``) and
returns None, so the caller falls back to its local state. While down, calls return None at once (no
connection attempts, no added latency) until ``retry_s`` has passed; the next call then tries again and,
when Redis answers, emits ``state="up"`` and sharing resumes. ``spawn`` runs fire-and-forget updates
(a breaker's report, a budget's settle) that ``aclose`` waits for.

The ``redis`` package (``pip install llmkit[redis]``) is imported on first use only.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from .._events import EventLog
from .._secrets import logger, redact

#: Connections to Redis per client; more callers at once wait their turn for one.
MAX_CONNECTIONS = 16


class RedisLink:
    """Scripts on one Redis (``url``), keys under ``namespace``; degrades to None when Redis is away."""

    def __init__(self, url: str, namespace: str, events: EventLog, *, retry_s: float = 1.0,
                 timeout_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.namespace = namespace
        self.events = events
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self._clock = clock
        self.up: bool | None = None  # None: not tried yet
        self.failures = 0
        self._retry_at = 0.0
        self._client: Any = None
        self._scripts: dict[str, str] = {}  # name -> SHA1 of its source
        self._tasks: set[asyncio.Task[Any]] = set()
        self._slots: asyncio.Semaphore | None = None  # created on the loop that uses the link

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    @property
    def available(self) -> bool:
        """Whether a call may go to Redis now: up, not tried yet, or down long enough to try again."""
        return self.up is not False or self._clock() >= self._retry_at

    @property
    def sharing(self) -> bool:
        """Whether the last call reached Redis."""
        return self.up is True

    def _connect(self) -> Any:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # at most MAX_CONNECTIONS calls are in flight (``_slots``), so the pool never runs out and refuses
        return aioredis.Redis.from_url(
            self.url, max_connections=MAX_CONNECTIONS + 4, socket_timeout=self.timeout_s,
            socket_connect_timeout=self.timeout_s, retry=Retry(NoBackoff(), 0), health_check_interval=0)

    async def run(self, name: str, source: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the Lua ``source`` (cached by ``name``) atomically; None when Redis is not reachable."""
        if not self.available:
            return None
        try:
            if self._client is None:
                self._client = self._connect()
            sha = self._scripts.get(name)
            if sha is None:
                sha = self._scripts[name] = hashlib.sha1(source.encode()).hexdigest()
            if self._slots is None:
                self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
            async with self._slots:
                try:
                    result = await self._client.execute_command("EVALSHA", sha, len(keys), *keys, *args)
                except Exception as exc:
                    if type(exc).__name__ != "NoScriptError":  # (redis.exceptions: imported on first use only)
                        raise
                    result = await self._client.execute_command("EVAL", source, len(keys), *keys, *args)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a connection, timeout or server error: local state takes over
            self._went_down(exc)
            return None
        if self.up is not True:
            self._came_up()
        return result

    async def ping(self) -> bool:
        """One round trip (at start: an unreachable Redis is reported at once)."""
        return await self.run("ping", "return 1", [], []) is not None

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` in the background on the running loop (kept until done; ``aclose`` waits)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _went_down(self, exc: BaseException) -> None:
        self.failures += 1
        self._retry_at = self._clock() + self.retry_s
        if self.up is False:
            return
        self.up = False
        message = redact(f"{type(exc).__name__}: {exc}")[:300]
        logger.warning("llmkit shared state: Redis unreachable (%s); using local state, retrying every %gs",
                       message, self.retry_s)
        self.events.emit("shared_state", None, state="down", error=type(exc).__name__, error_message=message,
                         retry_s=self.retry_s)

    def _came_up(self) -> None:
        resumed = self.up is False
        self.up = True
        if resumed:
            logger.warning("llmkit shared state: Redis is back; sharing resumed")
        self.events.emit("shared_state", None, state="up", resumed=resumed)

    async def aclose(self) -> None:
        """Finish background updates (briefly), then close the connection pool."""
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=2 * self.timeout_s + 1)
        for task in tasks:
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            try:
                await client.aclose()
            except Exception as err:  # closing must not fail because Redis went away
                logger.debug("closing the Redis link: %s", err)

    def __repr__(self) -> str:
        state = {None: "untried", True: "up", False: "down"}[self.up]
        return f"<RedisLink {self.namespace!r} {state}>"
