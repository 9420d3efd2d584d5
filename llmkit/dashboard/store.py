"""The dashboard's data store: what the live views show, read incrementally from a client's service.

``DashboardStore`` is a ``param.Parameterized`` with no widgets (Panel's data-store pattern): the
views only read it, and watch ``version``, which ``refresh()`` bumps once per call. Each refresh
reads only what is new (ledger rows past the last one read, events past the last sequence number,
plus the small per-provider health rows), so its cost does not grow with the ledger: a ledger of
100,000 records costs what a ledger of 100 does once the first refresh has read it.

Time series are kept in bounded rolling buffers, in buckets of ``bucket_s`` seconds (wall clock, the
ledger's own time base). A bucket is published once its end has passed (plus a short grace for
records still being written); a record that finishes in an already published bucket counts in the
next one. Views keep a cursor into each buffer and stream just the new points.

Never shown: API keys (error messages are redacted again here) and prompt text, unless the
client's config has ``store_prompts`` on.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import param

if TYPE_CHECKING:
    from llmkit import Client

T = TypeVar("T")
STATES = ("closed", "half_open", "open")
NO_PROVIDER = "(none)"  # a request that failed before reaching any provider (budget, deadline)
GRACE_S = 0.25          # a bucket is published this long after its end


class Rolling(Generic[T]):
    """A bounded buffer that numbers what it was given, so readers can ask for what is new."""

    __slots__ = ("_items", "total")

    def __init__(self, maxlen: int) -> None:
        self._items: deque[T] = deque(maxlen=maxlen)
        self.total = 0  # items ever appended

    def append(self, item: T) -> None:
        self._items.append(item)
        self.total += 1

    def since(self, cursor: int) -> tuple[list[T], int, bool]:
        """Items appended after ``cursor``, the new cursor, and whether some were already dropped."""
        new = self.total - cursor
        if new <= 0:
            return [], self.total, False
        held = len(self._items)
        missed = new > held
        items = list(self._items) if missed else [self._items[i] for i in range(held - new, held)]
        return items, self.total, missed

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def last(self) -> T | None:
        return self._items[-1] if self._items else None


@dataclass(slots=True)
class Transition:
    time: float
    provider: str
    old: str | None
    new: str
    derived: bool = False  # seen in the health rows (open past its reset timeout) before any event


@dataclass(slots=True)
class _Bucket:
    """What happened in one time bucket; ``per`` maps provider -> [requests, errors, cost]."""

    per: dict[str, list[float]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    waits: int = 0
    waited_s: float = 0.0
    retries: int = 0
    fallbacks: int = 0

    def provider(self, name: str) -> list[float]:
        row = self.per.get(name)
        if row is None:
            row = self.per[name] = [0, 0, 0.0]
        return row


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile of unsorted ``values`` (NaN when empty)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class DashboardStore(param.Parameterized):
    """Live numbers for one client. Call ``refresh()`` (the app does, each tick); read the rest."""

    version = param.Integer(default=0, doc="Bumped at the end of every refresh; views watch it.")
    requests = param.Integer(default=0, doc="Finished requests (ok and error).")
    errors = param.Integer(default=0, doc="Finished requests that failed.")
    cost_usd = param.Number(default=0.0, doc="Priced cost of every finished request.")
    input_tokens = param.Integer(default=0)
    output_tokens = param.Integer(default=0)
    cache_hits = param.Integer(default=0, doc="Requests answered from the response cache.")
    saved_usd = param.Number(default=0.0, doc="What the cached answers cost when first asked (saved since).")
    retries = param.Integer(default=0, doc="Retries (events still in the client's event buffer).")
    fallbacks = param.Integer(default=0)
    waits = param.Integer(default=0, doc="Times a request waited for a rate limit or a concurrency slot.")
    waited_s = param.Number(default=0.0, doc="Seconds spent in those waits.")
    queue_depth = param.Integer(default=0)
    in_flight = param.Integer(default=0)
    budget = param.Dict(default=None, allow_None=True, doc="client.budget_status(), or None without a budget.")
    breaker_states = param.Dict(default={}, doc="provider -> 'closed' | 'open' | 'half_open', now.")
    health = param.List(default=[], doc="One dict per provider: HealthMonitor.rows().")
    batches = param.List(default=[], doc="Batches (client.map) running now: client.monitor.batches().")
    refresh_ms = param.Number(default=0.0, doc="How long the last refresh took.")

    def __init__(self, client: Client, *, bucket_s: float = 2.0, max_points: int = 1800, max_recent: int = 200,
                 max_transitions: int = 2000, show_prompts: bool | None = None,
                 clock: Callable[[], float] | None = None, **params: Any) -> None:
        super().__init__(**params)
        if bucket_s <= 0 or max_points < 1 or max_recent < 1:
            raise ValueError("bucket_s must be positive; max_points and max_recent at least 1")
        self.client = client
        self._monitor = client.monitor
        self.bucket_s = float(bucket_s)
        self.max_points = int(max_points)
        self.max_recent = int(max_recent)
        self.show_prompts = client.config.store_prompts if show_prompts is None else bool(show_prompts)
        self.clock: Callable[[], float] = clock or self._monitor.now
        self.providers: list[str] = list(client.providers)
        self.timeline: Rolling[dict[str, float]] = Rolling(max_points)   # one row per published bucket
        self.samples: Rolling[dict[str, float]] = Rolling(max_points)    # queue depth and in flight, per refresh
        self.recent: Rolling[dict[str, Any]] = Rolling(max_recent)       # newest requests
        self.transitions: Rolling[Transition] = Rolling(max_transitions)
        self.by_provider_model: dict[tuple[str, str], dict[str, float]] = {}
        self.origin: float | None = None  # where the timeline starts (epoch seconds)
        self._lock = threading.Lock()
        self._ledger_len = 0
        self._event_seq = 0
        self._buckets: dict[int, _Bucket] = {}
        self._next_bucket: int | None = None
        self._cum_cost: dict[str, float] = dict.fromkeys(self.providers, 0.0)
        self._state: dict[str, str] = {}

    # -- refreshing ----------------------------------------------------------------------------

    def refresh(self, now: float | None = None) -> None:
        """Read what is new in the client's ledger, events and health; publish finished buckets."""
        with self._lock:
            self._refresh(self.clock() if now is None else now)

    def _refresh(self, now: float) -> None:
        started = time.perf_counter()
        monitor = self._monitor
        rows = None
        if monitor.record_count() > self._ledger_len:
            self._ledger_len, rows = monitor.records_from(self._ledger_len)  # past any that left memory
        events = monitor.events_since(self._event_seq)
        if self._next_bucket is None:
            self._start_timeline(now, rows, events)
        totals = {"requests": self.requests, "errors": self.errors, "cost_usd": self.cost_usd,
                  "input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                  "cache_hits": self.cache_hits, "saved_usd": self.saved_usd}
        if rows is not None:
            self._read_rows(rows, totals)
        counters = {"retries": self.retries, "fallbacks": self.fallbacks, "waits": self.waits,
                    "waited_s": self.waited_s}
        if events:
            self._event_seq = events[-1].seq
            self._read_events(events, counters)
        health = monitor.health_rows()
        self._derive_states(health, now)
        self._publish(now)
        depth, in_flight = self.client.queue_depth(), self.client.in_flight()
        self.samples.append({"time": now, "queue_depth": depth, "in_flight": in_flight})
        self.param.update(**totals, **counters, queue_depth=depth, in_flight=in_flight,
                          budget=self.client.budget_status(), breaker_states=dict(self._state), health=health,
                          batches=monitor.batches(),
                          refresh_ms=(time.perf_counter() - started) * 1000.0)
        self.version += 1

    def _start_timeline(self, now: float, rows: dict[str, Any] | None, events: list[Any]) -> None:
        """First refresh: the timeline starts at the oldest record or event within the window."""
        window_start = now - self.max_points * self.bucket_s
        first = now
        if rows is not None:
            first = min(first, min((t for t in rows["time"] if t >= window_start), default=now))
        if events:
            first = min(first, min((e.time for e in events if e.time >= window_start), default=now))
        self._next_bucket = math.floor(first / self.bucket_s)
        self.origin = self._next_bucket * self.bucket_s

    def _bucket(self, t: float) -> _Bucket | None:
        """The open bucket for time ``t`` (a late ``t`` lands in the oldest open one); None before the origin."""
        assert self._next_bucket is not None and self.origin is not None
        if t < self.origin:
            return None
        k = max(math.floor(t / self.bucket_s), self._next_bucket)
        bucket = self._buckets.get(k)
        if bucket is None:
            bucket = self._buckets[k] = _Bucket()
        return bucket

    def _read_rows(self, rows: dict[str, Any], totals: dict[str, Any]) -> None:
        n = len(rows["request_id"])
        times, providers, models, statuses = rows["time"], rows["provider"], rows["model"], rows["status"]
        asked, costs, latencies = rows["requested_model"], rows["cost_usd"], rows["latency_s"]
        ins, outs = rows["input_tokens"], rows["output_tokens"]
        by_pm = self.by_provider_model
        errors, cost_total = 0, 0.0
        for i in range(n):
            provider = providers[i] or NO_PROVIDER
            model = models[i] or asked[i]
            ok = statuses[i] == "ok"
            cost = costs[i]
            key = (provider, model)
            agg = by_pm.get(key)
            if agg is None:
                agg = by_pm[key] = {"requests": 0, "errors": 0, "input_tokens": 0, "output_tokens": 0,
                                    "cost_usd": 0.0, "unpriced": 0}
            agg["requests"] += 1
            agg["input_tokens"] += ins[i]
            agg["output_tokens"] += outs[i]
            if statuses[i] == "error":  # a cancelled request is not an error
                agg["errors"] += 1
                errors += 1
            if cost is None:
                agg["unpriced"] += ok
                cost = 0.0
            agg["cost_usd"] += cost
            cost_total += cost
            bucket = self._bucket(times[i])
            if bucket is None:  # before the timeline: only the running totals
                if provider in self._cum_cost:
                    self._cum_cost[provider] += cost
                continue
            per = bucket.provider(provider)
            per[0] += 1
            per[1] += statuses[i] == "error"
            per[2] += cost
            if ok:
                bucket.latencies.setdefault(provider, []).append(latencies[i])
        totals["requests"] += n
        totals["errors"] += errors
        totals["cost_usd"] += cost_total
        totals["input_tokens"] += sum(ins)
        totals["output_tokens"] += sum(outs)
        totals["cache_hits"] += sum(rows["cached"])
        totals["saved_usd"] += math.fsum(rows["cost_saved_usd"])
        self._ledger_len += n
        for i in range(max(0, n - self.max_recent), n):
            self.recent.append(self._recent_row(rows, i))

    def _recent_row(self, rows: dict[str, Any], i: int) -> dict[str, Any]:
        cost = rows["cost_usd"][i]
        row: dict[str, Any] = {
            "time": rows["time"][i],
            "request_id": rows["request_id"][i],
            "provider": rows["provider"][i] or NO_PROVIDER,
            "model": rows["model"][i] or rows["requested_model"][i],
            "status": rows["status"][i],
            "error": rows["error_type"][i] or "",
            "message": self._monitor.redact(rows["error_message"][i] or "")[:160],
            "latency_ms": rows["latency_s"][i] * 1000.0,
            "cost_usd": math.nan if cost is None else cost,
            "input_tokens": rows["input_tokens"][i],
            "output_tokens": rows["output_tokens"][i],
            "attempts": rows["attempts"][i],
            "fallback": bool(rows["fallback"][i]),
            "stream": bool(rows["stream"][i]),
            "priority": rows["priority"][i],
        }
        if self.show_prompts:
            row["prompt"] = self._monitor.redact(rows["prompt"][i] or "")[:300]
        return row

    def _read_events(self, events: list[Any], counters: dict[str, Any]) -> None:
        for event in events:
            kind = event.kind
            if kind == "breaker":
                self._transition(Transition(event.time, event.provider, event.detail.get("old"),
                                            event.detail["new"]))
                continue
            if kind not in ("retry", "fallback", "rate_limit_wait", "queue_wait"):
                continue
            bucket = self._bucket(event.time)
            if kind == "retry":
                counters["retries"] += 1
                if bucket is not None:
                    bucket.retries += 1
            elif kind == "fallback":
                counters["fallbacks"] += 1
                if bucket is not None:
                    bucket.fallbacks += 1
            else:
                waited = float(event.detail.get("waited_s") or 0.0)
                counters["waits"] += 1
                counters["waited_s"] += waited
                if bucket is not None:
                    bucket.waits += 1
                    bucket.waited_s += waited

    # -- breakers ------------------------------------------------------------------------------

    def _transition(self, tr: Transition) -> None:
        current = self._state.get(tr.provider)
        if current is None:
            current = tr.old or "closed"
        if tr.new == current:
            return  # already shown (a derived half-open the event now confirms)
        last = self.transitions.last()
        if last is not None and tr.time < last.time:
            tr.time = last.time  # keep the timeline monotonic across threads' clocks
        tr.old = current
        self._state[tr.provider] = tr.new
        self.transitions.append(tr)

    def _derive_states(self, health: list[dict[str, Any]], now: float) -> None:
        """The health rows say what a breaker shows now (open past its timeout reads half-open)."""
        for row in health:
            name, state = row["provider"], row["breaker_state"]
            if name not in self._state:
                self._state[name] = state
            elif self._state[name] != state:
                self._transition(Transition(now, name, self._state[name], state, derived=True))

    def breaker_segments(self, now: float | None = None) -> list[dict[str, Any]]:
        """The breaker timeline as segments ``{provider, state, start, end}``; the last ones end ``now``."""
        now = self.clock() if now is None else now
        origin = self.origin if self.origin is not None else now
        held = list(self.transitions)
        start: dict[str, tuple[float, str]] = {}
        for tr in held:
            start.setdefault(tr.provider, (origin, tr.old or "closed"))
        for name in self.providers:
            start.setdefault(name, (origin, self._state.get(name, "closed")))
        out: list[dict[str, Any]] = []
        for tr in held:
            t0, state = start[tr.provider]
            out.append({"provider": tr.provider, "state": state, "start": t0, "end": tr.time})
            start[tr.provider] = (tr.time, tr.new)
        for name, (t0, state) in start.items():
            out.append({"provider": name, "state": state, "start": t0, "end": max(now, t0)})
        return out

    # -- buckets -------------------------------------------------------------------------------

    def _publish(self, now: float) -> None:
        """Move every bucket whose end (plus the grace) has passed into ``timeline``."""
        assert self._next_bucket is not None
        last = math.floor((now - GRACE_S) / self.bucket_s) - 1  # the newest finished bucket
        if last < self._next_bucket:
            return
        skip_to = last - self.max_points + 1
        for k in sorted(b for b in self._buckets if b < skip_to):  # too old to show: fold into the totals
            for name, per in self._buckets.pop(k).per.items():
                if name in self._cum_cost:
                    self._cum_cost[name] += per[2]
        for k in range(max(self._next_bucket, skip_to), last + 1):
            self.timeline.append(self._row(k, self._buckets.pop(k) if k in self._buckets else _Bucket()))
        self._next_bucket = last + 1

    def _row(self, k: int, bucket: _Bucket) -> dict[str, float]:
        w = self.bucket_s
        requests = sum(int(p[0]) for p in bucket.per.values())
        errors = sum(int(p[1]) for p in bucket.per.values())
        row: dict[str, float] = {"time": (k + 1) * w, "requests": requests, "errors": errors,
                                 "rps": requests / w, "eps": errors / w, "waits": bucket.waits,
                                 "waited_s": bucket.waited_s, "retries": bucket.retries,
                                 "fallbacks": bucket.fallbacks}
        for name in self.providers:
            per = bucket.per.get(name, [0, 0, 0.0])
            self._cum_cost[name] += per[2]
            lat = bucket.latencies.get(name, [])
            row[f"cost|{name}"] = self._cum_cost[name]
            row[f"rps|{name}"] = per[0] / w
            row[f"p50|{name}"] = percentile(lat, 0.50)
            row[f"p95|{name}"] = percentile(lat, 0.95)
        return row

    # -- summaries for the views ---------------------------------------------------------------

    def cost_table(self) -> list[dict[str, Any]]:
        """Requests, errors, tokens and cost by provider and model, costliest first."""
        rows = [{"provider": p, "model": m, **agg} for (p, m), agg in self.by_provider_model.items()]
        return sorted(rows, key=lambda r: (-r["cost_usd"], -r["requests"], r["provider"], r["model"]))

    def recent_rate(self, seconds: float = 10.0) -> tuple[float, float]:
        """Requests and errors per second over the newest published buckets covering ``seconds``."""
        n = max(1, round(seconds / self.bucket_s))
        rows = list(self.timeline)[-n:]
        if not rows:
            return 0.0, 0.0
        span = len(rows) * self.bucket_s
        return sum(r["requests"] for r in rows) / span, sum(r["errors"] for r in rows) / span

    def recent_latency(self) -> tuple[float, float]:
        """p50 and p95 latency (seconds) of the successful requests among the recent ones."""
        values = [r["latency_ms"] / 1000.0 for r in self.recent if r["status"] == "ok"]
        return percentile(values, 0.50), percentile(values, 0.95)
