"""The request ledger: one ``LedgerRecord`` per finished request (ok or error), in memory and in SQLite.

``Ledger`` owns the records. In memory they live column by column (``array`` for numbers, small code
tables for provider/model/status/error type, interned strings for repeated text): about 250 bytes a
record, request id included. A file-backed ledger also commits every record to SQLite (WAL,
``synchronous=NORMAL``: a committed record survives a crash or SIGKILL of the process) *before*
``append`` returns. The commit happens on a writer thread that batches whatever has queued up into
one transaction (group commit), so ``await ledger.append(rec)`` never blocks the event loop.

Faults of the file never cost a call its deadline nor a record: when another process holds the file's
write lock (or the disk is full), ``append`` returns after one short attempt and the rows wait in the
writer's backlog, retried in the background until they land (``close`` gives them a last few seconds).
One row SQLite refuses (text with a lone surrogate) is stored scrubbed and never rolls back the rest of
its group commit. A file that is not a usable ledger is a ``ConfigError`` saying to move it aside. After
``os.fork()`` the child never touches the parent's connection: it reconnects on its first write.

The file is the store of record: opening it loads nothing (``queries.History`` answers questions
about the past in SQL, and the budget reads period spend from it, so several clients or processes on
one file share one budget). In memory a file-backed ledger keeps only the records appended through it
(this session's), and only the newest ``memory_records`` of those: positions keep counting (``len``
is every record appended), older positions read as gone. A memory-only ledger keeps every record.
The schema changes only through ``migrations``. Readers on other threads (the dashboard) take
consistent snapshots with ``columns()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import queue
import sqlite3
import sys
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, fields
from itertools import chain, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, overload

from .._errors import ConfigError
from .._secrets import logger
from . import journal as _journal
from .journal import LINGER_S, Journal
from .migrations import migrate
from .queries import History, Selection
from .schema import BOOLS, CODED, FIELDS, FLOATS, INTS, STATUSES, TEXTS


@dataclass(slots=True)
class LedgerRecord:
    """One finished request. ``time`` (finish) and ``started`` are epoch seconds (UTC)."""

    request_id: str
    time: float
    started: float
    provider: str | None
    model: str | None
    requested_model: str
    status: str
    error_type: str | None
    error_message: str | None
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    usage_estimated: bool
    cost_usd: float | None
    latency_s: float
    attempts: int
    fallback: bool
    stream: bool
    priority: int
    metadata: dict[str, Any] | None
    prompt: str | None = None
    session_id: str | None = None  # the Client that made it (one per Client; see issue 12)
    kind: str = "completion"  # "completion" or "embedding"
    cached: bool = False  # answered from the response cache (cost_usd is 0, cost_saved_usd what it saved)
    cost_saved_usd: float = 0.0
    usage_suspect: bool = False  # the server reported absurd token counts (clamped; see Usage.suspect)


if tuple(f.name for f in fields(LedgerRecord)) != FIELDS:  # one order for the record, the table and the frames
    raise ImportError("llmkit.ledger.schema.FIELDS is out of step with LedgerRecord")

#: What ``Ledger._store`` takes from a row: the values it handles one by one, and each kind's columns at once.
_stored_apart = itemgetter(*(FIELDS.index(name) for name in ("request_id", "error_message", "cost_usd", "metadata",
                                                            "prompt")))
_floats_but_cost = itemgetter(*(FIELDS.index(name) for name in FLOATS if name != "cost_usd"))
_ints = itemgetter(*(FIELDS.index(name) for name in INTS))
_bools = itemgetter(*(FIELDS.index(name) for name in BOOLS))
_coded = itemgetter(*(FIELDS.index(name) for name in CODED))
_COMBOS_KEPT = 1024  # combinations of coded values (provider, model, status...) whose codes a ledger keeps
_INSERT = f"INSERT INTO requests ({', '.join(FIELDS)}) VALUES ({', '.join('?' * len(FIELDS))})"
_SELECT = f"SELECT {', '.join(FIELDS)} FROM requests ORDER BY id"
_BATCH = 1024
MEMORY_RECORDS = 100_000  # a file-backed ledger's in-memory window (this session's newest records)

# Who waits for a row's commit: a thread (concurrent Future) or a coroutine (asyncio Future on its loop).
_Waiter = Future[None] | asyncio.Future[None]


@dataclass(slots=True)
class RawColumns:
    """A copy of ``records[start:]`` as stored: arrays, code arrays with their tables, and lists."""

    start: int
    floats: dict[str, array[float]]
    ints: dict[str, array[int]]
    bools: dict[str, array[int]]
    codes: dict[str, array[int]]
    tables: dict[str, list[str]]
    texts: dict[str, list[str | None]]

    def __len__(self) -> int:
        return len(self.texts["request_id"])


class _Codes:
    """A growing table of distinct strings; each value is stored as its index (None is -1)."""

    __slots__ = ("index", "table")

    def __init__(self) -> None:
        self.table: list[str] = []
        self.index: dict[str | None, int] = {None: -1}

    def code(self, value: str | None) -> int:
        """``value``'s code (a new one for a value not seen before)."""
        code = self.index.get(value)
        if code is None and value is not None:
            code = self.index[value] = len(self.table)
            self.table.append(sys.intern(value))
        return -1 if code is None else code

    def value(self, code: int) -> str | None:
        return None if code < 0 else self.table[code]


class _Rows:
    """Number columns of one kind kept record by record in one array (``len(names)`` values a record, in
    ``names`` order): a record goes in with one ``extend`` (one call instead of one per column), and a
    column comes out as a strided copy."""

    __slots__ = ("_offset", "names", "values", "width")

    def __init__(self, typecode: str, names: tuple[str, ...]) -> None:
        self.names = names
        self.width = len(names)
        self._offset = {name: j for j, name in enumerate(names)}
        self.values: array[Any] = array(typecode)

    def column(self, name: str, start: int = 0) -> array[Any]:
        """The column from record ``start`` on (a copy)."""
        return self.values[start * self.width + self._offset[name]::self.width]

    def get(self, name: str, i: int) -> Any:
        return self.values[i * self.width + self._offset[name]]

    def forget(self, k: int) -> None:
        del self.values[:k * self.width]

    def keep(self, records: int) -> None:
        """Cut back to ``records`` whole records (what a failed append may have left half done)."""
        del self.values[records * self.width:]


