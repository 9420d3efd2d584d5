"""The ledger's journal: a record is durable (in a journal file) when ``append`` returns; the writer commits
journaled records to SQLite in groups; the next process to open the file replays a dead one's journal."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit.ledger import journal
from llmkit.ledger.store import _INSERT, FIELDS, Ledger, LedgerRecord, _to_row

pytestmark = pytest.mark.skipif(not journal.available(), reason="no fcntl: records are committed inline")


def rec(i: int, **kw: Any) -> LedgerRecord:
    base: dict[str, Any] = dict(request_id=f"req-{i}", time=1000.0 + i, started=999.0 + i, provider="p", model="m",
                                requested_model="m", status="ok", error_type=None, error_message=None,
                                input_tokens=10, output_tokens=20, cache_read_tokens=0, cache_write_tokens=0,
                                reasoning_tokens=0, usage_estimated=False, cost_usd=0.5, latency_s=0.1, attempts=1,
                                fallback=False, stream=False, priority=0, metadata={"i": i})
    base.update(kw)
    return LedgerRecord(**base)


def in_file(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [rid for (rid,) in db.execute("SELECT request_id FROM requests ORDER BY request_id")]
    finally:
        db.close()


def journals(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".journal-*"))


def dead_journal(path: Path, rows: list[LedgerRecord | tuple[Any, ...]]) -> None:
    """The journal files a killed process leaves: written, never cleared, its lock gone with it."""
    j = journal.Journal(path)
    for r in rows:
        j.write(r if isinstance(r, tuple) else _to_row(r))
    j._close_files()  # (the process died: its descriptors and lock go, the files stay)


@pytest.mark.timeout(60)
async def test_append_returns_with_the_record_in_the_journal_and_the_writer_commits_it(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    writer = ledger._writer
    assert writer is not None and ledger._journal is not None
    with writer.db_lock:  # the writer cannot commit: append still returns (it waits for nothing)
        for i in range(3):
            await ledger.append(rec(i))
        assert sum(p.stat().st_size for p in journals(path)) > 0  # durable before SQLite has it
        assert in_file(path) == []
    assert ledger.history is not None
    assert ledger.history.count() == 3  # a read in this process commits the journaled records first
    assert in_file(path) == ["req-0", "req-1", "req-2"] and writer.inline_commits == 0
    assert [p.stat().st_size for p in journals(path)] == [0, 0]  # committed: the journal is emptied
    ledger.close()
    assert journals(path) == []  # closed with everything committed: nothing left to replay


@pytest.mark.timeout(60)
async def test_the_journal_stays_small_under_steady_appends(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    sizes = []
    for i in range(600):
        await ledger.append(rec(i))
        if i % 100 == 99:
            ledger.flush()
            sizes.append(sum(p.stat().st_size for p in journals(path)))
    assert max(sizes) < 20_000, sizes  # each commit empties the file its records were in
    ledger.close()
    assert len(in_file(path)) == 600


@pytest.mark.timeout(60)
def test_the_next_open_replays_a_dead_processs_journal_without_doubling_what_was_committed(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        ledger.append_sync(rec(1))  # committed before the "crash"
    dead_journal(path, [rec(1), rec(2), rec(3)])  # req-1 committed, its journal not yet emptied
    with caplog.at_level(logging.WARNING, logger="llmkit"), Ledger(path) as reopened:
        own = journals(path)  # the dead one's files are gone; these are the reopened ledger's own
        assert len(own) == 2 and all(p.stat().st_size == 0 for p in own)
        assert sorted(reopened.request_ids()) == ["req-1", "req-2", "req-3"]
    assert in_file(path) == ["req-1", "req-2", "req-3"]
    assert "2 record(s) of a process that ended" in caplog.text
    assert journals(path) == []


@pytest.mark.timeout(60)
def test_a_living_ledgers_journal_is_never_replayed(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    live = Ledger(path)
    writer = live._writer
    assert writer is not None and live._journal is not None
    with writer.db_lock:
        live._journal.write(_to_row(rec(7)))  # journaled, not committed
        db = sqlite3.connect(path, isolation_level=None)
        try:
            assert journal.replay(path, db, _INSERT, len(FIELDS)) == 0  # its owner holds the lock
        finally:
            db.close()
    assert len(journals(path)) == 2
    live.close()


@pytest.mark.timeout(60)
def test_a_write_cut_short_and_a_row_sqlite_refuses_leave_the_other_records_replayed(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    refused = (*_to_row(rec(2))[:-1], ["no list binds"])  # SQLite refuses it even scrubbed
    dead_journal(path, [rec(1), refused, rec(3)])
    first = journals(path)[0]
    with open(first, "ab") as f:
        f.write(b"\x40\x00\x00\x00partial")  # the kill came in the middle of a write
    with Ledger(path):
        pass
    assert in_file(path) == ["req-1", "req-3"] and journals(path) == []


@pytest.mark.timeout(60)
def test_a_budget_commits_each_record_before_the_call_returns(tmp_path: Path) -> None:
    """Clients sharing a budget through the file read each other's spend there: no journal for them."""
    mock = [{"name": "m", "adapter": "mock", "models": ["*"]}]
    path = tmp_path / "l.sqlite3"
    with llmkit.Client(mock, ledger=str(path), budget_usd=10.0, health_interval=None) as budgeted:
        assert budgeted._service.ledger._journal is None
        budgeted.completion("m", [{"role": "user", "content": "hi"}])
        assert len(in_file(path)) == 1  # committed before completion() returned
    with llmkit.Client(mock, ledger=str(path), health_interval=None) as plain:
        assert plain._service.ledger._journal is not None


@pytest.mark.timeout(60)
def test_a_forked_child_writes_its_own_journal_and_leaves_the_parents_alone(tmp_path: Path) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork")
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    parents = journals(path)
    pid = os.fork()
    if pid == 0:  # the child: its first append opens a connection and a journal of its own
        code = 0
        try:
            asyncio.run(ledger.append(rec(2)))
            ledger.close()
        except BaseException:
            code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert all(p.exists() for p in parents)  # the child deleted nothing of the parent's
    asyncio.run(ledger.append(rec(1)))
    ledger.close()
    assert in_file(path) == ["req-1", "req-2"] and journals(path) == []
