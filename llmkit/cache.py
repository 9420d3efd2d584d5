"""The response cache: exact-match answers by request key, persistent in SQLite, shared by every client on a file.

Three parts, top to bottom:

- ``ResponseCache``, the front a ``Service`` holds: decides per request whether the cache is used
  (``Client(cache=...)`` and the call's ``cache=True | False | "refresh"``), builds the key, turns a stored
  answer back into a ``Response`` (``cached=True``, ``cost_usd=0.0``), applies ``cache_ttl``, counts this
  client's hits, misses and dollars saved, and turns every problem (a corrupt file, an entry that no
  longer parses, a full disk) into a miss plus a ``cache_warning`` event: the cache never fails a call.
- ``CacheBackend``, the storage interface (LangChain's ``BaseCache`` shape: ``lookup``, ``store``,
  ``clear``, ``info``; plus ``discard`` and ``close``). It deals in opaque keys and ``Entry`` bytes, so a
  backend knows nothing about requests or responses. A shared backend (Redis) implements the same six
  methods; ``open_backend`` is where it would be chosen.
- ``SQLiteCache`` (one file, WAL; several processes and threads at once) and ``MemoryCache`` (``":memory:"``).

The key (``cache_key``) is the SHA-256 of a canonical JSON document (sorted keys, no spaces, UTF-8; in
the extra arguments a float with an integral value is written as the integer, so ``top_p=1.0`` and
``top_p=1`` agree; ``temperature`` is always a float) holding the requested
model, the messages, ``temperature``, ``max_tokens``, every extra argument of the call (``response_format``
and so a ``response_model``'s schema, ``tools``, ``tool_choice``, ``seed``, ``stop``, ``top_p``, provider
extras, ...) and the pinned ``provider`` when one is given. Never ``priority``, ``metadata``, ``timeout``,
the request id, streaming or not, or the API key.

``SQLiteCache`` reads on the caller's thread (a primary-key lookup, a few microseconds) and writes on one
writer thread per file and process: a store is visible to the same process at once and committed in the
background (a batch per transaction); ``close()`` commits what is queued. Each entry records when it was
written and when it was last hit; past ``cache_max_bytes`` the least recently hit entries are evicted.
A totals row kept by triggers makes ``info()`` and opening O(1), whatever the number of entries.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import sqlite3
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import asdict, dataclass, is_dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from . import structured
from ._errors import InvalidRequestError
from ._secrets import logger, redact
from ._types import Request, Response, ToolCall, Usage

if TYPE_CHECKING:
    from ._config import ClientConfig
    from ._events import EventLog

KEY_VERSION = 1  # part of every key: a change of the key's recipe starts a fresh cache
FORMAT_VERSION = 1  # of a stored answer
SCHEMA_VERSION = 1  # of the SQLite file (PRAGMA user_version)
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB of stored answers
UNCACHED_FINISH = frozenset({"content_filter", "refusal", "error"})  # never stored (see ResponseCache.store)
FILE_NAME = "cache.sqlite3"
MODES = (True, False, "refresh")

_USAGE_FIELDS = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")


# ----------------------------------------------------------------------------------------------
# the key


def check_mode(value: Any) -> bool | str | None:
    """A call's ``cache=`` argument, checked: True, False, "refresh", or None (the client's default)."""
    if value is None or any(value is m or (isinstance(value, str) and value == m) for m in MODES):
        return value
    raise InvalidRequestError(f"cache: expected True, False or 'refresh', got {value!r}")


def _canonical(value: Any) -> Any:
    """``value`` with stable numbers: an integral float becomes an int (``1.0`` -> ``1``, ``-0.0`` -> ``0``)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:  # the common cases first: this runs per call
        return value
    if kind is float:
        return int(value) if value.is_integer() else value
    if kind is dict or isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if kind is list or kind is tuple:
        return [_canonical(v) for v in value]
    return value


def key_document(request: Request) -> bytes:
    """The canonical JSON that ``cache_key`` hashes (documented in the README: what a change misses on)."""
    doc: dict[str, Any] = {
        "v": KEY_VERSION,
        "model": request.model,
        "messages": request.messages,  # as sent: text, not numbers (``temperature`` is a float already)
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
        "extra": _canonical(request.extra) if request.extra else {},
    }
    if request.provider is not None:
        doc["provider"] = request.provider
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def cache_key(request: Request) -> str:
    """The request's cache key: SHA-256 (hex) of ``key_document(request)``."""
    return hashlib.sha256(key_document(request)).hexdigest()


