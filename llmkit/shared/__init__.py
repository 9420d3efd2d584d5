"""Shared state on Redis: one rate limit, one breaker and one budget for every client on the same Redis.

``Client(shared_state="redis://host:port/db", namespace="llmkit")`` wires it (``SharedState.attach``):
each provider's throttle gets ``SharedLimits`` behind its ``Limits`` hook, each breaker is wrapped in
a ``SharedBreaker`` and the budget in a ``SharedBudget``; the local objects stay underneath and decide
whenever Redis is away (``link``: a warning event, never a failed call; sharing resumes when Redis
answers again). This package sits just below ``routing`` and imports nothing from it: it sees the
routing objects through the small protocols each module declares.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from .._errors import ConfigError
from .._events import EventLog
from .breaker import SharedBreaker
from .budget import SharedBudget
from .limits import SharedLimits
from .link import RedisLink

__all__ = ["RedisLink", "SharedBreaker", "SharedBudget", "SharedLimits", "SharedState", "check_available"]


def check_available() -> None:
    """``ConfigError`` when the ``redis`` package is missing (checked at construction, before any I/O)."""
    if importlib.util.find_spec("redis") is None:
        raise ConfigError("shared_state needs the redis package: pip install 'llmkit[redis]'")


class SharedState:
    """A client's link to Redis and the shared objects built on it."""

    def __init__(self, url: str, namespace: str, events: EventLog) -> None:
        check_available()
        self.link = RedisLink(url, namespace, events)
        self.breakers: dict[str, SharedBreaker] = {}
        self.limits: dict[str, SharedLimits] = {}
        self.budget: SharedBudget | None = None

    def attach(self, slots: Sequence[Any], events: EventLog) -> None:
        """Share each slot's rate limits and breaker (in place, before anything reads them)."""
        for slot in slots:
            config = slot.config
            throttle = slot.throttle
            if config.rate_limit is not None or config.tokens_per_minute:
                limits = SharedLimits(slot.name, config.rate_limit, config.tokens_per_minute, self.link,
                                      throttle.limits)
                throttle.limits = self.limits[slot.name] = limits
            breaker = SharedBreaker(slot.name, config.breaker, config.timeout, self.link, slot.breaker, events)
            slot.breaker = self.breakers[slot.name] = breaker
            if slot.name in self.limits:
                self.limits[slot.name].breaker = breaker  # one round trip per call for both

    def share_budget(self, budget: Any, events: EventLog) -> SharedBudget:
        """The budget to use: ``budget`` (the local one) with its spend shared."""
        self.budget = SharedBudget(budget, self.link, events)
        return self.budget

    def start(self) -> None:
        """On the loop: try Redis once now, so an unreachable one is reported at start."""
        self.link.spawn(self.link.ping())

    async def aclose(self) -> None:
        await self.link.aclose()