_CHUNK = 4096  # texts per sealed chunk of a text column


class _Texts:
    """A text column (strings or None) that costs the garbage collector nothing per record: full chunks of
    ``_CHUNK`` values are sealed into tuples, which the collector stops watching once it has seen them (they
    hold plain values only); only ``open``, the last chunk, is a list. As plain lists, the four text columns of
    a million records cost every full collection ~70 ms (each value visited). Reads as a list: ``len``,
    ``[i]``, ``[start:]`` (a list copy), iteration, and ``del [:k]``; ``Ledger._store`` appends to ``open``
    and calls ``seal()`` when it is full (all text columns move in step)."""

    __slots__ = ("_sealed", "_start", "open")

    def __init__(self) -> None:
        self._sealed: list[tuple[str | None, ...]] = []
        self.open: list[str | None] = []  # one list for good (``Ledger._store`` binds its append)
        self._start = 0  # values of the first chunk before this were deleted

    def seal(self) -> None:
        self._sealed.append(tuple(self.open))
        self.open.clear()

    def __len__(self) -> int:
        return len(self._sealed) * _CHUNK + len(self.open) - self._start

    def __iter__(self) -> Iterator[str | None]:
        return islice(chain(chain.from_iterable(self._sealed), self.open), self._start, None)

    @overload
    def __getitem__(self, index: int) -> str | None: ...

    @overload
    def __getitem__(self, index: slice) -> list[str | None]: ...

    def __getitem__(self, index: int | slice) -> str | list[str | None] | None:
        if isinstance(index, slice):  # [start:], start >= 0
            if index.stop is not None or index.step is not None or (index.start or 0) < 0:
                raise ValueError("a text column copies [start:] only")
            at = self._start + (index.start or 0)
            chunk = at // _CHUNK
            out = list(self._sealed[chunk][at % _CHUNK:]) if chunk < len(self._sealed) else []
            for sealed in self._sealed[chunk + 1:]:
                out.extend(sealed)
            out.extend(self.open[max(0, at - len(self._sealed) * _CHUNK):])
            return out
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("text column index out of range")
        chunk, at = divmod(index + self._start, _CHUNK)
        return self._sealed[chunk][at] if chunk < len(self._sealed) else self.open[at]

    def __delitem__(self, index: slice) -> None:  # [:k]
        if index.start is not None or index.step is not None or index.stop is None or index.stop < 0:
            raise ValueError("a text column deletes [:k] only")
        self._start += min(index.stop, len(self))
        drop = min(self._start // _CHUNK, len(self._sealed))
        del self._sealed[:drop]
        self._start -= drop * _CHUNK
        if not self._sealed and self._start:  # what is left is all in the open chunk
            del self.open[:self._start]
            self._start = 0


def _intern(text: str | None) -> str | None:
    return None if text is None else sys.intern(text)


def _dump_metadata(metadata: dict[str, Any] | None) -> str | None:
    if not metadata:
        return None  # an empty dict is stored as None
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=False, default=str)


def _opt_str(value: Any, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"ledger record field {name!r} must be a str or None, got {type(value).__name__}")


_OPTIONAL_TEXTS = ("provider", "model", "error_type", "error_message", "prompt", "session_id")


def _to_row(r: LedgerRecord) -> tuple[Any, ...]:
    """The record as a validated SQLite row, in ``FIELDS`` order (plain int/float/str/None values)."""
    if not isinstance(r.request_id, str) or not r.request_id:
        raise TypeError(f"ledger record request_id must be a non-empty str, got {r.request_id!r}")
    if r.status not in STATUSES:
        raise ValueError(f"ledger record status must be one of {STATUSES}, got {r.status!r}")
    provider, model, error_type, error_message, prompt, session_id = texts = (
        r.provider, r.model, r.error_type, r.error_message, r.prompt, r.session_id)
    for value, name in zip(texts, _OPTIONAL_TEXTS, strict=True):
        if value is not None and not isinstance(value, str):
            _opt_str(value, name)  # raises
    cost = None if r.cost_usd is None else float(r.cost_usd)
    if cost is not None and not math.isfinite(cost):
        cost = None
    return (
        r.request_id, float(r.time), float(r.started), provider, model, str(r.requested_model), r.status, error_type,
        error_message, int(r.input_tokens), int(r.output_tokens), int(r.cache_read_tokens), int(r.cache_write_tokens),
        int(r.reasoning_tokens), 1 if r.usage_estimated else 0, cost, float(r.latency_s), int(r.attempts),
        1 if r.fallback else 0, 1 if r.stream else 0, int(r.priority),
        _dump_metadata(r.metadata), prompt, session_id, str(r.kind),
        1 if r.cached else 0, _finite(r.cost_saved_usd), 1 if r.usage_suspect else 0,
    )


def _finite(value: Any) -> float:
    number = float(value or 0.0)
    return number if math.isfinite(number) else 0.0


