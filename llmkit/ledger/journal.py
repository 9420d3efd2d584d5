"""The ledger's journal: what makes a record durable before SQLite has it.

A request's record must survive the process being killed the moment the call returns. An SQLite commit
on the request path does that but costs 50-100 µs with the caches cold (two indexes and the WAL); handing
each record to the writer thread costs more (a thread wake-up and the GIL, every call). Instead the record
is appended to a journal file, one ``os.write`` of a few hundred bytes (in the OS's page cache from then
on, as a WAL commit with ``synchronous = NORMAL`` is), and the writer thread commits the journaled records
to SQLite in groups, up to ``LINGER_S`` later.

Each ledger connection has its own pair of files, ``<ledger>.journal-<owner>-a`` and ``-b``, held with an
exclusive ``flock`` while it lives. Callers append to the current one; the writer takes the records
written so far and switches callers to the other file in one step (under the ledger's lock), commits them,
and empties the file it took them from. A process that opens the ledger replays the journals no living
process holds (a killed one's), skipping records the file already has, and deletes them.

Where ``fcntl`` is missing (Windows), and in processes started by ``fork`` or ``multiprocessing`` (they
may end with ``os._exit``, closing nothing), there is no journal: records are committed on the request path.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import secrets
import sqlite3
import struct
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .._secrets import logger

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: How long the writer lets journaled records gather before it commits them (one wake-up and one
#: transaction for all of them). Readers in this process never wait for it (``Ledger.flush``). Sequential
#: calls on loopback (a scratch A/B like ``bench_overhead``'s SQLite rows) paid +73 µs a call over the memory
#: ledger at 10 ms (12 records a commit), +18 µs at 50 ms (44 a commit), +13 µs at 200 ms: the writer's
#: wake-ups and commits take the GIL.
LINGER_S = 0.05

_LENGTH = struct.Struct("<I")
_MARK = ".journal-"


def available() -> bool:
    return fcntl is not None


_forked = False  # this process is a fork of one that imported llmkit


def _note_fork() -> None:
    global _forked
    _forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_note_fork)


def usable() -> bool:
    """Whether records may wait in a journal here: ``fcntl`` exists, and the process ends in a way that
    closes its ledgers. A forked child (``multiprocessing``'s workers above all) usually ends with
    ``os._exit``, which runs no exit handlers: its last records would wait in the journal for the next
    process to open the ledger. Such processes commit each record before the call returns."""
    if fcntl is None or _forked:
        return False
    process = sys.modules.get("multiprocessing.process")
    return process is None or process.parent_process() is None


class Journal:
    """One ledger connection's two journal files (see the module docstring). ``write`` runs under the
    ledger's lock, as does ``switch``; ``clear`` runs on the writer thread."""

    def __init__(self, ledger: Path) -> None:
        assert fcntl is not None
        ledger = ledger.resolve()  # (beside the file itself: an open through a symlink replays the same journals)
        owner = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.paths = (_segment(ledger, owner, "a"), _segment(ledger, owner, "b"))
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        # '-a' appears under its name already locked: created under another name, locked, then renamed. A
        # replayer (another process opening the ledger) that found it unlocked would take it for a killed
        # process's journal and delete it, and the records written to it after that would be on no path.
        fresh = _segment(ledger, owner, "new")
        self._fds = [os.open(fresh, flags | os.O_EXCL, 0o600)]
        try:
            fcntl.flock(self._fds[0], fcntl.LOCK_EX | fcntl.LOCK_NB)  # ours while we live (see ``replay``)
            self._fds.append(os.open(self.paths[1], flags, 0o600))
            os.rename(fresh, self.paths[0])
        except BaseException:
            self._close_files()
            for path in (fresh, self.paths[1]):
                with contextlib.suppress(OSError):
                    os.unlink(path)
            raise
        self._sizes = [0, 0]  # bytes in each file: where a failed write is cut back to
        self.current = 0
        self.closed = False
        self.broken = False  # a torn record stayed in a file, or one would not empty: no more records here

    def write(self, row: tuple[Any, ...]) -> None:
        """Append one row (the ledger's lock is held). All of it lands or none does: a short write (a disk or
        quota nearly full) is finished, and one that fails is cut off again, so the records after it are
        still read back whole. ``OSError`` means the row is not in the journal."""
        if self.broken or self.closed:
            raise OSError("this ledger journal takes no more records")
        data = marshal.dumps(row)
        data = _LENGTH.pack(len(data)) + data
        fd, start = self._fds[self.current], self._sizes[self.current]
        done = 0
        try:
            while done < len(data):
                wrote = os.write(fd, data[done:] if done else data)
                if wrote <= 0:
                    raise OSError(f"the journal took {done} of {len(data)} bytes")
                done += wrote
        except BaseException:
            if done:
                try:
                    os.ftruncate(fd, start)
                except OSError:  # a torn record we cannot take back: no more records to this journal
                    self.broken = True
            raise
        self._sizes[self.current] = start + done

    def switch(self) -> int:
        """Send later writes to the other file; returns the one written so far (the ledger's lock is held)."""
        taken = self.current
        self.current ^= 1
        return taken

    def clear(self, segment: int) -> None:
        """Every record in ``segment`` is in SQLite now: empty it."""
        if self.closed:
            return
        try:
            os.ftruncate(self._fds[segment], 0)
        except OSError as exc:  # its records are in SQLite: a replay skips them; but stop adding to it
            self.broken = True
            logger.warning("llmkit: could not empty the ledger journal %s (%s); records are committed one by "
                           "one from now on", self.paths[segment].name, exc)
            return
        self._sizes[segment] = 0

    def close(self, committed: bool) -> None:
        """Close the files; delete them if every record they hold is committed (else the next process to
        open the ledger replays them)."""
        if self.closed:
            return
        self.closed = True
        if committed:  # ('-b' first: a kill in between leaves '-a', which a replay finds, dedupes and deletes)
            for path in reversed(self.paths):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        self._close_files()

    def _close_files(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []


def _segment(ledger: Path, owner: str, half: str) -> Path:
    return ledger.with_name(f"{ledger.name}{_MARK}{owner}-{half}")


def replay(ledger: Path, db: sqlite3.Connection, insert: str, width: int,
           scrub: Callable[[tuple[Any, ...]], tuple[Any, ...]] = lambda row: row) -> int:
    """Commit the records of journals that no living process holds (a killed process's) and delete them;
    records the file already has are skipped, and a record SQLite refuses is stored ``scrub``-bed, as the
    writer would have. Returns how many were added."""
    if fcntl is None:
        return 0
    ledger = ledger.resolve()
    added = 0
    for first in _files(ledger, ("-a",)):
        try:
            fd = os.open(first, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            continue  # replayed and deleted by another process just now
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive
            second = first.with_name(first.name[:-1] + "b")
            a, b = list(_read(first)), list(_read(second))
            if _began(b) < _began(a):  # the writer alternates files: the older records first
                a, b = b, a
            added += _insert_missing(db, insert, width, [*a, *b], first, scrub)
            for path in (second, first):  # (the locked one last: a second replayer then finds nothing)
                with contextlib.suppress(OSError):
                    os.unlink(path)
        except sqlite3.Error as exc:  # the file is busy: the journal stays for the next open
            logger.warning("llmkit: could not replay the ledger journal %s yet (%s)", first.name, exc)
        finally:
            os.close(fd)
    return added + _sweep(ledger, db, insert, width, scrub)


def _sweep(ledger: Path, db: sqlite3.Connection, insert: str, width: int,
           scrub: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> int:
    """Files of journals killed half made or half deleted: a ``-new`` nobody holds, a minute old (killed
    before its rename; empty), a ``-b`` with no ``-a`` and no held ``-new`` (killed between ``close``'s two unlinks,
    or during ``__init__``). A living owner always holds its ``-new`` or has its ``-a``."""
    added = 0
    for path in _files(ledger, ("-new", "-b")):  # (listed again: replay has just deleted the journals it took)
        name = path.name
        stem = name.rsplit("-", 1)[0]
        fresh, first = ledger.with_name(f"{stem}-new"), ledger.with_name(f"{stem}-a")
        if name.endswith("-new") and not _stale(path):  # made just now: its maker may not hold it yet
            continue
        if _held(fresh) or (name.endswith("-b") and first.exists()):  # (in this order: see __init__)
            continue
        try:
            if name.endswith("-b"):
                added += _insert_missing(db, insert, width, list(_read(path)), path, scrub)
            os.unlink(path)
        except sqlite3.Error as exc:
            logger.warning("llmkit: could not replay the ledger journal %s yet (%s)", name, exc)
        except OSError:
            pass  # deleted by another process just now
    return added


def _began(rows: list[tuple[Any, ...]]) -> float:
    """The time of a journal file's first record (rows are in ``FIELDS`` order: request id, then time)."""
    first = rows[0] if rows else ()
    return first[1] if len(first) > 1 and isinstance(first[1], (int, float)) else float("inf")


#: A ``-new`` file older than this is a killed maker's (a living one renames it microseconds after making it).
_STALE_S = 60.0


def _stale(path: Path) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > _STALE_S
    except OSError:
        return False


def _held(path: Path) -> bool:
    """Whether a living process holds the ``flock`` of ``path`` (False if there is no such file)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


def _files(ledger: Path, ends: tuple[str, ...]) -> list[Path]:
    """The journal files beside ``ledger`` whose names end in one of ``ends``, sorted (names are compared as
    text, not globbed: the ledger's name may hold ``[``)."""
    prefix = f"{ledger.name}{_MARK}"
    try:
        names = os.listdir(ledger.parent)
    except OSError:
        return []
    return sorted(ledger.with_name(name) for name in names if name.startswith(prefix) and name.endswith(ends))


def _read(path: Path) -> Iterator[tuple[Any, ...]]:
    try:
        data = path.read_bytes()
    except OSError:
        return
    at = 0
    while at + _LENGTH.size <= len(data):
        (size,) = _LENGTH.unpack_from(data, at)
        start = at + _LENGTH.size
        if start + size > len(data):
            return  # a write cut short by the kill: it never returned to its caller
        try:
            row = marshal.loads(data[start:start + size])
        except (ValueError, EOFError, TypeError):
            logger.error("llmkit: ledger journal %s is damaged after %d bytes; the rest is skipped", path.name, at)
            return
        if isinstance(row, tuple):
            yield row
        at = start + size


def _insert_missing(db: sqlite3.Connection, insert: str, width: int, rows: Sequence[tuple[Any, ...]],
                    where: Path, scrub: Callable[[tuple[Any, ...]], tuple[Any, ...]]) -> int:
    """Insert the rows whose request id the file does not have yet (rows are in ``FIELDS`` order: request id
    first, then time). One transaction."""
    good = [row for row in rows if len(row) == width]
    if len(good) < len(rows):
        logger.error("llmkit: %d record(s) in %s have the wrong shape; skipped", len(rows) - len(good), where.name)
    if not good:
        return 0
    since = min(row[1] for row in good)
    have = {rid for (rid,) in db.execute("SELECT request_id FROM requests WHERE time >= ?", (since,))}
    missing = [row for row in good if row[0] not in have and not have.add(row[0])]  # type: ignore[func-returns-value]
    if missing:
        try:
            _transaction(db, insert, missing)
        except Exception as exc:
            if _busy(exc):
                raise
            for row in missing:  # one row SQLite refuses must not keep the others out
                for attempt in (row, scrub(row)):
                    try:
                        _transaction(db, insert, [attempt])
                        break
                    except Exception as again:
                        if _busy(again):
                            raise
                        error = again
                else:
                    logger.error("llmkit: a journaled record (%r) could not be written (%s); skipped", row[0], error)
        logger.warning("llmkit: %d record(s) of a process that ended without closing its ledger were recovered "
                       "from %s", len(missing), where.name)
    return len(missing)


def _transaction(db: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        db.executemany(insert, rows)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _busy(exc: BaseException) -> bool:
    """The file is locked or full (try again at the next open), rather than the row being refused."""
    return getattr(exc, "sqlite_errorname", "") in {"SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_FULL"}
