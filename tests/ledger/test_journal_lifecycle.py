"""The journal over a process's life: fork workers, a failing writer, close racing a read, replay order, litter."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import os
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from llmkit.ledger import journal, store
from llmkit.ledger.store import Ledger, _to_row

from .test_journal import in_file, journals, rec

pytestmark = pytest.mark.skipif(not journal.available(), reason="no fcntl: records are committed inline")


def _append_and_return(ledger: Ledger) -> None:
    asyncio.run(ledger.append(rec(2)))  # returns normally; the worker process then ends as multiprocessing ends it


@pytest.mark.timeout(60)
def test_a_fork_workers_records_reach_the_file_when_it_ends_normally(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A multiprocessing (fork) worker ends with os._exit: no atexit, so no finalizer closes its ledger. Its
    journaled records are never committed; the parent, still running, never sees them (README: "another
    client or process sees it within about 50 ms"), and they reach SQLite only when some process opens the
    ledger again. Before the journal, append committed before it returned."""
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    monkeypatch.setattr(store, "LINGER_S", 5.0)  # the worker ends inside the linger window, not just usually
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    try:
        worker = multiprocessing.get_context("fork").Process(target=_append_and_return, args=(ledger,))
        worker.start()
        worker.join(50)
        assert worker.exitcode == 0
        assert ledger.request_ids() == ["req-2"], "the worker's append returned, its record is not in the file"
    finally:
        ledger.close()


@pytest.mark.timeout(60)
async def test_a_writer_that_dies_never_deletes_journaled_records_it_has_not_committed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the writer thread ends by an exception (here: emptying a journal file fails, EIO), run()'s
    finally calls journal.close(committed=not self.backlog): the backlog is empty, so both journal files are
    deleted, although the records appended since the writer's last take are in them and in no SQLite row.
    close() and the next open then find nothing: records whose append returned are gone."""
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    writer = ledger._writer
    assert writer is not None and ledger._journal is not None
    entered, proceed = threading.Event(), threading.Event()
    real_ftruncate = os.ftruncate

    def ftruncate(fd: int, length: int) -> None:
        if threading.current_thread() is writer and length == 0:  # Journal.clear, after the commit
            entered.set()
            proceed.wait(30)
            raise OSError(errno.EIO, "I/O error")
        real_ftruncate(fd, length)

    monkeypatch.setattr(os, "ftruncate", ftruncate)
    await ledger.append(rec(1))
    assert await asyncio.to_thread(entered.wait, 30)  # req-1 committed; the writer is emptying its file
    await ledger.append(rec(2))  # journaled in the other file; append returned: it must not be lost
    proceed.set()
    await asyncio.to_thread(writer.join, 30)
    monkeypatch.setattr(os, "ftruncate", real_ftruncate)
    ledger.close()
    with Ledger(path):  # replays whatever journal is left
        pass
    assert in_file(path) == ["req-1", "req-2"]


@pytest.mark.timeout(120)
async def test_a_read_on_another_thread_during_close_does_not_wait_out_the_flush_patience(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """flush() checks writer.is_alive() and then queues (_FLUSH, future). If close() has queued the writer's
    stop marker first, the writer leaves its loop at that marker and never looks at the queue again: the
    future is never settled and the read (a dashboard thread, say) waits _CLOSE_PATIENCE_S (10 s) for nothing.
    Here the patience is made long so that the wait shows without measuring time."""
    monkeypatch.setattr(store, "_CLOSE_PATIENCE_S", 300.0)
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    writer = ledger._writer
    assert writer is not None
    stopping, flushing = threading.Event(), threading.Event()

    class Queue(queue.SimpleQueue):  # type: ignore[type-arg]
        def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
            super().put(item, block, timeout)
            if item is None:
                stopping.set()
            elif item[0] is store._FLUSH:
                flushing.set()

    old, writer.queue = writer.queue, Queue()
    old.put(store._CHECKPOINT_DUE)  # (wakes the writer, which then reads the new queue)
    taken = threading.Event()
    take = writer.take_journaled
    assert take is not None

    def take_and_tell() -> Any:
        rows = take()
        taken.set()
        return rows

    writer.take_journaled = take_and_tell
    flusher = None
    try:
        with writer.db_lock:  # the writer cannot commit: req-1 waits in the journal
            await ledger.append(rec(1))
            assert await asyncio.to_thread(taken.wait, 30)  # the writer holds req-1, stuck before its commit,
            closer = threading.Thread(target=ledger.close)  # so the stop marker stays in the queue
            closer.start()
            assert await asyncio.to_thread(stopping.wait, 30)  # close() has queued the writer's stop marker
            flusher = threading.Thread(target=ledger.flush, daemon=True)  # a reader on another thread
            flusher.start()
            assert await asyncio.to_thread(flushing.wait, 30)  # its _FLUSH is queued behind the stop marker
        await asyncio.to_thread(closer.join, 30)
        assert not closer.is_alive()
        await asyncio.to_thread(flusher.join, 10)  # (settled at once when fixed; 300 s when not)
        assert not flusher.is_alive(), "flush() still waits for a writer that has stopped"
    finally:
        while not writer.queue.empty():  # let a stuck flush go
            item = writer.queue.get_nowait()
            if item is not None and item[0] is store._FLUSH and not item[1].done():
                item[1].set_result(None)
    assert in_file(path) == ["req-1"]


@pytest.mark.timeout(60)
def test_replay_commits_a_killed_processs_records_oldest_first(tmp_path: Path) -> None:
    """The writer alternates between the two files: after a take from '-b', newer records go to '-a'. A kill
    while '-b' is being committed leaves the older records in '-b' and the newer in '-a'; replay reads '-a'
    first, so the newer records get the lower ids and request_ids() / history ("oldest first") are out of
    order."""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    j = journal.Journal(path)
    j.switch()  # the writer's first take: later records go to '-b'
    j.write(_to_row(rec(1)))
    j.write(_to_row(rec(2)))
    j.switch()  # the writer takes req-1, req-2 from '-b' ... and the process is killed while it commits them
    j.write(_to_row(rec(3)))  # appended meanwhile, into '-a'
    j._close_files()
    with Ledger(path) as ledger:
        assert ledger.request_ids() == ["req-1", "req-2", "req-3"]


@pytest.mark.timeout(60)
def test_the_files_of_a_journal_killed_while_it_was_being_created_do_not_stay_forever(tmp_path: Path) -> None:
    """Journal.__init__ creates '<ledger>.journal-<owner>-new', then '-b', then renames '-new' to '-a'. A kill
    between the two leaves '-new' and '-b'; replay only ever looks at names ending in '-a', so no open of the
    ledger removes them. (Journal.close unlinks '-a' before '-b' and a kill in between leaves '-b' alone, the
    same way.)"""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    for half in ("new", "b"):  # what the killed process left (an hour ago): created, never renamed
        left = tmp_path / f"l.sqlite3.journal-12345-0badf00d-{half}"
        left.touch()
        os.utime(left, (left.stat().st_atime - 3600, left.stat().st_mtime - 3600))
    (tmp_path / "l.sqlite3.journal-12346-0badf00e-b").touch()  # killed inside Journal.close
    with Ledger(path):
        pass
    assert journals(path) == []

