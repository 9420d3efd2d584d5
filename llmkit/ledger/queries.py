"""Reading the ledger's history where it lives: SQL over the SQLite file (no pandas here).

``Selection`` says which records a question is about (a time range, one session or all). ``selection``
turns what a user passes (``since="7d"``, ``until=datetime(...)``, ``scope="all"``) into one.
``History`` answers questions about one ledger file with SQL: the records themselves (``rows``), sums
grouped by columns, time buckets or metadata keys (``summary``), the day totals that survive pruning
(``daily``), the metadata keys present, period spend for the budget, and ``prune``. Every call opens its
own short-lived read connection, so a long query on a caller's thread never holds up the event loop's
writer or the budget (which keeps one small connection of its own).

``llmkit.frames`` turns the answers into DataFrames.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from .._errors import InvalidRequestError
from .._secrets import logger
from . import blocks
from .blocks import Block
from .migrations import DAILY_ROLLUP

DAY_S = 86400
SCOPES = ("session", "all")
TIME_KEYS = {"minute": 60, "hour": 3600, "day": DAY_S}  # group-by buckets (seconds); also "month"
META = "meta."
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(s|sec|secs|seconds?|m|min|mins|minutes?|h|hr|hrs|hours?|"
                       r"d|days?|w|wk|weeks?)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": DAY_S, "w": 7 * DAY_S}
_BUSY_MS = 10_000
PACK_ON_READ = 4 * blocks.BLOCK_ROWS  # a read across sessions packs first when this many rows are past the blocks
FOLD_EVERY = 2_000  # the budget folds new requests into the day totals once this many are past them
_FOLD = f"""INSERT INTO requests_daily {DAILY_ROLLUP}
    ON CONFLICT (day, provider, model) DO UPDATE SET
        requests = requests + excluded.requests, errors = errors + excluded.errors,
        input_tokens = input_tokens + excluded.input_tokens, output_tokens = output_tokens + excluded.output_tokens,
        cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
        cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens, cost_usd = cost_usd + excluded.cost_usd,
        priced = priced + excluded.priced, unpriced_requests = unpriced_requests + excluded.unpriced_requests,
        cached_requests = cached_requests + excluded.cached_requests,
        cost_saved_usd = cost_saved_usd + excluded.cost_saved_usd"""


@dataclass(frozen=True, slots=True)
class Selection:
    """Records finished at or after ``since`` and before ``until`` (epoch seconds; None: unbounded),
    made by session ``session_id`` (None: every session)."""

    since: float | None = None
    until: float | None = None
    session_id: str | None = None
    after_id: int | None = None  # only rows past this id (the ones not yet in the day totals)

    def where(self, prefix: str = "WHERE") -> tuple[str, list[Any]]:
        """The SQL condition over ``requests`` and its parameters ("" when everything is selected)."""
        terms: list[str] = []
        params: list[Any] = []
        if self.after_id is not None:
            terms.append("id > ?")
            params.append(self.after_id)
        if self.session_id is not None:
            terms.append("session_id = ?")
            params.append(self.session_id)
        if self.since is not None:
            terms.append("time >= ?")
            params.append(self.since)
        if self.until is not None:
            terms.append("time < ?")
            params.append(self.until)
        return (f" {prefix} " + " AND ".join(terms) if terms else ""), params


def to_epoch(value: Any, name: str, now: float) -> float | None:
    """``value`` as epoch seconds: None; a datetime/pandas Timestamp (naive means UTC); a date (its UTC
    midnight); an ISO string ("2026-12-01", "2026-12-01T08:00Z"); or a duration back from ``now``: a
    string like "7d", "12h", "30min", "90s", "2w", or a ``timedelta``/pandas ``Timedelta``."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return now - value.total_seconds()
    if isinstance(value, datetime):
        stamp = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        return stamp.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC).timestamp()
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return now - float(match.group(1)) * _UNITS[match.group(2)[0].lower()]
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            pass
        else:
            return to_epoch(parsed, name, now)
    raise InvalidRequestError(
        f"{name}: expected an ISO date or time ('2026-12-01', '2026-12-01T08:00Z'), a datetime, or a duration "
        f"back from now ('7d', '12h', '30min', a timedelta or pandas Timedelta); got {value!r}")