# ----------------------------------------------------------------------------------------------
# stored answers


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def encode_response(response: Response) -> bytes:
    """A finished answer as compact JSON (what a hit needs to rebuild it; never the request id)."""
    u = response.usage
    doc = {
        "v": FORMAT_VERSION,
        "content": response.content,
        "provider": response.provider,
        "model": response.model,
        "finish_reason": response.finish_reason,
        "usage": [getattr(u, name) for name in _USAGE_FIELDS] + [u.estimated, u.suspect],
        "cost_usd": response.cost_usd,
        "tool_calls": [call.to_openai() if isinstance(call, ToolCall) else call for call in response.tool_calls],
        "raw": response.raw,
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=_jsonable).encode("utf-8")


class BadEntry(ValueError):
    """A stored answer that does not parse (damaged, or written by an incompatible version)."""


def decode_response(payload: bytes, request: Request) -> tuple[Response, float | None]:
    """A stored answer as this request's ``Response`` (``cached=True``, ``cost_usd=0.0``) and its original cost."""
    try:
        doc = json.loads(payload)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
            raise BadEntry("unknown format")
        content, provider, model = doc["content"], doc["provider"], doc["model"]
        if not (isinstance(content, str) and isinstance(provider, str) and isinstance(model, str)):
            raise BadEntry("content, provider or model is not text")
        counts = doc["usage"]
        if type(counts) is not list or len(counts) != 7:
            raise BadEntry("bad usage")
        inp, out, read, write, reasoning, estimated, suspect = counts
        for count in (inp, out, read, write, reasoning):
            if type(count) is not int or count < 0:
                raise BadEntry("bad usage")
        usage = Usage(inp, out, read, write, reasoning, bool(estimated), bool(suspect))
        cost = doc.get("cost_usd")
        if cost is not None and (not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0):
            raise BadEntry("bad cost")
        finish = doc.get("finish_reason")
        tool_calls = doc.get("tool_calls") or []
        if not isinstance(tool_calls, list) or (finish is not None and not isinstance(finish, str)):
            raise BadEntry("bad tool_calls or finish_reason")
        calls = [ToolCall.from_json(c["id"], c["function"]["name"], c["function"]["arguments"])
                 for c in tool_calls]
    except BadEntry:
        raise
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BadEntry(type(exc).__name__) from None
    response = Response(id=request.id, content=content, provider=provider, model=model, finish_reason=finish,
                        usage=usage, cost_usd=0.0, raw=doc.get("raw"), requested_model=request.model,
                        tool_calls=calls, cached=True)
    return response, None if cost is None else float(cost)