_BUSY_TIMEOUT_MS = 10_000  # opening (migrations) waits this long for another process's write
_WRITE_BUSY_MS = 100  # one write attempt waits this long for a lock held elsewhere; then its rows wait aside
_RETRY_MIN_S = 0.05  # a locked file is tried again after this, doubling up to _RETRY_MAX_S
_RETRY_MAX_S = 1.0
_CLOSE_PATIENCE_S = 10.0  # at close, rows still waiting for a locked file get this long to land
_CHECKPOINT_EVERY = 500  # commits (inline or grouped) between checkpoints: bounds the WAL (~6 MB of inline ones)
_CHECKPOINT_IDLE_S = 1.0  # an idle writer checkpoints what inline commits added
_PACK_AGAIN_S = 0.25  # an idle writer with column blocks left to pack packs the next one after this
_PACKER_JOIN_S = 5.0  # at close, a block being packed gets this long to finish (it stops before its insert)
_INLINE_SPACING_S = 0.0002  # at most one inline commit every 200 µs: bursts go to the group commit
_RETRYABLE = {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL"}  # the file, not the row: try again later

_Item = tuple[tuple[Any, ...], "_Waiter | None"]
_CHECKPOINT_DUE: _Item = ((), None)  # put on the writer's queue by an inline commit: time to checkpoint
_JOURNAL_DUE: _Item = (("journal due",), None)  # records wait in the journal: commit them (after LINGER_S)
_FLUSH = ("flush",)  # (_FLUSH, future): commit the journaled records now, then settle the future


def _retryable(exc: BaseException) -> bool:
    """A failure of the file (locked by another process, disk full), not of the rows being written."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    name = getattr(exc, "sqlite_errorname", "") or ""
    return name.split("_SNAPSHOT")[0] in _RETRYABLE or name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) \
        or "locked" in str(exc)


#: Rows one INSERT statement takes at most: the largest power of two that keeps its variables within
#: SQLite's limit (32,766 since 3.32, 999 before): 1,024 rows of 28 fields.
_ROWS_A_STATEMENT = 1 << ((32766 if sqlite3.sqlite_version_info >= (3, 32) else 999) // len(FIELDS)).bit_length() - 1


@functools.lru_cache(maxsize=16)
def _insert_of(rows: int) -> str:
    one = f"({', '.join('?' * len(FIELDS))})"
    return f"INSERT INTO requests ({', '.join(FIELDS)}) VALUES {', '.join([one] * rows)}"


def _insert_rows(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert ``rows`` with a few multi-row statements rather than ``executemany``: that gives up the GIL and
    takes it back for every row, and while an event loop keeps the CPU busy a thread gets it back only every
    ``sys.getswitchinterval()`` (5 ms), so a burst of 100,000 records took minutes to commit while the
    journal grew (20,000 rows against a spinning thread: executemany 83 s, 256 rows a statement 0.65 s,
    1,000 rows 0.22 s). Statements take ``_ROWS_A_STATEMENT`` rows, the rest go in halving sizes (a handful of
    statements, each compiled once and kept)."""
    at, size = 0, _ROWS_A_STATEMENT
    while at < len(rows):
        while size > len(rows) - at:
            size //= 2
        sql = _insert_of(size)
        while len(rows) - at >= size:
            db.execute(sql, [value for row in rows[at:at + size] for value in row])
            at += size


def _scrub(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row SQLite refused, made storable: text that is not valid UTF-8 (a lone surrogate from a server's
    JSON) has it replaced, integers are clamped to 64 bits."""
    out: list[Any] = []
    for value in row:
        if isinstance(value, str):
            value = value.encode("utf-8", "replace").decode("utf-8")
        elif isinstance(value, int) and not isinstance(value, bool):
            value = max(-(2**63), min(2**63 - 1, value))
        out.append(value)
    return tuple(out)


class _Writer(threading.Thread):
    """Owns the SQLite connection after open; commits queued rows in batches, resolving their futures.

    A batch SQLite refuses because of one of its rows is written row by row, so only that row is
    affected (and it is stored scrubbed if it can be). A batch that meets a file locked by another
    process (or a full disk) is not waited on: its waiters are released at once (the rows are in memory)
    and the rows wait in ``backlog``, retried in the background until they land."""

    def __init__(self, db: sqlite3.Connection, path: Path, where: str = "the ledger") -> None:
        super().__init__(name="llmkit-ledger-writer", daemon=True)
        self.db = db
        self.insert = db.cursor()  # for inline commits: no new cursor per call
        self.path = path
        self.where = where
        self.checkpoint_db: sqlite3.Connection | None = None  # this thread's own, opened on first use
        self.queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self.commits = 0  # transactions committed (fewer than rows when appends overlap)
        self.inline_commits = 0  # rows committed on the caller's thread (see Ledger._commit_inline)
        self.db_lock = threading.Lock()  # one user of the connection at a time
        self.last_inline = -1.0
        self._checkpointed = 0  # commits (both kinds) as of the last checkpoint
        self.checkpoint_asked = False  # an inline commit has put _CHECKPOINT_DUE on the queue
        self.backlog: list[tuple[Any, ...]] = []  # rows waiting for a locked file, oldest first
        self.refused = 0  # rows SQLite refused even scrubbed (logged; in memory only)
        self._retry_s = _RETRY_MIN_S
        self._next_try = 0.0  # monotonic time of the next attempt at the backlog
        # run on a thread of its own when idle (packs column blocks): (max blocks, stop) -> how many packed
        self.idle_work: Callable[[int, threading.Event], int] | None = None
        self._idle_s = _CHECKPOINT_IDLE_S
        self._packer: threading.Thread | None = None
        self._packed = 0
        self._stop_packing = threading.Event()
        # the journal (``journal``): records durable in it and waiting for a commit; ``take_journaled``
        # (set by the ledger) hands them over with the file they are in and how many were journaled so far
        self.journal: Journal | None = None
        self.take_journaled: Callable[[], tuple[list[tuple[Any, ...]], int, int]] | None = None
        self.journal_done = 0  # records journaled and since committed (or refused), by the ledger's count
        self.linger_s = LINGER_S
        self.stopped = False  # set (under ``stop_lock``) once nothing more is taken from the queue
        self.stop_lock = threading.Lock()

    def run(self) -> None:
        ended = False
        try:
            while self._commit_batch():
                pass
            self._stop_packing.set()
            self._flush_at_close()
            ended = True
        except BaseException:  # (logged here, not raised again: the thread's excepthook would print it twice)
            logger.exception("%s: the writer thread failed; records go on in memory and stay in the journal "
                             "for the next open", self.where)
        finally:
            self._stop_packing.set()
            if self._packer is not None:
                self._packer.join(_PACKER_JOIN_S)
            self._let_waiters_go()
            if not self.backlog and ended:
                self._checkpoint()
            if self.journal is not None:  # kept for the next process to replay if rows never landed
                self.journal.close(committed=ended and not self.backlog)
            with self.db_lock:
                if self.checkpoint_db is not None:
                    self.checkpoint_db.close()
                self.db.close()

    def _let_waiters_go(self) -> None:
        """Nothing more is read from the queue: settle what is still in it (a reader's flush that came after
        the stop marker; rows, as not written) rather than leave anyone waiting."""
        with self.stop_lock:
            self.stopped = True
        left: list[_Item] = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None and item[1] is not None:
                left.append(item)
        stopped = RuntimeError(f"{self.where}: the writer thread stopped before this record was written")
        self._settle(left, {id(item): stopped for item in left if item[0] is not _FLUSH})

    def checkpoint_due(self) -> bool:
        return self.commits + self.inline_commits - self._checkpointed >= _CHECKPOINT_EVERY

    def _checkpoint(self) -> None:
        """Fold the WAL back into the database (auto-checkpoints are off), when idle and every
        ``_CHECKPOINT_EVERY`` commits whichever path they took, so the WAL stays small (a long one makes
        every commit slower). On this thread and a connection of its own, so commits go on during the slow
        part (fsyncs of everything since the last checkpoint: ~10 ms for 500 commits here). The WAL starts
        over only once every frame is in the database, so the few commits that landed meanwhile are folded
        in a second pass with commits held back (a call then waits for it, ~1-10 ms once in 500)."""
        done = self.commits + self.inline_commits
        if done == self._checkpointed:
            return
        try:
            if self.checkpoint_db is None:
                uri = self.path.resolve().as_uri() + "?mode=rw"
                self.checkpoint_db = sqlite3.connect(uri, uri=True, timeout=0, isolation_level=None,
                                                     check_same_thread=False)  # never waits (db_lock is held)
            self.checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            with self.db_lock:  # quick unless commits landed meanwhile (its result counts only the frames it saw)
                done = self.commits + self.inline_commits
                self.checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            return  # another process is busy with the file: try again later
        self._checkpointed = done
        self.checkpoint_asked = False

    def _commit_batch(self) -> bool:
        try:
            item = self.queue.get(timeout=max(0.0, self._next_try - time.monotonic()) if self.backlog
                                  else self._idle_s)
        except queue.Empty:
            if self.backlog:
                self._commit([])
            else:
                self._checkpoint()
                self._idle()
            return True
        self._idle_s = _CHECKPOINT_IDLE_S
        batch: list[_Item] = []
        flushes: list[_Item] = []  # readers waiting for the journaled records to be committed
        take = False  # journaled records to commit
        running = True
        while True:
            if item is None:
                running, take = False, True
                with self.stop_lock:  # no record is let in after this: the take below is the last one
                    self.stopped = True
                break
            if item is _JOURNAL_DUE:
                take = True
            elif item[0] is _FLUSH:
                take = True
                flushes.append(item)
            elif item is not _CHECKPOINT_DUE:
                batch.append(item)
            if len(batch) >= _BATCH:
                break
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
        try:
            self._take_and_commit(batch, flushes, take, running)
        except BaseException as exc:  # the writer fails: nobody it took from the queue may wait for ever
            self._settle(flushes, {})
            self._settle(batch, {id(item): exc for item in batch})
            raise
        if self.checkpoint_due():
            self._checkpoint()
        return running

    def _take_and_commit(self, batch: list[_Item], flushes: list[_Item], take: bool, running: bool) -> None:
        segment = journaled = None
        if take and self.take_journaled is not None:
            if running and not flushes:
                time.sleep(self.linger_s)  # let more records gather in the journal: one commit for all of them
            rows, segment, journaled = self.take_journaled()
            batch[:0] = [(row, None) for row in rows]
        if self.backlog and time.monotonic() < self._next_try:  # the file is locked: join the queue, no wait
            self.backlog.extend(row for row, _ in batch)
            self._settle(batch, {})
        elif batch or self.backlog:
            self._commit(batch)
        if journaled is not None:
            if not self.backlog and self.journal is not None and segment is not None:
                self.journal.clear(segment)  # all in SQLite (or refused, and logged)
            self.journal_done = journaled
        self._settle(flushes, {})

    def _idle(self) -> None:
        """Nothing to write for a while: pack a column block (``blocks``) on a thread and connection of
        its own (a block is ~0.1 s of work: appends meanwhile are not held up), and come back sooner
        while there are more to pack."""
        if self.idle_work is None or self._stop_packing.is_set():
            return
        if self._packer is not None:
            if self._packer.is_alive():
                return
            self._packer = None
            self._idle_s = _PACK_AGAIN_S if self._packed else _CHECKPOINT_IDLE_S
        self._packer = threading.Thread(target=self._pack, name="llmkit-ledger-packer", daemon=True)
        self._packer.start()

    def _pack(self) -> None:
        assert self.idle_work is not None
        try:
            self._packed = self.idle_work(1, self._stop_packing)
        except Exception:  # never let a derived copy trouble the writer
            logger.debug("llmkit: packing the ledger's column blocks failed", exc_info=True)
            self._packed = 0

    def _commit(self, batch: list[_Item]) -> None:
        """Write the backlog (rows waiting for a locked file) and then ``batch``; settle their waiters."""
        items: list[_Item] = [(row, None) for row in self.backlog] + batch
        self.backlog = []
        failed: dict[int, BaseException] = {}
        with self.db_lock:
            self.db.execute(f"PRAGMA busy_timeout = {_WRITE_BUSY_MS}")  # at rest it is 0 (see _commit_inline)
            try:
                left = self._write(items, failed)
            finally:
                self.db.execute("PRAGMA busy_timeout = 0")
        waited = len(items) - len(batch)  # rows that were waiting already
        if left:
            self.backlog = [row for row, _ in left]
            if not waited:
                logger.warning("%s is locked by another connection (or the disk is full): %d record(s) wait in "
                               "memory and are written as soon as it is free", self.where, len(left))
            self._next_try = time.monotonic() + self._retry_s
            self._retry_s = min(_RETRY_MAX_S, self._retry_s * 2)
        elif waited:
            logger.info("%s: %d waiting record(s) written", self.where, waited)
            self._retry_s = _RETRY_MIN_S
        self._settle(batch, failed)

    def _write(self, items: list[_Item], failed: dict[int, BaseException]) -> list[_Item]:
        """Commit ``items`` (the caller holds ``db_lock``); returns those left for a locked file. A row
        SQLite refuses is retried scrubbed; one refused even then lands in ``failed`` (by ``id`` of its item)."""
        try:
            self._transaction([row for row, _ in items])
            return []
        except Exception as exc:
            if _retryable(exc):
                return items
        for i, item in enumerate(items):  # one bad row must not take the others with it
            row = item[0]
            try:
                self._transaction([row])
            except Exception as exc:
                if _retryable(exc):
                    return items[i:]
                try:
                    self._transaction([_scrub(row)])
                    logger.warning("%s: record %r had text or numbers SQLite refuses (%s); stored scrubbed",
                                   self.where, row[0], type(exc).__name__)
                except Exception as again:
                    if _retryable(again):
                        return items[i:]
                    self.refused += 1
                    failed[id(item)] = again
                    logger.error("%s: record %r could not be written (%s: %s); it is kept in memory only",
                                 self.where, row[0], type(again).__name__, again)
        return []

    def _transaction(self, rows: list[tuple[Any, ...]]) -> None:
        db = self.db
        try:
            db.execute("BEGIN")
            _insert_rows(db, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        self.commits += 1

    def _settle(self, batch: list[_Item], failed: dict[int, BaseException]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[None], BaseException | None]]] = {}
        for item in batch:
            waiter, error = item[1], failed.get(id(item))
            if waiter is None:
                continue
            if isinstance(waiter, asyncio.Future):
                by_loop.setdefault(waiter.get_loop(), []).append((waiter, error))
            elif waiter.set_running_or_notify_cancel():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        for loop, waiters in by_loop.items():  # one wake-up per loop and batch, not one per record
            try:
                loop.call_soon_threadsafe(_settle, waiters)
            except RuntimeError:
                pass  # that loop is closed: nobody is waiting any more

    def _flush_at_close(self) -> None:
        """Closing: rows still waiting for a locked file get ``_CLOSE_PATIENCE_S`` to land."""
        deadline = time.monotonic() + _CLOSE_PATIENCE_S
        while self.backlog and time.monotonic() < deadline:
            self._commit([])
            if self.backlog:
                time.sleep(min(self._retry_s, max(0.0, deadline - time.monotonic())))
        if self.backlog:
            logger.error("%s stayed locked for %gs at close: %d record(s) were not written to the file",
                         self.where, _CLOSE_PATIENCE_S, len(self.backlog))


def _settle(waiters: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for waiter, error in waiters:
        if not waiter.done():  # a cancelled waiter still had its row written
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class _Journaled:
    """Rows durable in a ledger's journal and not yet handed to its writer, with the ledger's lock: what the
    writer takes from the ledger without holding the ledger itself (which would then never be finalized)."""

    __slots__ = ("count", "journal", "lock", "rows")

    def __init__(self, journal: Journal, lock: threading.Lock) -> None:
        self.journal = journal
        self.lock = lock
        self.rows: list[tuple[Any, ...]] = []
        self.count = 0  # rows journaled so far (the writer's ``journal_done`` catches up)

    def take(self) -> tuple[list[tuple[Any, ...]], int, int]:
        """On the writer thread: the rows, the journal file they are in (later rows go to the other), and
        how many rows were journaled up to them."""
        with self.lock:
            rows, self.rows = self.rows, []
            return rows, self.journal.switch(), self.count


def _shutdown(writer: _Writer) -> None:
    if writer.is_alive():
        writer.queue.put(None)
        writer.join()


class Ledger:
    """Every finished request, as one record. ``path=None`` or ``":memory:"`` keeps it in memory only."""

    def __init__(self, path: str | os.PathLike[str] | None = "default", *,
                 memory_records: int | None = MEMORY_RECORDS, session_id: str | None = None,
                 journal: bool = True) -> None:
        if path is not None and os.fspath(path) == "default":
            path = self.default_path()
        # absolute from here on: the writer's checkpoint connection and history reads open the file again
        # later, and a relative path would then follow the process's current directory (os.chdir)
        self.path: Path | None = None if path is None or os.fspath(path) == ":memory:" else Path(path).absolute()
        # (weakly: a ledger nobody holds any more is finalized, and its writer stops)
        self.history: History | None = (None if self.path is None
                                        else History(self.path, before_read=weakref.WeakMethod(self.flush)))
        # only a file-backed ledger forgets: a memory-only one is its own store of record
        self.memory_records = memory_records if self.path is not None else None
        self._dropped = 0  # records appended and since dropped from memory (positions keep counting)
        self.session_id = session_id  # the session whose records are appended here (frames read them from memory)
        self._lock = threading.Lock()
        self._closed = False
        # the request ids held, for refusing a second record of one: a dict of plain keys and values is never
        # watched by the garbage collector (a set is, and a full collection would visit every id)
        self._ids: dict[str, None] = {}
        # numbers record by record, one array per kind (cost_usd last among the floats: NaN stands for None)
        self._floats = _Rows("d", (*(n for n in FLOATS if n != "cost_usd"), "cost_usd"))
        self._ints = _Rows("q", INTS)
        self._bools = _Rows("b", BOOLS)
        self._codes = _Rows("i", CODED)  # codes into each column's table (-1: None)
        self._coded = {name: _Codes() for name in CODED}
        self._combos: dict[tuple[str | None, ...], tuple[int, ...]] = {}  # coded values -> their codes, one lookup
        self._texts = {name: _Texts() for name in TEXTS}
        self._text_appends = tuple(self._texts[name].open.append for name in TEXTS)  # in TEXTS order
        self._total_cost = 0.0
        self._writer: _Writer | None = None
        self._journal: Journal | None = None  # see ``journal``: records durable before their commit
        # (off when other connections must see each record before the call returns: a budget shared through
        # the file reads the spend of every client on it)
        self._use_journal = journal
        self._journaled: _Journaled | None = None  # its rows not yet handed to the writer
        self._forked = False  # opened before os.fork() and this is the child: reconnect on the next write
        self._fork_held: list[threading.Lock] = []
        if self.path is not None:
            db = self._open(self.path)
            try:  # a killed process's records first: they come before anything this one appends
                db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")  # another process's commit: wait it out
                try:
                    _journal.replay(self.path, db, _INSERT, len(FIELDS), _scrub)
                finally:
                    db.execute("PRAGMA busy_timeout = 0")
            except (OSError, sqlite3.Error) as exc:
                logger.warning("llmkit: replaying ledger journals of %s failed (%s); they stay for the next open",
                               self.path, exc)
            self._start_writer(db)
            _live.add(self)

    def _start_writer(self, db: sqlite3.Connection) -> None:
        assert self.path is not None
        self._writer = _Writer(db, self.path, f"ledger {self.path}")
        if self.history is not None:
            self._writer.idle_work = self.history.pack_quietly
        self._journal = None
        if self._use_journal and _journal.usable():
            try:
                self._journal = Journal(self.path)
            except OSError as exc:  # a folder we may not create files in: commit on the request path instead
                logger.info("llmkit: no journal beside %s (%s); records are committed one by one", self.path, exc)
        if self._journal is not None:
            self._journaled = _Journaled(self._journal, self._lock)
            self._writer.journal = self._journal
            self._writer.take_journaled = self._journaled.take  # (not a method of the ledger: see History)
        self._writer.start()
        self._finalizer = weakref.finalize(self, _shutdown, self._writer)

    @staticmethod
    def default_path() -> Path:
        """``$LLMKIT_DATA_DIR/ledger.sqlite3``, else ``<user data dir>/llmkit/ledger.sqlite3``."""
        explicit = os.environ.get("LLMKIT_DATA_DIR")
        if explicit:
            return Path(explicit).expanduser() / "ledger.sqlite3"
        base = os.environ.get("XDG_DATA_HOME") or (os.environ.get("LOCALAPPDATA") if os.name == "nt" else None)
        root = Path(base).expanduser() if base else Path.home() / ".local" / "share"
        return root / "llmkit" / "ledger.sqlite3"

    # -- opening -------------------------------------------------------------------------------

    def _open(self, path: Path) -> sqlite3.Connection:
        """The file's connection, migrated (loading nothing: history is read in SQL, see ``queries``); a file
        that is not a usable ledger is a ``ConfigError``."""
        return _connect(path)

    # -- writing -------------------------------------------------------------------------------

    async def append(self, record: LedgerRecord) -> None:
        """Add ``record``: in memory at once, committed to SQLite before this returns (off the loop); if
        another process holds the file's lock, it returns after one short attempt and the row is written
        in the background as soon as the file is free."""
        waiter = self._submit(record, None if self.path is None else asyncio.get_running_loop())
        if isinstance(waiter, asyncio.Future):  # (memory only: nothing to wait for)
            await waiter

    def append_sync(self, record: LedgerRecord) -> None:
        """``append``, blocking until the record is committed (for scripts and benchmarks)."""
        waiter = self._submit(record, None)
        if isinstance(waiter, Future):
            waiter.result()

    def _submit(self, record: LedgerRecord, loop: asyncio.AbstractEventLoop | None) -> _Waiter | None:
        row = _to_row(record)  # validates before anything is stored
        with self._lock:
            if self._closed:
                raise RuntimeError("the ledger is closed")
            if record.request_id in self._ids:
                raise ValueError(f"request {record.request_id!r} is already in the ledger")
            if self._writer is not None and self._writer.stopped:  # closing at exit, or its writer failed
                raise RuntimeError(f"the ledger's writer has stopped: no more records are written to {self.path}")
            self._store(row)
            if self._forked and self.path is not None:  # first write in a forked child: a connection of its own
                self._forked = False
                self._start_writer(_connect(self.path))
            writer = self._writer
            if writer is None:
                return None
            journaled = self._journaled
            if loop is not None and journaled is not None and self._journal_row(writer, journaled, row):
                return None  # durable in the journal; the writer commits it with others in a moment
            if loop is not None and writer.queue.empty() and not writer.backlog and self._commit_inline(writer, row):
                return None  # an idle writer and no burst: committed already
            waiter: _Waiter = Future() if loop is None else loop.create_future()
            with writer.stop_lock:
                if writer.stopped:  # it stopped just now: the record stays in memory only
                    raise RuntimeError(f"the ledger's writer has stopped: record {record.request_id!r} was not "
                                       f"written to {self.path}")
                writer.queue.put((row, waiter))
            return waiter

    @staticmethod
    def _journal_row(writer: _Writer, journaled: _Journaled, row: tuple[Any, ...]) -> bool:
        """Append ``row`` to the journal (the lock is held) and see that the writer commits it soon; False if
        the journal cannot take it (a full disk), so it is committed the usual way."""
        try:
            journaled.journal.write(row)
        except OSError:
            return False
        journaled.count += 1
        first = not journaled.rows
        journaled.rows.append(row)
        if first:  # one wake-up of the writer for all the rows that gather meanwhile
            writer.queue.put(_JOURNAL_DUE)
        return True

    def flush(self) -> None:
        """Commit the records waiting in the journal now, so that SQL reads in this process see every record
        (``History`` calls it before each read). Returns at once when nothing waits."""
        writer = self._writer
        journaled = self._journaled
        if (writer is None or journaled is None or writer.journal_done == journaled.count
                or not writer.is_alive() or threading.current_thread() in (writer, writer._packer)):
            return
        done: Future[None] = Future()
        with writer.stop_lock:
            if writer.stopped:  # closed meanwhile: it committed what waited
                return
            writer.queue.put((_FLUSH, done))
        with contextlib.suppress(TimeoutError):  # (the writer settles it after one commit attempt)
            done.result(timeout=_CLOSE_PATIENCE_S)

    @staticmethod
    def _commit_inline(writer: _Writer, row: tuple[Any, ...]) -> bool:
        """Commit one row right here when the writer is idle: one autocommit ``INSERT`` (a WAL commit
        without fsync, ~20-50 µs) costs less than the round trip to the writer thread (~70 µs). Never
        waits: the connection rests at ``busy_timeout = 0``, so if another process holds the file (or the
        writer is busy) it returns False and the row goes to the writer as usual."""
        now = time.monotonic()
        if now - writer.last_inline < _INLINE_SPACING_S:
            return False  # a burst: let the writer group-commit it rather than stall the event loop
        if not writer.db_lock.acquire(blocking=False):
            return False
        writer.last_inline = now
        try:
            writer.insert.execute(_INSERT, row)
            writer.inline_commits += 1
            if not writer.checkpoint_asked and writer.checkpoint_due():  # the writer checkpoints, never this call
                writer.checkpoint_asked = True
                writer.queue.put(_CHECKPOINT_DUE)
            return True
        except Exception:  # locked, or a row SQLite refuses: the writer deals with it
            with contextlib.suppress(sqlite3.Error):  # (closed, if the writer failed)
                if writer.db.in_transaction:  # an autocommit statement rolls itself back; never leave one open
                    writer.db.execute("ROLLBACK")
            return False
        finally:
            writer.db_lock.release()

    def _store(self, row: tuple[Any, ...]) -> None:
        """Append one row (in ``FIELDS`` order, as SQLite holds it: ``_to_row``'s, bools already 0 or 1) to the
        columns; the caller holds the lock."""
        request_id, error_message, cost_usd, metadata, prompt = _stored_apart(row)
        floats = self._floats.values
        try:
            floats.extend(_floats_but_cost(row))
            floats.append(math.nan if cost_usd is None else cost_usd)
            self._ints.values.extend(_ints(row))
            self._bools.values.extend(_bools(row))
            coded = _coded(row)
            codes = self._combos.get(coded)
            self._codes.values.extend(self._new_combo(coded) if codes is None else codes)
        except BaseException:  # (a number that does not fit its column): no half record is left behind
            held = len(self._texts["request_id"])
            for rows in (self._floats, self._ints, self._bools, self._codes):
                rows.keep(held)
            raise
        add_request_id, add_error_message, add_metadata, add_prompt = self._text_appends
        add_request_id(request_id)
        add_error_message(_intern(error_message))
        add_metadata(_intern(metadata))
        add_prompt(prompt)
        ids = self._texts["request_id"]
        if len(ids.open) >= _CHUNK:
            for column in self._texts.values():
                column.seal()
        self._ids[request_id] = None
        if cost_usd is not None:
            self._total_cost += cost_usd
        limit = self.memory_records
        if limit is not None and len(ids) > limit + max(1, limit // 4):
            self._forget(len(ids) - limit)

    def _new_combo(self, coded: tuple[str | None, ...]) -> tuple[int, ...]:
        """The codes of a combination of coded values not seen lately (new values join their tables)."""
        codes = tuple(self._coded[name].code(value) for name, value in zip(CODED, coded, strict=True))
        if len(self._combos) >= _COMBOS_KEPT:
            self._combos.clear()
        self._combos[coded] = codes
        return codes

    def _forget(self, k: int) -> None:
        """Drop the oldest ``k`` records from memory (in chunks, so it is amortised). Holds the lock."""
        for gone in islice(self._texts["request_id"], k):
            self._ids.pop(gone or "", None)
        for rows in (self._floats, self._ints, self._bools, self._codes):
            rows.forget(k)
        for texts in self._texts.values():
            del texts[:k]
        self._dropped += k

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Records appended through this ledger (those dropped from memory included)."""
        return self._dropped + len(self._texts["request_id"])

    @property
    def first_held(self) -> int:
        """Position of the oldest record still in memory (0 until the window first moves)."""
        return self._dropped

    def __getitem__(self, i: int) -> LedgerRecord:
        """The record at position ``i`` (negative indices count from the end); IndexError for one no longer
        in memory (read those with ``history``)."""
        with self._lock:
            n = len(self)
            if not -n <= i < n:
                raise IndexError(f"ledger index {i} out of range ({n} records)")
            i %= n
            if i < self._dropped:
                raise IndexError(f"ledger record {i} is no longer in memory (the newest "
                                 f"{self.memory_records} are); read older ones from the file")
            i -= self._dropped
            values: dict[str, Any] = {name: self._floats.get(name, i) for name in FLOATS}
            values.update({name: self._ints.get(name, i) for name in INTS})
            values.update({name: bool(self._bools.get(name, i)) for name in BOOLS})
            values.update({name: self._coded[name].value(self._codes.get(name, i)) for name in CODED})
            values.update({name: self._texts[name][i] for name in TEXTS})
        cost = values["cost_usd"]
        values["cost_usd"] = None if math.isnan(cost) else cost
        values["metadata"] = json.loads(values["metadata"]) if values["metadata"] else None
        return LedgerRecord(**values)

    def raw_columns(self, start: int = 0) -> RawColumns:
        """A consistent copy of ``records[start:]`` in storage form (what ``llmkit.frames`` builds from).
        ``start`` is a position; ``.start`` of the copy says where it really begins (the oldest record
        still in memory, when ``start`` is older)."""
        with self._lock:
            first = max(start, self._dropped)
            start = first - self._dropped
            return RawColumns(
                start=first,
                floats={k: self._floats.column(k, start) for k in FLOATS},
                ints={k: self._ints.column(k, start) for k in INTS},
                bools={k: self._bools.column(k, start) for k in BOOLS},
                codes={k: self._codes.column(k, start) for k in CODED},
                tables={k: list(c.table) for k, c in self._coded.items()},
                texts={k: v[start:] for k, v in self._texts.items()},
            )

    def columns(self, start: int = 0) -> dict[str, list[Any] | array[Any]]:
        """A thread-safe, column-oriented copy of ``records[start:]``, keyed by ``LedgerRecord`` field.

        Numbers come as ``array`` (bools as 0/1 ``array('b')``), strings as lists with None for
        missing, ``cost_usd`` as a list of float or None, ``metadata`` as compact JSON strings or None.
        """
        return self.columns_at(start)[1]

    def columns_at(self, start: int = 0) -> tuple[int, dict[str, list[Any] | array[Any]]]:
        """``columns(start)`` and the position of its first row (later than ``start`` when the records in
        between have left memory)."""
        raw = self.raw_columns(start)
        out: dict[str, list[Any] | array[Any]] = {}
        for name in FIELDS:
            if name == "cost_usd":
                out[name] = [None if math.isnan(c) else c for c in raw.floats[name]]
            elif name in FLOATS:
                out[name] = raw.floats[name]
            elif name in INTS:
                out[name] = raw.ints[name]
            elif name in BOOLS:
                out[name] = raw.bools[name]
            elif name in CODED:
                table: list[str | None] = [*raw.tables[name], None]  # code -1 picks the trailing None
                out[name] = [table[c] for c in raw.codes[name]]
            else:
                out[name] = raw.texts[name]
        return raw.start, out

    def costs(self, start: int = 0) -> tuple[array[float], array[float]]:
        """``(time, cost_usd)`` of ``records[start:]`` held in memory (cost NaN when unpriced): cheap."""
        with self._lock:
            start = max(0, start - self._dropped)
            return self._floats.column("time", start), self._floats.column("cost_usd", start)

    def total_cost_usd(self, since: float | None = None) -> float:
        """The priced cost of every record stored (finished at or after ``since``, epoch seconds, if given):
        the whole file for a file-backed ledger, else what is in memory."""
        if self.history is not None:
            return self.history.total_cost(since)
        if since is None:
            with self._lock:
                return self._total_cost
        times, costs = self.costs()
        return math.fsum(c for t, c in zip(times, costs, strict=True) if t >= since and c == c)

    def request_ids(self) -> list[str]:
        """Every stored request id, oldest first: the whole file for a file-backed ledger."""
        if self.history is not None:
            return self.history.request_ids()
        with self._lock:
            return [i for i in self._texts["request_id"] if i is not None]

    def history_records(self) -> list[LedgerRecord]:
        """Every stored record as ``LedgerRecord``s, oldest first (the whole file, or memory): for tests
        and small ledgers; use ``llmkit.frames`` (``client.usage``) for large ones."""
        if self.history is None:
            return [self[i] for i in range(self._dropped, len(self))]
        out = []
        for row in self.history.rows(Selection(), FIELDS):
            values = dict(zip(FIELDS, row, strict=True))
            for name in BOOLS:
                values[name] = bool(values[name])
            values["metadata"] = json.loads(values["metadata"]) if values["metadata"] else None
            out.append(LedgerRecord(**values))
        return out

    # -- closing -------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit whatever is queued and close the file. Idempotent; the records stay readable."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._writer is not None:
            self._finalizer()  # enqueue the stop marker after pending rows and join the writer
        if self.history is not None:
            self.history.close()
            self.history.fold_quietly()  # this session's requests into the day totals (readers need not add them)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- os.fork() -----------------------------------------------------------------------------

    def _fork_prepare(self) -> None:
        """Before a fork: hold the locks, so the child inherits idle columns and an idle connection."""
        held = []
        if self._lock.acquire(timeout=1.0):
            held.append(self._lock)
        writer = self._writer
        if writer is not None and writer.db_lock.acquire(timeout=1.0):
            held.append(writer.db_lock)
        self._fork_held = held

    def _fork_release(self) -> None:
        held, self._fork_held = self._fork_held, []
        for lock in reversed(held):
            lock.release()

    def _fork_child(self) -> None:
        """In the child: the writer thread is gone and the inherited connection belongs to the parent
        (SQLite forbids using it across fork). Close it (it is idle) and reconnect on the next write."""
        writer = self._writer
        idle = writer is not None and writer.db_lock in self._fork_held
        self._fork_release()
        self._lock = threading.Lock()
        if writer is None:
            return
        self._finalizer.detach()
        self._writer = None
        self._forked = True
        if self._journal is not None:  # the parent's files (and its lock): let go of them, delete nothing
            self._journal._close_files()
            self._journal.closed = True
            self._journal = None
        self._journaled = None  # the parent's rows: its writer commits them
        if idle:
            with contextlib.suppress(Exception):
                writer.db.close()
        else:  # mid-commit in the parent: never touch it (not even to close it)
            _inherited.append(writer.db)
        if writer.checkpoint_db is not None:  # the parent's thread may be checkpointing with it
            _inherited.append(writer.checkpoint_db)

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else ":memory:"
        return f"<Ledger {where} records={len(self)}>"


def _connect(path: Path) -> sqlite3.Connection:
    """Open (or create) the ledger file at ``path``, migrated; a file that is not a usable SQLite ledger
    (corrupt, another program's, a folder) is a ``ConfigError`` that says what to do."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise _unusable(path, exc) from None
    try:
        db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the writer thread checkpoints, never a caller
        migrate(db)
        db.execute("PRAGMA busy_timeout = 0")  # at rest: inline commits never wait; the writer waits _WRITE_BUSY_MS
    except sqlite3.DatabaseError as exc:
        db.close()
        if _retryable(exc):
            raise
        raise _unusable(path, exc) from None
    except BaseException:
        db.close()
        raise
    return db


def _unusable(path: Path, exc: BaseException) -> ConfigError:
    if isinstance(exc, OSError) or getattr(exc, "sqlite_errorname", "") == "SQLITE_CANTOPEN":
        return ConfigError(f"ledger {path}: cannot open or create this file ({exc}); check that its folder "
                           "is writable and the path is not a folder, or pass ledger= another path (None: memory only)")
    return ConfigError(f"ledger {path}: not a usable llmkit ledger ({type(exc).__name__}: {exc}); the file is "
                       "corrupt or belongs to another program. Move it aside (e.g. rename it to "
                       f"{path.name}.bad) and llmkit starts a new ledger there, or pass ledger= another path")


# Ledgers with a file, for the fork hooks: a child gets idle copies and reconnects on its first write.
_live: weakref.WeakSet[Ledger] = weakref.WeakSet()
_inherited: list[sqlite3.Connection] = []  # connections a child must never use or close


def _before_fork() -> None:
    for ledger in list(_live):
        ledger._fork_prepare()


def _after_fork_in_parent() -> None:
    for ledger in list(_live):
        ledger._fork_release()


def _after_fork_in_child() -> None:
    for ledger in list(_live):
        ledger._fork_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                        after_in_child=_after_fork_in_child)