def selection(since: Any = None, until: Any = None, scope: str | None = None, *, session_id: str | None,
              now: float | None = None) -> Selection:
    """What ``usage``/``cost_summary``/``latency`` were asked for. ``scope`` None means this session,
    unless ``since``/``until`` is given: then every session in that range (the contract's reading)."""
    now = time.time() if now is None else now
    lo, hi = to_epoch(since, "since", now), to_epoch(until, "until", now)
    if scope is None:
        scope = "session" if lo is None and hi is None else "all"
    if scope not in SCOPES:
        raise InvalidRequestError(f"scope: expected 'session' (this client's records) or 'all', got {scope!r}")
    return Selection(lo, hi, session_id if scope == "session" else None)


def meta_path(key: str) -> str:
    """The JSON path of a top-level metadata key, quoted so dots and spaces in keys are literal."""
    if '"' in key:
        raise InvalidRequestError(f"metadata key {key!r}: keys with a double quote cannot be grouped on")
    return f'$."{key}"'


def key_sql(name: str, daily: bool = False) -> str:
    """The SQL expression behind a group-by name (``meta.<key>`` included) over ``requests``, or over
    ``requests_daily`` (provider, model, day, month only) when ``daily``."""
    time_col = "day" if daily else "time"
    if name in TIME_KEYS:
        seconds = TIME_KEYS[name]
        return "day" if daily and name == "day" else f"CAST({time_col} / {seconds} AS INTEGER) * {seconds}"
    if name == "month":
        return f"CAST(strftime('%s', {time_col}, 'unixepoch', 'start of month') AS INTEGER)"
    if daily:
        return f"nullif({name}, '')"
    if name == "priced":
        return "cost_usd IS NOT NULL"
    if name.startswith(META):
        return f"json_extract(metadata, '{meta_path(name[len(META):])}')"
    return name


DAILY_KEYS = frozenset({"provider", "model", "day", "month"})
SUMS = ("requests", "errors", "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
        "cost_usd", "unpriced_requests", "cached_requests", "cost_saved_usd")
_SUM_SQL = ("count(*)", "total(status = 'error')", "total(input_tokens)", "total(output_tokens)",
            "total(cache_read_tokens)", "total(cache_write_tokens)", "sum(cost_usd)",
            "total(cost_usd IS NULL AND status = 'ok')", "total(cached)", "total(cost_saved_usd)")
_DAILY_SUM_SQL = ("total(requests)", "total(errors)", "total(input_tokens)", "total(output_tokens)",
                  "total(cache_read_tokens)", "total(cache_write_tokens)",
                  "CASE WHEN total(priced) > 0 THEN total(cost_usd) END", "total(unpriced_requests)",
                  "total(cached_requests)", "total(cost_saved_usd)")


