"""The journal at its edges: odd ledger names, a replay racing a new journal, short writes, refused rows."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from llmkit.ledger import journal
from llmkit.ledger.store import _INSERT, FIELDS, Ledger, _to_row

from .test_journal import dead_journal, in_file, journals, rec

pytestmark = pytest.mark.skipif(not journal.available(), reason="no fcntl: records are committed inline")


@pytest.mark.timeout(60)
def test_a_dead_journal_beside_a_ledger_whose_name_has_glob_characters_is_replayed(tmp_path: Path) -> None:
    """replay() globs f"{ledger.name}.journal-*-a" unescaped: '[1]' in the name is a character class, so a
    killed process's journal is never found, never replayed, and its files stay forever."""
    path = tmp_path / "run[1].sqlite3"
    Ledger(path).close()
    dead_journal(path, [rec(1), rec(2)])
    with Ledger(path):
        pass
    assert in_file(path) == ["req-1", "req-2"]


@pytest.mark.timeout(60)
async def test_a_journal_opened_while_another_process_replays_stays_on_disk(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Journal.__init__ creates '-a' and only then flocks it. A replayer (another process opening the ledger)
    that gets in between finds an unlocked, empty journal, replays it and unlinks it; the new owner then
    locks the unlinked inode and journals records into a file nobody can see: a kill -9 loses them."""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    real = journal.fcntl
    other = sqlite3.connect(path, isolation_level=None)  # the other process's connection

    class Interleave:
        LOCK_EX, LOCK_NB = real.LOCK_EX, real.LOCK_NB
        armed = True

        def flock(self, fd: int, op: int) -> None:
            if self.armed:  # the owner is between os.open and flock: the other process replays now
                self.armed = False
                journal.replay(path, other, _INSERT, len(FIELDS))
            real.flock(fd, op)

    monkeypatch.setattr(journal, "fcntl", Interleave())
    ledger = Ledger(path)
    monkeypatch.setattr(journal, "fcntl", real)
    other.close()
    writer = ledger._writer
    assert writer is not None
    try:
        with writer.db_lock:  # the writer cannot commit yet: the record is only in the journal
            if ledger._journal is not None:  # (no journal at all would be acceptable: records commit inline)
                await ledger.append(rec(1))
                on_disk = b"".join(p.read_bytes() for p in journals(path))
                assert b"req-1" in on_disk, "append returned, but its record is in no journal file on disk"
    finally:
        ledger.close()


@pytest.mark.timeout(60)
async def test_a_short_journal_write_does_not_cost_the_records_after_it(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Journal.write ignores os.write's count. A short write (disk or quota nearly full, RLIMIT_FSIZE) leaves a
    torn record that the row is counted as durable in; the records journaled after it are read as part of
    it at replay and are skipped as 'damaged': a kill then loses records whose append returned."""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    j = journal.Journal(path)
    real_write = os.write
    short = {"left": 1}

    def write(fd: int, data: bytes) -> int:
        if fd in j._fds and short["left"]:
            short["left"] -= 1
            return real_write(fd, data[: len(data) // 2])  # the kernel wrote part of it
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for i in (1, 2, 3):  # (1 is the cut one: whether it is kept is the fix's choice)
        try:
            j.write(_to_row(rec(i)))
        except OSError:
            pass  # a fix may refuse the short write (Ledger then commits that row inline)
    monkeypatch.setattr(os, "write", real_write)
    j._close_files()  # killed
    with Ledger(path):
        pass
    assert {"req-2", "req-3"} <= set(in_file(path))


@pytest.mark.timeout(60)
def test_a_replayed_record_with_text_sqlite_refuses_is_stored_scrubbed_as_the_writer_does(tmp_path: Path) -> None:
    """The live writer stores such a record scrubbed (_Writer._write -> _scrub); replay drops it, so a kill -9
    turns a record the process would have kept into a lost one."""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    dead_journal(path, [rec(1, error_message="bad \udfff text"), rec(2, input_tokens=2**70)])
    with Ledger(path):
        pass
    assert in_file(path) == ["req-1", "req-2"]


@pytest.mark.timeout(60)
def test_replay_waits_for_a_write_lock_held_a_moment_by_another_process(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay runs on the opening connection after _connect set busy_timeout = 0: a commit in flight in any
    other process (every ~10 ms for a busy one) makes it give up at once, and the killed process's records
    stay out of SQLite until some later open."""
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    dead_journal(path, [rec(1)])
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    trying = threading.Event()
    real_insert, real_transaction = journal._insert_missing, journal._transaction
    threads: list[threading.Thread] = []

    def release() -> None:
        trying.wait(30)
        holder.execute("COMMIT")

    def insert_missing(*args: Any) -> int:  # (after the migrations): another process's group commit starts
        holder.execute("BEGIN IMMEDIATE")
        threads.append(threading.Thread(target=release))
        threads[0].start()
        return real_insert(*args)

    def transaction(db: sqlite3.Connection, insert: str, rows: Any) -> None:
        trying.set()  # ... and ends a moment after replay asks for the lock
        real_transaction(db, insert, rows)

    monkeypatch.setattr(journal, "_insert_missing", insert_missing)
    monkeypatch.setattr(journal, "_transaction", transaction)
    try:
        with Ledger(path) as ledger:
            ids = ledger.request_ids()
    finally:
        trying.set()
        for t in threads:
            t.join()
        holder.close()
    assert ids == ["req-1"]


@pytest.mark.timeout(60)
def test_a_journal_written_through_a_symlink_is_replayed_by_an_open_of_the_file_itself(tmp_path: Path) -> None:
    path = tmp_path / "real.sqlite3"
    Ledger(path).close()
    link = tmp_path / "link.sqlite3"
    link.symlink_to(path)
    dead_journal(link, [rec(1)])
    assert journals(path) != []  # named after the file itself, not the link
    with Ledger(path):
        pass
    assert in_file(path) == ["req-1"] and journals(path) == []
