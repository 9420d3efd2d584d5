"""The journal's writer stopping: a failure mid-commit, records arriving after the stop marker when the ledger
was not closed (the finalizer at exit), and a replayer's sweep meeting a journal being made."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

from llmkit.ledger import journal
from llmkit.ledger.store import _INSERT, FIELDS, Ledger, _scrub

from .test_journal import in_file, journals, rec

pytestmark = pytest.mark.skipif(not journal.available(), reason="no fcntl: records are committed inline")


@pytest.mark.timeout(60)
def test_a_writer_that_fails_mid_commit_settles_the_waiter_of_the_row_it_was_writing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """_Writer.run settles, on a failure, only what is still in the queue (_let_waiters_go). The rows (and
    flushes) _commit_batch had already taken into its local ``batch`` / ``flushes`` when the exception came
    are in no queue and no list run() can see: their waiters are never settled, so append_sync blocks
    forever (an async append awaits forever; a flush waits out _CLOSE_PATIENCE_S)."""
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    writer = ledger._writer
    assert writer is not None

    def fail(items: Any, failed: Any) -> Any:
        raise RuntimeError("an unexpected failure inside the writer's commit")

    monkeypatch.setattr(writer, "_write", fail)
    waiter = ledger._submit(rec(1), None)  # what append_sync waits on (no timeout)
    assert isinstance(waiter, Future)
    writer.join(30)
    assert not writer.is_alive()
    try:
        assert waiter.done(), "the writer has ended and append_sync still waits for it: a hang"
    finally:
        if not waiter.done():
            waiter.set_result(None)
        ledger.close()


def _in_the_stop_window(ledger: Ledger, monkeypatch: pytest.MonkeyPatch, append: Any) -> None:
    """Run ``append`` on the writer thread after it took its last rows at the stop marker and before it
    closes the journal: what a daemon thread appending while the interpreter's exit runs the ledger's
    weakref finalizer (the ledger is not closed, so _submit lets it in) does."""
    writer = ledger._writer
    assert writer is not None
    real = writer._flush_at_close

    def flush_at_close() -> None:
        real()
        append()

    monkeypatch.setattr(writer, "_flush_at_close", flush_at_close)


@pytest.mark.timeout(60)
def test_a_row_queued_after_the_stop_marker_is_not_reported_written(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """_let_waiters_go(ended=True) settles every row waiter still queued with success ({} as failures),
    assuming only flushes can follow the stop marker. Rows can when the stop marker comes from the finalizer
    (atexit) rather than close(): append_sync then returns normally for a row that was never written."""
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    waiters: list[Any] = []
    _in_the_stop_window(ledger, monkeypatch, lambda: waiters.append(_outcome(ledger, rec(2), None)))
    ledger._finalizer()  # what weakref.finalize's atexit hook runs (the ledger is not closed)
    assert len(waiters) == 1
    refused = isinstance(waiters[0], RuntimeError)  # (a fix may refuse the append outright)
    assert refused or (isinstance(waiters[0], Future) and waiters[0].done())
    written = "req-2" in in_file(path)
    assert written or refused or waiters[0].exception() is not None, "append_sync returned, the record is in no file"


@pytest.mark.timeout(60)
def test_a_row_journaled_after_the_writers_last_take_is_not_deleted_with_the_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stop flag is checked only on the queue path of _submit, not the journal path: a row journaled
    after the writer's last take (journal not closed yet) makes append return, and then
    journal.close(committed=ended and not backlog) deletes the files with that row in them."""
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    loop = asyncio.new_event_loop()
    results: list[Any] = []
    try:
        _in_the_stop_window(ledger, monkeypatch, lambda: results.append(_outcome(ledger, rec(3), loop)))
        ledger._finalizer()
    finally:
        loop.close()
    assert len(results) == 1
    if isinstance(results[0], RuntimeError):  # refused: the caller knows it was not written
        return
    assert results == [None]  # journaled: async append returns at once
    with Ledger(path):  # replays whatever journal is left
        pass
    assert "req-3" in in_file(path), "append returned; the record was journaled, then its journal deleted"


def _outcome(ledger: Ledger, record: Any, loop: Any) -> Any:
    try:
        return ledger._submit(record, loop)
    except RuntimeError as exc:
        return exc


@pytest.mark.timeout(60)
def test_a_replayer_sweeping_while_another_ledger_makes_its_journal_leaves_it_its_journal(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journal.__init__ creates '-new' (O_EXCL) and only then flocks it. A replayer's _sweep in that gap sees
    an unheld '-new' (its _held probe even takes the lock for a moment) and unlinks it; the maker's rename
    '-new' -> '-a' then fails (ENOENT), Journal() raises, and that ledger runs without a journal for its
    whole life (every record committed inline). '-new' held by nobody is not proof of a dead maker."""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    other = sqlite3.connect(path, isolation_level=None)  # the replaying process's connection
    real_fcntl = journal.fcntl
    swept: list[int] = []

    class Fcntl:
        LOCK_EX, LOCK_NB = real_fcntl.LOCK_EX, real_fcntl.LOCK_NB

        @staticmethod
        def flock(fd: int, op: int) -> None:
            if not swept and any(n.endswith("-new") for n in os.listdir(tmp_path)):
                swept.append(-1)  # (once)
                swept[0] = journal.replay(path, other, _INSERT, len(FIELDS), _scrub)  # another process opens
            real_fcntl.flock(fd, op)

    monkeypatch.setattr(journal, "fcntl", Fcntl)
    try:
        ledger = Ledger(path)
    finally:
        monkeypatch.setattr(journal, "fcntl", real_fcntl)
        other.close()
    try:
        assert swept == [0]
        assert ledger._journal is not None, "the sweep deleted a living ledger's journal while it was being made"
        assert any(p.name.endswith("-a") for p in journals(path))
    finally:
        ledger.close()