class History:
    """SQL questions about one ledger file (see the module docstring)."""

    def __init__(self, path: str | Path, before_read: Callable[[], Callable[[], None] | None] | None = None) -> None:
        self.path = Path(path)
        # a weak reference to the ledger's flush: records waiting in its journal are committed first
        self.before_read = before_read
        self._spend_db: sqlite3.Connection | None = None
        self._spend_pid = 0
        self._spend: list[Any] | None = None  # [since, upto, day totals, last id read, cost past upto]
        self._spend_lock = threading.Lock()
        self._unpackable: int | None = None  # the chain's top when rows past it could not be packed

    def connect(self) -> sqlite3.Connection:
        """A new connection to the file, which must exist (a reader never creates an empty ledger)."""
        flush = self.before_read() if self.before_read is not None else None
        if flush is not None:
            flush()
        uri = self.path.resolve().as_uri() + "?mode=rw"
        db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        return db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        db = self.connect()
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    # -- records -------------------------------------------------------------------------------

    def rows(self, sel: Selection, names: Sequence[str]) -> list[tuple[Any, ...]]:
        """The selected records' ``names`` columns, oldest first."""
        return self._query(*_select(sel, names))

    def columns(self, sel: Selection,
                groups: Sequence[Sequence[str]]) -> tuple[list[Block], list[list[tuple[Any, ...]]]]:
        """The selected records as column blocks plus rows, from one consistent snapshot of the file.

        When ``sel`` spans sessions, the blocks of the chain whose time range meets ``sel``'s come first
        (id order; rows outside ``sel``'s time range are the caller's to drop), then one ``rows`` read
        per list of names over the records past the chain. A read from the start of the
        history (no session, no ``since``) with many records past the chain packs full blocks first if
        the file is free."""
        use_blocks = sel.session_id is None and sel.after_id is None
        db = self.connect()
        try:
            if use_blocks and sel.since is None:  # a read of the whole history (a time range uses the index)
                self._pack_if_behind(db)
            db.execute("BEGIN")
            try:
                links = _quietly(blocks.chain, db, []) if use_blocks else []
                wanted = [link for link in links if (sel.since is None or link.t_max >= sel.since)
                          and (sel.until is None or link.t_min < sel.until)]
                read, damaged = blocks.read(db, wanted)
                if damaged is not None:  # from a damaged block on, the rows say it (the packer rebuilds it)
                    links = links[:links.index(damaged)]
                    logger.warning("llmkit: ledger %s: a column block is damaged; reading its records from the "
                                   "rows instead", self.path)
                top = links[-1].hi if links else 0
                tail = Selection(sel.since, sel.until, sel.session_id, top) if top else sel
                out = [db.execute(*_select(tail, names)).fetchall() if names else [] for names in groups]
            finally:
                db.execute("COMMIT")
            if damaged is not None:
                db.execute("PRAGMA busy_timeout = 0")
                _quietly(lambda d: blocks.drop_from(d, damaged.after), db, None)  # next time: repacked
            return read, out
        finally:
            db.close()

    def pack_quietly(self, max_blocks: int | None = 1, stop: threading.Event | None = None) -> int:
        """Pack full column blocks of the records past the chain if the file is free right now (never
        waits); returns how many were packed. Never raises."""
        try:
            db = self.connect()
        except sqlite3.Error:  # the file is gone
            return 0
        try:
            db.execute("PRAGMA busy_timeout = 0")
            if blocks.pending(db) < blocks.BLOCK_ROWS:
                return 0
            return self._pack(db, max_blocks, stop)
        except sqlite3.Error:  # locked by a writer, read-only, not migrated: readers use the rows meanwhile
            return 0
        finally:
            db.close()

    def _pack(self, db: sqlite3.Connection, max_blocks: int | None, stop: threading.Event | None = None) -> int:
        """``blocks.pack``, except past rows it cannot pack (logged once; they stay rows, and packing
        is not tried again until the chain moves)."""
        links = blocks.chain(db)
        top = links[-1].hi if links else 0
        if self._unpackable == top:
            return 0
        try:
            return blocks.pack(db, max_blocks, stop)
        except blocks.Unpackable as exc:
            links = blocks.chain(db)
            self._unpackable = links[-1].hi if links else 0
            logger.warning("llmkit: ledger %s: records past id %d do not fit the column blocks (%s); they are "
                           "read as rows", self.path, self._unpackable, exc)
            return exc.added

    def _pack_if_behind(self, db: sqlite3.Connection) -> None:
        """Pack the records past the blocks when ``PACK_ON_READ`` or more are there and the file is free."""
        db.execute("PRAGMA busy_timeout = 0")
        try:
            if blocks.pending(db) >= PACK_ON_READ:
                self._pack(db, None)
        except sqlite3.OperationalError:  # another writer holds the file, or no blocks table: read the rows
            pass
        finally:
            db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")

    def count(self, sel: Selection = Selection()) -> int:
        where, params = sel.where()
        return int(self._query(f"SELECT count(*) FROM requests{where}", params)[0][0])

    def request_ids(self) -> list[str]:
        return [r[0] for r in self._query("SELECT request_id FROM requests ORDER BY id")]

    def total_cost(self, since: float | None = None) -> float:
        where, params = Selection(since=since).where()
        return float(self._query(f"SELECT total(cost_usd) FROM requests{where}", params)[0][0])

    # -- summaries -----------------------------------------------------------------------------

    def summary(self, sel: Selection, keys: Sequence[str]) -> list[tuple[Any, ...]]:
        """One row per group of ``keys`` (group-by names): the key values, then ``SUMS`` in order."""
        exprs = [key_sql(k) for k in keys]
        where, params = sel.where()
        groups = ", ".join(str(i + 1) for i in range(len(keys)))
        sql = (f"SELECT {', '.join([*exprs, *_SUM_SQL])} FROM requests{where}"
               + (f" GROUP BY {groups}" if keys else ""))
        return [r for r in self._query(sql, params) if r[len(keys)]]  # an empty selection sums to one 0 row

    def daily(self, keys: Sequence[str], day_from: float | None, day_to: float | None) -> list[tuple[Any, ...]]:
        """Like ``summary`` over every session's requests (pruned ones included) of the UTC days starting
        in [day_from, day_to): the day totals, plus the requests not yet folded into them, read from one
        snapshot. Groups may repeat (the caller adds them up). ``keys`` must be within ``DAILY_KEYS``."""
        self.fold_quietly(FOLD_EVERY)
        db = self.connect()
        try:
            db.execute("BEGIN")
            upto = _upto(db)
            totals = db.execute(*self._daily_sql(keys, day_from, day_to)).fetchall()
            newer = Selection(day_from, day_to, None, upto)
            where, params = newer.where()
            groups = ", ".join(str(i + 1) for i in range(len(keys)))
            sql = (f"SELECT {', '.join([*(key_sql(k) for k in keys), *_SUM_SQL])} FROM requests{where}"
                   + (f" GROUP BY {groups}" if keys else ""))
            rows = [r for r in totals + db.execute(sql, params).fetchall() if r[len(keys)]]
            db.execute("COMMIT")
            return rows
        finally:
            db.close()

    def _daily_sql(self, keys: Sequence[str], day_from: float | None,
                   day_to: float | None) -> tuple[str, list[Any]]:
        exprs = [key_sql(k, daily=True) for k in keys]
        terms, params = [], []
        if day_from is not None:
            terms.append("day >= ?")
            params.append(day_from)
        if day_to is not None:
            terms.append("day < ?")
            params.append(day_to)
        where = " WHERE " + " AND ".join(terms) if terms else ""
        groups = ", ".join(str(i + 1) for i in range(len(keys)))
        sql = (f"SELECT {', '.join([*exprs, *_DAILY_SUM_SQL])} FROM requests_daily{where}"
               + (f" GROUP BY {groups}" if keys else ""))
        return sql, params

    def meta_keys(self, sel: Selection) -> list[str]:
        """The top-level metadata keys present in the selected records, sorted."""
        where, params = sel.where("AND")
        sql = (f"SELECT DISTINCT j.key FROM requests, json_each(requests.metadata) AS j "
               f"WHERE requests.metadata IS NOT NULL{where}")
        return sorted(str(r[0]) for r in self._query(sql, params))

    def has_meta_key(self, sel: Selection, key: str) -> bool:
        where, params = sel.where("AND")
        sql = (f"SELECT 1 FROM requests WHERE json_type(metadata, '{meta_path(key)}') IS NOT NULL{where} LIMIT 1")
        return bool(self._query(sql, params))

    # -- the budget ----------------------------------------------------------------------------

    def spent(self, since: float | None) -> float:
        """Priced cost committed since ``since`` (a UTC day boundary; None: all time), by every process
        writing this file, pruned days included: the day totals plus the requests past them, kept as a
        running sum that reads only the rows new since the last call, so a check costs microseconds.
        Once ``FOLD_EVERY`` requests are past the totals they are folded in (if the file is free at that
        moment: never waits)."""
        start = -math.inf if since is None else since
        with self._spend_lock:
            if self._spend_db is None or self._spend_pid != os.getpid():  # never reuse a parent's connection
                self._spend_db, self._spend_pid, self._spend = self.connect(), os.getpid(), None
            db = self._spend_db
            db.execute("BEGIN")  # one snapshot
            try:
                upto = _upto(db)
                state = self._spend
                if state is None or state[0] != start or state[1] != upto:  # first call, new period, a fold
                    daily = db.execute("SELECT total(cost_usd) FROM requests_daily WHERE day >= ?",
                                       (start,)).fetchone()[0]
                    state = [start, upto, float(daily), upto, 0.0]
                new, top = db.execute("SELECT total(CASE WHEN time >= ? THEN cost_usd END), max(id) FROM requests "
                                      "WHERE id > ?", (start, state[3])).fetchone()
                state[4] += float(new)
                state[3] = max(state[3], top or 0)
                self._spend = state
            finally:
                db.execute("COMMIT")
            if state[3] - upto >= FOLD_EVERY:
                db.execute("PRAGMA busy_timeout = 0")
                try:
                    fold(db)
                except sqlite3.OperationalError:
                    pass  # another writer holds the file: fold next time
                finally:
                    db.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
            return state[2] + state[4]

    def fold_quietly(self, at_least: int = 1) -> int:
        """Fold the requests past the day totals in, if there are ``at_least`` of them and the file is
        free right now (never waits); returns how many were folded."""
        try:
            db = self.connect()
        except sqlite3.Error:  # the file is gone
            return 0
        try:
            top = db.execute("SELECT ifnull(max(id), 0) FROM requests").fetchone()[0]
            if top - _upto(db) < at_least:
                return 0
            return fold(db)
        except sqlite3.Error:  # locked by a writer, read-only, ...: the readers add those rows meanwhile
            return 0
        finally:
            db.close()

    def close(self) -> None:
        with self._spend_lock:
            if self._spend_db is not None and self._spend_pid == os.getpid():
                self._spend_db.close()
            self._spend_db = None

    # -- retention -----------------------------------------------------------------------------

    def prune(self, before: float, rollup: bool = True) -> dict[str, Any]:
        """Delete the requests that finished before ``before``. Their day totals stay in
        ``requests_daily`` when ``rollup`` (so ``cost_summary(by="day", scope="all")`` and the budget
        still count them); otherwise those are taken out too."""
        db = self.connect()
        try:
            fold(db)  # every request is in the day totals before any is deleted
            db.execute("BEGIN IMMEDIATE")
            try:
                if not rollup:
                    _unroll(db, before)
                blocks.drop(db)  # they may hold rows about to go (and the triggers find nothing left to drop)
                deleted = db.execute("DELETE FROM requests WHERE time < ?", (before,)).rowcount
                # ids past the newest left may be handed out again: they must count as not yet folded
                db.execute("UPDATE requests_daily_upto SET id = min(id, (SELECT ifnull(max(id), 0) FROM requests))")
                days = db.execute("SELECT count(*) FROM requests_daily WHERE day < ?", (before,)).fetchone()[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        finally:
            db.close()
        return {"deleted": int(deleted), "before": before, "rollup": rollup, "rollup_rows": int(days)}


def _select(sel: Selection, names: Sequence[str]) -> tuple[str, list[Any]]:
    """The SQL reading ``names`` of the selected records, oldest first (by time within a time range)."""
    where, params = sel.where()
    order = "time, id" if sel.since is not None or sel.until is not None else "id"
    return f"SELECT {', '.join(names)} FROM requests{where} ORDER BY {order}", params


def _quietly(fn: Any, db: sqlite3.Connection, default: Any) -> Any:
    """``fn(db)``, or ``default`` when the file is busy or has no blocks table (not migrated yet)."""
    try:
        return fn(db)
    except sqlite3.OperationalError:
        return default


def _upto(db: sqlite3.Connection) -> int:
    return int(db.execute("SELECT id FROM requests_daily_upto").fetchone()[0])


def fold(db: sqlite3.Connection) -> int:
    """Add the requests past ``requests_daily_upto`` to the day totals and move it; returns how many.
    One short write transaction (``db`` in autocommit mode)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        upto = _upto(db)
        top = int(db.execute("SELECT ifnull(max(id), 0) FROM requests").fetchone()[0])
        if top > upto:
            db.execute(_FOLD, (upto, top))
            db.execute("UPDATE requests_daily_upto SET id = ?", (top,))
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return max(0, top - upto)


def _unroll(db: sqlite3.Connection, before: float) -> None:
    """Take the requests about to be pruned out of the day totals (``prune(rollup=False)``)."""
    db.execute(
        """
        UPDATE requests_daily SET requests = requests_daily.requests - d.requests,
            errors = requests_daily.errors - d.errors,
            input_tokens = requests_daily.input_tokens - d.input_tokens,
            output_tokens = requests_daily.output_tokens - d.output_tokens,
            cache_read_tokens = requests_daily.cache_read_tokens - d.cache_read_tokens,
            cache_write_tokens = requests_daily.cache_write_tokens - d.cache_write_tokens,
            cost_usd = requests_daily.cost_usd - d.cost_usd, priced = requests_daily.priced - d.priced,
            unpriced_requests = requests_daily.unpriced_requests - d.unpriced_requests,
            cached_requests = requests_daily.cached_requests - d.cached_requests,
            cost_saved_usd = requests_daily.cost_saved_usd - d.cost_saved_usd
        FROM (SELECT CAST(time / 86400 AS INTEGER) * 86400 AS day, ifnull(provider, '') AS provider,
                     ifnull(model, '') AS model, count(*) AS requests, total(status = 'error') AS errors,
                     total(input_tokens) AS input_tokens, total(output_tokens) AS output_tokens,
                     total(cache_read_tokens) AS cache_read_tokens, total(cache_write_tokens) AS cache_write_tokens,
                     total(cost_usd) AS cost_usd, count(cost_usd) AS priced,
                     total(cost_usd IS NULL AND status = 'ok') AS unpriced_requests,
                     total(cached) AS cached_requests, total(cost_saved_usd) AS cost_saved_usd
              FROM requests WHERE time < ? GROUP BY 1, 2, 3) AS d
        WHERE requests_daily.day = d.day AND requests_daily.provider = d.provider
              AND requests_daily.model = d.model
        """,
        (before,),
    )
    db.execute("DELETE FROM requests_daily WHERE requests <= 0")


def day_span(sel: Selection) -> tuple[float | None, float | None, list[Selection]]:
    """Split ``sel``'s time range into whole UTC days [day_from, day_to) that the day totals answer, and
    the partial days at its edges (as selections over the requests themselves)."""
    lo, hi = sel.since, sel.until
    day_from = None if lo is None else math.ceil(lo / DAY_S) * DAY_S
    day_to = None if hi is None else math.floor(hi / DAY_S) * DAY_S
    if day_from is not None and day_to is not None and day_from >= day_to:
        return 0.0, 0.0, [sel]  # within one day: no whole day
    edges: list[Selection] = []
    if lo is not None and day_from is not None and lo < day_from:
        edges.append(Selection(lo, day_from, sel.session_id))
    if hi is not None and day_to is not None and day_to < hi:
        edges.append(Selection(day_to, hi, sel.session_id))
    return day_from, day_to, edges