# ----------------------------------------------------------------------------------------------
# the storage interface


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored answer: its bytes, when it was written (the cache's clock) and what it cost then."""

    payload: bytes
    created: float
    cost_usd: float | None = None


class CacheBackend(Protocol):
    """Where answers live, by key (64 hex characters). Thread-safe; every method may raise on a broken store
    (the front turns that into a miss and a warning)."""

    location: str

    def lookup(self, key: str, now: float) -> Entry | None:
        """The entry, or None; a found entry counts as used at ``now`` (least recently used goes first)."""

    def store(self, key: str, entry: Entry, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        """Insert or overwrite. ``ttl`` is a hint for stores that expire by themselves; ``max_bytes`` the bound."""

    def discard(self, key: str) -> None:
        """Remove one entry (it did not parse)."""

    def clear(self) -> None:
        """Remove every entry; done when this returns."""

    # Optional, for many keys at once (the per-text embedding cache): ``lookup_many(keys, now)`` -> one
    # ``Entry | None`` per key, and ``store_many(items, *, ttl, max_bytes)`` with ``(key, Entry)`` pairs, each in
    # as few round trips as the store allows. A backend without them is called once per key (``lookup_many``).

    def info(self) -> dict[str, Any]:
        """``entries`` and ``size_bytes`` (bytes of stored answers and keys), counting every store done so far."""

    def close(self) -> None:
        """Release this user's hold; the last one commits what is queued and closes."""


class MemoryCache:
    """A per-client, in-process cache (``cache=":memory:"``): a dict in LRU order. For tests and throwaway work."""

    location = ":memory:"

    def __init__(self) -> None:
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def lookup(self, key: str, now: float) -> Entry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
            return entry

    def store(self, key: str, entry: Entry, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        with self._lock:
            self._drop(key)
            self._entries[key] = entry
            self._bytes += _size(key, entry)
            while max_bytes is not None and self._bytes > max_bytes and self._entries:
                self._drop(next(iter(self._entries)))

    def lookup_many(self, keys: list[str], now: float) -> list[Entry | None]:
        with self._lock:
            out = [self._entries.get(key) for key in keys]
            for key, entry in zip(keys, out, strict=True):
                if entry is not None:
                    self._entries.move_to_end(key)
            return out

    def store_many(self, items: list[tuple[str, Entry]], *, ttl: float | None = None,
                   max_bytes: int | None = None) -> None:
        for key, entry in items:
            self.store(key, entry, ttl=ttl, max_bytes=max_bytes)

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= _size(key, old)

    def discard(self, key: str) -> None:
        with self._lock:
            self._drop(key)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def info(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "size_bytes": self._bytes}

    def close(self) -> None:
        pass


def _size(key: str, entry: Entry) -> int:
    return len(entry.payload) + len(key) // 2  # keys are stored as 32 raw bytes


# ----------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS entries (
        id INTEGER PRIMARY KEY,
        key BLOB NOT NULL UNIQUE,
        payload BLOB NOT NULL,
        created REAL NOT NULL,
        last_used REAL NOT NULL,
        cost_usd REAL,
        size INTEGER NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS entries_last_used ON entries (last_used)",
    """CREATE TABLE IF NOT EXISTS totals (
        id INTEGER PRIMARY KEY CHECK (id = 0), entries INTEGER NOT NULL, bytes INTEGER NOT NULL)""",
    "INSERT OR IGNORE INTO totals (id, entries, bytes) VALUES (0, 0, 0)",
    """CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries BEGIN
        UPDATE totals SET entries = entries + 1, bytes = bytes + NEW.size WHERE id = 0; END""",
    """CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries BEGIN
        UPDATE totals SET entries = entries - 1, bytes = bytes - OLD.size WHERE id = 0; END""",
    """CREATE TRIGGER IF NOT EXISTS entries_resized AFTER UPDATE OF size ON entries BEGIN
        UPDATE totals SET bytes = bytes - OLD.size + NEW.size WHERE id = 0; END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_UPSERT = ("INSERT INTO entries (key, payload, created, last_used, cost_usd, size) VALUES (?, ?, ?, ?, ?, ?) "
           "ON CONFLICT (key) DO UPDATE SET payload = excluded.payload, created = excluded.created, "
           "last_used = excluded.last_used, cost_usd = excluded.cost_usd, size = excluded.size")
_LOOKUP = "SELECT payload, created, cost_usd FROM entries WHERE key = ?"
_TOUCH = "UPDATE entries SET last_used = max(last_used, ?) WHERE key = ?"
_BUSY_TIMEOUT_MS = 10_000  # the writer thread waits for other processes' writes this long
_READ_BUSY_TIMEOUT_MS = 20  # a read never stalls the event loop longer: past it, a miss
_BATCH = 512
_IN_CHUNK = 500  # keys per ``SELECT ... IN (...)`` (within every SQLite's limit on bound parameters)
_TOUCH_FLUSH_S = 1.0  # last-hit times reach the file at most this late
_BATCH_WINDOW_S = 0.02  # a store waits this long for others to share its commit (same-process reads see it at once)
_CHECKPOINT_EVERY = 1000  # commits between checkpoints while the writer is never idle
_EVICT_TO = 0.9  # eviction frees down to this share of the bound, so it runs once per many stores


_NOT_PENDING = Entry(b"", 0.0)  # a marker: nothing pending for that key


class CacheUnavailable(Exception):
    """The cache file cannot be used (not a database, a newer schema, no permission)."""


def _connect(path: Path, busy_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout = {busy_ms}")
    return db


class SQLiteCache:
    """One cache file; shared by every client of this process that names it (see ``open_backend``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)
        self.users = 0
        self.closed = False
        self.listeners: list[Callable[[str], None]] = []  # told about background write failures
        self._pending: dict[bytes, Entry | None] = {}  # not yet committed, visible at once (None: discarded)
        self._touches: dict[bytes, float] = {}  # last-hit times not yet written
        self._state_lock = threading.Lock()
        self._db_lock = threading.Lock()  # one user of the writing connection at a time
        self._commits = 0  # since the last checkpoint
        self._read_lock = threading.Lock()
        self._ops: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            writer_db = _connect(path, _BUSY_TIMEOUT_MS)
        except (OSError, sqlite3.Error) as exc:
            raise CacheUnavailable(f"cannot open {path}: {exc}") from None
        try:
            self._prepare(writer_db)
            self._reader = _connect(path, _READ_BUSY_TIMEOUT_MS)
        except sqlite3.Error as exc:
            writer_db.close()
            raise CacheUnavailable(f"{path} is not a usable cache file ({exc})") from None
        self._writer_db = writer_db
        self._thread = threading.Thread(target=self._run, name="llmkit-cache-writer", daemon=True)
        self._thread.start()
        self._finalizer = weakref.finalize(self, _stop_writer, self._ops, self._thread)

    @staticmethod
    def _prepare(db: sqlite3.Connection) -> None:
        """WAL, and the schema: created once, checked in O(1) afterwards (never a scan of the entries)."""
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.execute("PRAGMA wal_autocheckpoint = 0")  # the writer thread checkpoints, never a caller
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"written by a newer llmkit (schema {version})")
        db.execute("BEGIN IMMEDIATE")  # two processes creating the file at once: one after the other
        try:
            for statement in _SCHEMA:  # each one idempotent
                db.execute(statement)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- the interface -------------------------------------------------------------------------

    def lookup(self, key: str, now: float) -> Entry | None:
        raw = bytes.fromhex(key)
        entry = self._pending.get(raw, _NOT_PENDING)
        if entry is None:
            return None
        if entry is _NOT_PENDING:
            with self._read_lock:
                row = self._reader.execute(_LOOKUP, (raw,)).fetchone()
            if row is None:
                return None
            payload = row[0]
            entry = Entry(payload if isinstance(payload, bytes) else str(payload).encode("utf-8"), float(row[1]),
                          row[2])
        self._touches[raw] = now
        return entry

    def lookup_many(self, keys: list[str], now: float) -> list[Entry | None]:
        """``lookup`` for many keys: one ``SELECT ... IN`` per ``_IN_CHUNK`` keys not pending."""
        raws = [bytes.fromhex(key) for key in keys]
        found: dict[bytes, Entry | None] = {}
        unread = []
        for raw in raws:
            pending = self._pending.get(raw, _NOT_PENDING)
            if pending is _NOT_PENDING:
                unread.append(raw)
            else:
                found[raw] = pending
        for i in range(0, len(unread), _IN_CHUNK):
            chunk = unread[i:i + _IN_CHUNK]
            query = f"SELECT key, payload, created, cost_usd FROM entries WHERE key IN ({','.join('?' * len(chunk))})"
            with self._read_lock:
                rows = self._reader.execute(query, chunk).fetchall()
            for key, payload, created, cost in rows:
                found[bytes(key)] = Entry(payload if isinstance(payload, bytes) else str(payload).encode("utf-8"),
                                          float(created), cost)
        out = [found.get(raw) for raw in raws]
        with self._state_lock:  # (the writer thread swaps ``_touches`` under this lock)
            for raw, entry in zip(raws, out, strict=True):
                if entry is not None:
                    self._touches[raw] = now
        return out

    def store(self, key: str, entry: Entry, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        raw = bytes.fromhex(key)
        with self._state_lock:
            self._check_open()
            self._pending[raw] = entry
            self._ops.put(("put", raw, entry, max_bytes))

    def store_many(self, items: list[tuple[str, Entry]], *, ttl: float | None = None,
                   max_bytes: int | None = None) -> None:
        """``store`` for many entries (the writer thread commits them together: ``executemany`` batches)."""
        pairs = [(bytes.fromhex(key), entry) for key, entry in items]
        with self._state_lock:
            self._check_open()
            for raw, entry in pairs:
                self._pending[raw] = entry
                self._ops.put(("put", raw, entry, max_bytes))

    def discard(self, key: str) -> None:
        raw = bytes.fromhex(key)
        with self._state_lock:
            self._check_open()
            self._pending[raw] = None
            self._ops.put(("discard", raw))

    def clear(self) -> None:
        with self._state_lock:
            self._check_open()
            self._pending.clear()
            self._touches.clear()
            self._ops.put(("clear",))
        self.flush()

    def info(self) -> dict[str, Any]:
        self.flush()
        with self._read_lock:
            entries, size = self._reader.execute("SELECT entries, bytes FROM totals WHERE id = 0").fetchone()
        return {"entries": int(entries), "size_bytes": int(size)}

    def flush(self, timeout: float | None = 60.0) -> None:
        """Wait until everything stored so far is committed (or failed: see ``listeners``)."""
        done: Future[None] = Future()
        with self._state_lock:
            if self.closed:
                return
            self._ops.put(("sync", done))
        done.result(timeout)

    def close(self) -> None:
        with self._state_lock:
            if self.closed:
                return
            self.closed = True
        self._finalizer()  # the stop marker goes after every queued op; the writer commits them and exits
        with self._read_lock:
            self._reader.close()

    def _check_open(self) -> None:
        if self.closed:
            raise CacheUnavailable(f"the cache {self.path} is closed")

    # -- the writer thread ---------------------------------------------------------------------

    def _run(self) -> None:
        db = self._writer_db
        try:
            while True:
                try:
                    op = self._ops.get(timeout=_TOUCH_FLUSH_S)
                except queue.Empty:
                    if self._touches:
                        self._apply(db, [])
                    self._checkpoint(db, idle=True)
                    continue
                batch: list[tuple[Any, ...]] = []
                stop = False
                window_ends = time.monotonic() + _BATCH_WINDOW_S
                while True:
                    if op is None:
                        stop = True
                        break
                    batch.append(op)
                    if len(batch) >= _BATCH:
                        break
                    wait = 0.0 if op[0] in ("sync", "clear") else window_ends - time.monotonic()
                    try:  # stores wait a moment for company: one commit for several (a flush waits for none)
                        op = self._ops.get(timeout=wait) if wait > 0 else self._ops.get_nowait()
                    except queue.Empty:
                        break
                self._apply(db, batch)
                self._checkpoint(db, idle=stop)
                if stop:
                    break
        finally:
            with self._db_lock:
                db.close()

    def _checkpoint(self, db: sqlite3.Connection, idle: bool) -> None:
        """Fold the WAL back into the file here, off the event loop (automatic checkpoints are off)."""
        if self._commits and (idle or self._commits >= _CHECKPOINT_EVERY):
            with self._db_lock:
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    return  # another process is busy with the file: next time
                self._commits = 0

    def _apply(self, db: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
        """One transaction: the batch's writes in order, the last-hit times, then eviction past the bound."""
        with self._state_lock:
            touches, self._touches = self._touches, {}
        syncs = [op[1] for op in batch if op[0] == "sync"]
        writes = [op for op in batch if op[0] != "sync"]
        bounds = [op[-1] for op in writes if op[0] in ("put", "evict") and op[-1] is not None]
        self._db_lock.acquire()
        try:
            if writes or touches:
                db.execute("BEGIN IMMEDIATE")
                for op in writes:
                    if op[0] == "put":
                        raw, entry = op[1], op[2]
                        db.execute(_UPSERT, (raw, entry.payload, entry.created, entry.created, entry.cost_usd,
                                             len(entry.payload) + len(raw)))
                    elif op[0] == "discard":
                        db.execute("DELETE FROM entries WHERE key = ?", (op[1],))
                    elif op[0] == "clear":
                        db.execute("DELETE FROM entries")
                if touches:
                    db.executemany(_TOUCH, [(t, k) for k, t in touches.items()])
                if bounds:
                    self._evict(db, min(bounds))
                db.execute("COMMIT")
                self._commits += 1
        except Exception as exc:  # locked past the busy timeout, disk full, a damaged file: never fatal
            if db.in_transaction:
                db.execute("ROLLBACK")
            message = f"the response cache {self.path} could not be written ({redact(str(exc))})"
            logger.warning("%s", message)
            for listener in list(self.listeners):
                listener(message)
        finally:
            self._db_lock.release()
            with self._state_lock:
                for op in writes:
                    if op[0] in ("clear", "evict"):
                        continue
                    written = op[2] if op[0] == "put" else None  # unless a newer op replaced it
                    if op[1] in self._pending and self._pending[op[1]] is written:
                        del self._pending[op[1]]
            for done in syncs:
                done.set_result(None)

    @staticmethod
    def _evict(db: sqlite3.Connection, bound: int) -> None:
        """Past ``bound`` bytes, remove the least recently hit entries down to ``_EVICT_TO`` of it."""
        total = db.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()[0]
        if total <= bound:
            return
        excess = total - int(bound * _EVICT_TO)
        ids: list[int] = []
        for row_id, size in db.execute("SELECT id, size FROM entries ORDER BY last_used, id"):
            ids.append(row_id)
            excess -= size
            if excess <= 0:
                break
        db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids])


def _stop_writer(ops: queue.SimpleQueue[tuple[Any, ...] | None], thread: threading.Thread) -> None:
    if thread.is_alive():
        ops.put(None)
        thread.join()


_backends: dict[tuple[int, str], SQLiteCache] = {}
_backends_lock = threading.Lock()


def open_backend(location: str | os.PathLike[str] | CacheBackend) -> CacheBackend:
    """The backend for ``location``: ``":memory:"`` (a new ``MemoryCache``), a SQLite file (opened once per
    process and shared by every client naming it), or a backend object of the caller's (used as it is, and
    never closed by llmkit). Raises ``CacheUnavailable``."""
    if not isinstance(location, (str, os.PathLike)):
        return _Borrowed(location)
    if os.fspath(location) == ":memory:":
        return MemoryCache()
    path = Path(os.path.abspath(Path(location).expanduser()))
    slot = (os.getpid(), str(path))  # a forked child opens its own (the parent's writer thread is not there)
    with _backends_lock:
        backend = _backends.get(slot)
        if backend is None or backend.closed:
            backend = _backends[slot] = SQLiteCache(path)
        backend.users += 1
    return _Shared(backend)


class _Delegate:
    """A backend handed through to ``self.backend``; ``lookup_many``/``store_many`` fall back to one call per
    key on backends without them (a user's own)."""

    backend: Any
    location: str

    def lookup(self, key: str, now: float) -> Entry | None:
        return self.backend.lookup(key, now)

    def lookup_many(self, keys: list[str], now: float) -> list[Entry | None]:
        return lookup_many(self.backend, keys, now)

    def store(self, key: str, entry: Entry, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        self.backend.store(key, entry, ttl=ttl, max_bytes=max_bytes)

    def store_many(self, items: list[tuple[str, Entry]], *, ttl: float | None = None,
                   max_bytes: int | None = None) -> None:
        store_many(self.backend, items, ttl=ttl, max_bytes=max_bytes)

    def discard(self, key: str) -> None:
        self.backend.discard(key)

    def clear(self) -> None:
        self.backend.clear()

    def info(self) -> dict[str, Any]:
        return self.backend.info()


class _Shared(_Delegate):
    """One client's hold on a shared ``SQLiteCache``: closing it releases the hold; the last one closes the file."""

    backend: SQLiteCache

    def __init__(self, backend: SQLiteCache) -> None:
        self.backend = backend
        self.location = backend.location
        self._released = False

    def flush(self) -> None:
        self.backend.flush()

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        backend = self.backend
        with _backends_lock:
            backend.users -= 1
            last = backend.users <= 0
            if last and _backends.get((os.getpid(), backend.location)) is backend:
                del _backends[(os.getpid(), backend.location)]
        if last:
            backend.close()


class _Borrowed(_Delegate):
    """A backend the user passed in (``Client(cache=MyBackend())``): every call goes to it; closing is theirs."""

    def __init__(self, backend: CacheBackend) -> None:
        self.backend = backend
        self.location = str(getattr(backend, "location", type(backend).__name__))

    def close(self) -> None:
        pass


def lookup_many(backend: Any, keys: list[str], now: float) -> list[Entry | None]:
    """``backend.lookup_many`` when it has one, else one ``lookup`` per key."""
    many = getattr(backend, "lookup_many", None)
    if many is not None:
        found = list(many(keys, now))
        if len(found) != len(keys):
            raise ValueError(f"lookup_many answered {len(found)} entries for {len(keys)} keys")
        return found
    return [backend.lookup(key, now) for key in keys]


def store_many(backend: Any, items: list[tuple[str, Entry]], *, ttl: float | None, max_bytes: int | None) -> None:
    """``backend.store_many`` when it has one, else one ``store`` per entry."""
    many = getattr(backend, "store_many", None)
    if many is not None:
        many(items, ttl=ttl, max_bytes=max_bytes)
        return
    for key, entry in items:
        backend.store(key, entry, ttl=ttl, max_bytes=max_bytes)


def remove_files(path: Path) -> None:
    """Delete a cache file and its WAL companions (a file that is not a database, before starting afresh)."""
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{path}{suffix}")
        except FileNotFoundError:
            pass


def default_location(ledger: Any) -> Path:
    """``cache.sqlite3`` beside the ledger's file (the user's data folder when the ledger is in memory)."""
    if ledger is None or os.fspath(ledger) in (":memory:", "default"):
        from .ledger.store import Ledger

        return Ledger.default_path().parent / FILE_NAME
    return Path(ledger).expanduser().parent / FILE_NAME


# ----------------------------------------------------------------------------------------------
# the front


class ResponseCache:
    """One client's use of the cache: modes, keys, TTL, its own hit/miss counts, and never an error."""

    def __init__(self, config: ClientConfig, events: EventLog, clock: Callable[[], float]) -> None:
        setting = getattr(config, "cache", None)
        self.default_on = setting not in (None, False)
        self._owned: CacheBackend | None = None  # a backend this front made (and closes): Redis
        if setting == "redis":
            from .shared.cache_backend import RedisCacheBackend

            self._owned = RedisCacheBackend(config.shared_state, config.namespace)  # type: ignore[arg-type]
        self.location: str | os.PathLike[str] | CacheBackend = (
            default_location(config.ledger) if setting in (None, True, False)
            else self._owned if self._owned is not None else setting)
        self.ttl: float | None = getattr(config, "cache_ttl", None)
        self.max_bytes: int | None = getattr(config, "cache_max_bytes", DEFAULT_MAX_BYTES)
        self.events = events
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self.saved_usd = 0.0
        self._backend: CacheBackend | None = None
        self._broken: str | None = None  # why the file cannot be used (every call then misses)
        self._open_lock = threading.Lock()
        self._warned: set[str] = set()
        self._closed = False
        self._pid = os.getpid()

    # -- per request ---------------------------------------------------------------------------

    def mode(self, request: Request) -> str | None:
        """``"use"``, ``"refresh"`` or None (this call does not touch the cache)."""
        asked = request.cache
        if asked is None:
            return "use" if self.default_on else None
        if asked == "refresh":
            return "refresh"
        return "use" if asked else None

    def lookup(self, request: Request) -> tuple[Response, float] | None:
        """A hit as ``(response, cost it saved)``; None on a miss (or when this call does not use the cache)."""
        mode = self.mode(request)
        if mode is None:
            return None
        self.misses += 1  # undone below on a hit
        if mode == "refresh":
            return None
        backend = self._open()
        if backend is None:
            return None
        key = cache_key(request)
        now = self.clock()
        try:
            entry = backend.lookup(key, now)
        except Exception as exc:
            self.warn(f"reading the response cache {backend.location} failed ({redact(str(exc))}); "
                      "treated as a miss", request.id)
            return None
        if entry is None or (self.ttl is not None and now - entry.created > self.ttl):
            return None
        try:
            response, cost = decode_response(entry.payload, request)
        except BadEntry as exc:
            self.warn(f"a response cache entry no longer parses ({exc}); treated as a miss and removed", request.id)
            self._quietly(backend.discard, key)
            return None
        if not _still_valid(request, response):  # e.g. the response_model's validators changed: ask again
            return None  # (with the usual validation retries; the fresh answer overwrites this entry)
        saved = cost or 0.0
        self.misses -= 1
        self.hits += 1
        self.saved_usd += saved
        return response, saved

    def contains(self, request: Request) -> bool:
        """Whether a call like ``request`` would be a hit now (no counting; for estimates)."""
        backend = self._open()
        if backend is None:
            return False
        try:
            entry = backend.lookup(cache_key(request), self.clock())
            if entry is None or (self.ttl is not None and self.clock() - entry.created > self.ttl):
                return False
            response, _ = decode_response(entry.payload, request)
            return _still_valid(request, response)
        except Exception:
            return False

    def store(self, request: Request, response: Response) -> None:
        """Keep a successful, complete answer (when this call uses the cache). Never raises.

        An answer a content filter stopped (``finish_reason="content_filter"``, possibly partial) is not kept:
        replaying it would repeat a refusal the provider may not make again. An answer cut at ``max_tokens``
        is kept: the key holds ``max_tokens``, so the same call would be cut the same way."""
        if response.cached or self.mode(request) is None or response.finish_reason in UNCACHED_FINISH:
            return
        backend = self._open()
        if backend is None:
            return
        try:
            payload = encode_response(response)
            entry = Entry(payload, self.clock(), response.cost_usd)
            backend.store(cache_key(request), entry, ttl=self.ttl, max_bytes=self.max_bytes)
        except Exception as exc:  # an answer that cannot be encoded, a closed or broken store
            self.warn(f"an answer could not be stored in the response cache ({redact(str(exc))})", request.id)

    def get_blobs(self, keys: list[str]) -> list[bytes | None]:
        """Raw stored bytes by key (e.g. embedding vectors), honouring the TTL; misses on any error."""
        backend = self._open()
        if backend is None:
            return [None] * len(keys)
        now = self.clock()
        out: list[bytes | None] = []
        try:
            for entry in lookup_many(backend, keys, now):  # one round trip where the store allows it
                fresh = entry is not None and (self.ttl is None or now - entry.created <= self.ttl)
                out.append(entry.payload if fresh and entry is not None else None)
        except Exception as exc:
            self.warn(f"reading the response cache {backend.location} failed ({redact(str(exc))}); "
                      "treated as a miss", None)
            return [None] * len(keys)
        return out

    def put_blobs(self, items: list[tuple[str, bytes]]) -> None:
        """Store raw bytes by key. Never raises (a failure is a warning event)."""
        backend = self._open()
        if backend is None:
            return
        try:
            now = self.clock()
            store_many(backend, [(key, Entry(payload, now, None)) for key, payload in items], ttl=self.ttl,
                       max_bytes=self.max_bytes)
        except Exception as exc:
            self.warn(f"vectors could not be stored in the response cache ({redact(str(exc))})", None)

    # -- management ----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """hits, misses, entries, size_bytes, saved_usd (hits/misses/saved: this client's; the rest: the file's),
        path, and warning: why the store cannot be used right now (None when it can)."""
        entries = size = 0
        warning = None
        backend = self._open()
        if backend is not None:
            try:
                stats = backend.info()
                entries, size = stats["entries"], stats["size_bytes"]
            except Exception as exc:
                warning = f"the response cache {backend.location} could not be read ({redact(str(exc))})"
                self.warn(warning, None)
        elif self._broken is not None:
            warning = f"the response cache cannot be used: {redact(self._broken)}"
        return {"hits": self.hits, "misses": self.misses, "entries": entries, "size_bytes": size,
                "saved_usd": round(self.saved_usd, 12), "path": self._where(), "warning": warning}

    def clear(self) -> None:
        """Remove every entry of the cache (for every client on the file) and reset this client's counts.

        A file that is not a usable cache is deleted and started afresh. A store that cannot be reached
        (Redis away) is left as it is: a ``cache_warning`` event, never an error."""
        with self._open_lock:
            if self._broken is not None and isinstance(self.location, (str, os.PathLike)):
                remove_files(Path(self.location).expanduser())
                self._broken = None
                self._warned.clear()
        backend = self._open()
        if backend is not None:
            try:
                backend.clear()
            except Exception as exc:
                self.warn(f"the response cache {backend.location} could not be cleared ({redact(str(exc))}); "
                          "its entries are left as they were", None)
        self.hits = self.misses = 0
        self.saved_usd = 0.0

    def close(self) -> None:
        with self._open_lock:
            self._closed = True
            backend, self._backend = self._backend, None
        if backend is not None:
            self._quietly(backend.close)
        if self._owned is not None:
            self._quietly(self._owned.close)

    # -- pieces --------------------------------------------------------------------------------

    def _open(self) -> CacheBackend | None:
        backend = self._backend
        if self._pid != os.getpid():  # a forked child: the parent's connections and writer thread are not ours
            self._pid, self._backend, backend = os.getpid(), None, None
        if backend is not None or self._broken is not None:
            return backend
        with self._open_lock:
            if self._backend is None and self._broken is None and not self._closed:
                try:
                    self._backend = open_backend(self.location)
                except CacheUnavailable as exc:
                    self._broken = str(exc)
                    self.warn(f"the response cache cannot be used: {redact(str(exc))}; calls go to the providers "
                              "(client.clear_cache() starts a fresh file)", None)
                else:
                    listeners = getattr(getattr(self._backend, "backend", None), "listeners", None)
                    if listeners is not None:
                        listeners.append(lambda message: self.warn(message, None))
            return self._backend

    def _where(self) -> str:
        location = self.location
        if isinstance(location, (str, os.PathLike)):
            return os.fspath(location)
        return str(getattr(location, "location", type(location).__name__))

    def warn(self, message: str, request_id: str | None) -> None:
        """A ``cache_warning`` event (and a log line), once per distinct message."""
        if message in self._warned:
            return
        self._warned.add(message)
        logger.warning("%s", message)
        self.events.emit("cache_warning", None, request_id, message=message)

    @staticmethod
    def _quietly(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:
            logger.debug("response cache: %s", exc)


def _still_valid(request: Request, response: Response) -> bool:
    """Whether a stored answer still holds what ``request`` asks for (its ``response_model`` or schema, its
    tools); sets ``response.parsed`` when it does. The key hashes the schema, not the model's validators."""
    if not structured.wants_check(request):
        return True
    value, errors, _ = structured.check(request, response)
    if errors is not None:
        return False
    response.parsed = value
    return True


def replay_chunks(content: str, size: int = 64) -> list[str]:
    """A cached answer cut into stream chunks of about ``size`` characters, each ending after a space."""
    pieces: list[str] = []
    start, n = 0, len(content)
    while start < n:
        end = min(start + size, n)
        if end < n:
            space = content.rfind(" ", start + 1, end)
            if space > start:
                end = space + 1
        pieces.append(content[start:end])
        start = end
    return pieces


def with_mode(request: Request, mode: Any) -> Request:
    """``request`` carrying the call's ``cache=`` argument (checked)."""
    checked = check_mode(mode)
    return request if checked is None else replace(request, cache=checked)
