"""Ledger: round trips, restart reload, migrations, memory-only mode, thread-safe reads, crash safety."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from llmkit.ledger.migrations import MIGRATIONS, applied, m001_requests, migrate
from llmkit.ledger.store import FIELDS, Ledger, LedgerRecord


def rec(i: int, **kw: Any) -> LedgerRecord:
    values: dict[str, Any] = dict(
        request_id=f"req-{i}", time=1_700_000_000.0 + i, started=1_700_000_000.0 + i - 0.5,
        provider="openai", model="gpt-4o-2024-08-06", requested_model="gpt-4o", status="ok",
        error_type=None, error_message=None, input_tokens=100 + i, output_tokens=50, cache_read_tokens=10,
        cache_write_tokens=0, reasoning_tokens=0, usage_estimated=False, cost_usd=0.001, latency_s=0.5,
        attempts=1, fallback=False, stream=False, priority=0, metadata=None,
    )
    values.update(kw)
    return LedgerRecord(**values)


def varied() -> list[LedgerRecord]:
    return [
        rec(1, metadata={"team": "search", "n": 3}),
        rec(2, status="error", provider=None, model=None, error_type="AllProvidersFailedError",
            error_message="all providers failed", cost_usd=None, input_tokens=0, output_tokens=0, attempts=3,
            fallback=True),
        rec(3, provider="local", model="llama3", requested_model="llama3", cost_usd=0.0, stream=True,
            priority=-2, usage_estimated=True, reasoning_tokens=7, prompt="hi there"),
        rec(4, provider="anthropic", model="claude-3-5-sonnet-20241022", cost_usd=None),  # unpriced
    ]


def test_memory_round_trip_and_columns() -> None:
    ledger = Ledger(None)
    records = varied()
    for r in records:
        ledger.append_sync(r)
    assert len(ledger) == 4
    assert [ledger[i] for i in range(4)] == records
    assert ledger[-1] == records[-1]
    cols = ledger.columns()
    assert list(cols) == list(FIELDS)
    assert cols["request_id"] == ["req-1", "req-2", "req-3", "req-4"]
    assert cols["provider"] == ["openai", None, "local", "anthropic"]
    assert cols["status"] == ["ok", "error", "ok", "ok"]
    assert cols["cost_usd"] == [0.001, None, 0.0, None]
    assert list(cols["fallback"]) == [0, 1, 0, 0]
    assert list(cols["priority"]) == [0, 0, -2, 0]
    assert cols["metadata"] == ['{"team":"search","n":3}', None, None, None]
    assert list(ledger.columns(2)["input_tokens"]) == [103, 104]
    assert ledger.request_ids() == ["req-1", "req-2", "req-3", "req-4"]
    # unpriced requests are not counted as 0; they are simply not in the total
    assert ledger.total_cost_usd() == pytest.approx(0.001)
    assert ledger.total_cost_usd(since=1_700_000_002.0) == 0.0
    assert ledger.total_cost_usd(since=1_700_000_000.0) == pytest.approx(0.001)


async def test_file_round_trip_and_restart_reload(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(path)
    records = varied()
    for r in records:
        await ledger.append(r)
    ledger.close()
    ledger.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        ledger.append_sync(rec(9))
    assert len(ledger) == 4  # still readable after close

    reopened = Ledger(path)
    assert len(reopened) == 0  # opening loads nothing: the file is the store of record
    assert reopened.history_records() == records
    assert reopened.total_cost_usd() == pytest.approx(0.001)  # costs survive a restart
    await reopened.append(rec(5, cost_usd=0.25))
    reopened.close()
    again = Ledger(path)
    assert again.request_ids() == ["req-1", "req-2", "req-3", "req-4", "req-5"]
    assert again.total_cost_usd() == pytest.approx(0.251)
    again.close()


def test_sqlite_file_is_wal_and_holds_plain_values(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        ledger.append_sync(rec(1, metadata={"a": 1}))
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    row = db.execute("SELECT request_id, cost_usd, metadata, fallback FROM requests").fetchone()
    assert row == ("req-1", 0.001, '{"a":1}', 0)
    db.close()


def test_migrations_are_numbered_append_only_and_idempotent(tmp_path: Path) -> None:
    names = [fn.__name__ for fn in MIGRATIONS]
    assert names == sorted(names) and names[0].startswith("m001_")
    path = tmp_path / "l.sqlite3"
    # a file created by an older llmkit that only knew the first migration
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("CREATE TABLE _llmkit_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    m001_requests(db)
    db.execute("INSERT INTO _llmkit_migrations VALUES ('m001_requests', 0)")
    db.close()

    with Ledger(path) as ledger:
        ledger.append_sync(rec(1))
    with Ledger(path) as ledger:  # a second open applies nothing and keeps the data
        assert ledger.request_ids() == ["req-1"]
    db = sqlite3.connect(path, isolation_level=None)
    assert applied(db) == names
    assert migrate(db) == []
    assert applied(db) == names
    indexes = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "requests_time" in indexes
    db.close()


def test_memory_only_modes_write_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLMKIT_DATA_DIR", str(tmp_path / "data"))
    for path in (None, ":memory:"):
        ledger = Ledger(path)
        assert ledger.path is None
        asyncio.run(ledger.append(rec(1)))
        assert len(ledger) == 1
        ledger.close()
    assert list(tmp_path.iterdir()) == []


def test_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMKIT_DATA_DIR", str(tmp_path / "explicit"))
    assert Ledger.default_path() == tmp_path / "explicit" / "ledger.sqlite3"
    with Ledger() as ledger:
        ledger.append_sync(rec(1))
    assert (tmp_path / "explicit" / "ledger.sqlite3").exists()
    monkeypatch.delenv("LLMKIT_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Ledger.default_path() == tmp_path / "xdg" / "llmkit" / "ledger.sqlite3"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Ledger.default_path() == tmp_path / "home" / ".local" / "share" / "llmkit" / "ledger.sqlite3"


def test_invalid_and_duplicate_records_are_rejected_whole() -> None:
    ledger = Ledger(None)
    ledger.append_sync(rec(1))
    with pytest.raises(ValueError, match="already in the ledger"):
        ledger.append_sync(rec(1))
    with pytest.raises(ValueError, match="status"):
        ledger.append_sync(rec(2, status="maybe"))
    with pytest.raises(TypeError):
        ledger.append_sync(rec(3, input_tokens=None))
    assert len(ledger) == 1
    assert {k: len(v) for k, v in ledger.columns().items()} == dict.fromkeys(FIELDS, 1)


def test_non_finite_cost_is_stored_as_unpriced() -> None:
    ledger = Ledger(None)
    ledger.append_sync(rec(1, cost_usd=math.nan))
    assert ledger[0].cost_usd is None
    assert ledger.total_cost_usd() == 0.0


def test_columns_are_consistent_while_another_thread_appends() -> None:
    ledger = Ledger(None)
    n = 20_000
    done = threading.Event()

    def writer() -> None:
        for i in range(n):
            ledger.append_sync(rec(i, provider=f"p{i % 7}"))
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    snapshots = 0
    while not done.is_set() or snapshots == 0:
        cols = ledger.columns()
        lengths = {len(v) for v in cols.values()}
        assert len(lengths) == 1, lengths  # every column cut at the same record
        k = lengths.pop()
        if k:
            last = k - 1
            assert cols["request_id"][last] == f"req-{last}"
            assert cols["input_tokens"][last] == 100 + last
            assert cols["provider"][last] == f"p{last % 7}"
        snapshots += 1
    thread.join()
    assert len(ledger) == n and snapshots > 1


async def test_idle_writer_means_inline_commits(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3", journal=False)  # (a budget's ledger: committed on the request path)
    writer = ledger._writer
    assert writer is not None
    for i in range(5):
        writer.last_inline = -1.0  # as if the last inline commit were long ago (calls spaced out)
        await ledger.append(rec(i))
    assert writer.inline_commits == 5 and writer.commits == 0
    await asyncio.gather(*(ledger.append(rec(i)) for i in range(5, 105)))  # a burst: group-committed
    assert writer.inline_commits <= 6 and writer.commits >= 1
    ledger.close()
    with Ledger(tmp_path / "l.sqlite3") as reopened:
        assert len(reopened.request_ids()) == 105


class _SlowCheckpoints:
    """The writer's checkpoint connection on a slow disk: the long part of each checkpoint (the one run while
    commits go on) starts, then waits for the test to let it finish."""

    def __init__(self, db: sqlite3.Connection, commits_held: threading.Lock) -> None:
        self.db = db
        self.commits_held = commits_held
        self.started, self.release = threading.Semaphore(0), threading.Semaphore(0)

    def execute(self, sql: str) -> sqlite3.Cursor:
        if not self.commits_held.locked():
            self.started.release()
            assert self.release.acquire(timeout=30)
        return self.db.execute(sql)


@pytest.mark.timeout(120)
async def test_steady_inline_commits_bring_checkpoints_that_never_stop_them_and_keep_the_wal_small(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmkit.ledger import store

    monkeypatch.setattr(store, "_CHECKPOINT_EVERY", 10)
    monkeypatch.setattr(store, "_CHECKPOINT_IDLE_S", 3600.0)  # the writer is never idle long enough
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path, journal=False)
    writer = ledger._writer
    assert writer is not None
    slow = _SlowCheckpoints(sqlite3.connect(path, check_same_thread=False), writer.db_lock)
    writer.checkpoint_db = slow  # type: ignore[assignment]
    done = threading.Semaphore(0)
    checkpoint = writer._checkpoint

    def checkpoint_and_say() -> None:
        checkpoint()
        done.release()

    monkeypatch.setattr(writer, "_checkpoint", checkpoint_and_say)
    sizes, n = [], 0
    for _ in range(4):
        for _ in range(10):  # calls spaced out: each commits inline; the tenth asks the writer to checkpoint
            writer.last_inline = -1.0
            await ledger.append(rec(n))
            n += 1
        assert slow.started.acquire(timeout=30)
        for _ in range(2):  # during the checkpoint's long part, calls still commit inline
            writer.last_inline = -1.0
            await ledger.append(rec(n))
            n += 1
        slow.release.release()
        assert done.acquire(timeout=30)
        sizes.append(os.path.getsize(f"{path}-wal"))
    assert writer.commits == 0 and writer.inline_commits == n == 48
    assert sizes[-1] < 2 * sizes[0]  # the WAL starts over after each checkpoint instead of growing
    writer.checkpoint_db = slow.db
    ledger.close()
    with Ledger(path) as reopened:
        assert len(reopened.request_ids()) == n


async def test_concurrent_appends_share_commits_when_the_writer_is_busy(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite3", journal=False)
    writer = ledger._writer
    assert writer is not None
    with writer.db_lock:  # the writer (or another user of the file) is busy: nothing commits inline
        tasks = [asyncio.ensure_future(ledger.append(rec(i))) for i in range(2000)]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)
    assert writer.inline_commits == 0 and 0 < writer.commits < 2000
    ledger.close()
    with Ledger(tmp_path / "l.sqlite3") as reopened:
        assert len(reopened.request_ids()) == 2000


async def test_cancelled_append_is_still_committed(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path, journal=False)
    writer = ledger._writer
    assert writer is not None
    with writer.db_lock:  # keep the record queued for the writer thread
        task = asyncio.create_task(ledger.append(rec(1)))
        await asyncio.sleep(0)  # let it reach its await (not a wait for time)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    ledger.close()  # flushes the queue
    with Ledger(path) as reopened:
        assert reopened.request_ids() == ["req-1"]


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from llmkit.ledger.store import Ledger, LedgerRecord

    async def one(ledger, i):
        rid = f"kill-{i}"
        await ledger.append(LedgerRecord(rid, 1.0 * i, 0.0, "mock", "m", "m", "ok", None, None, 1, 1, 0, 0, 0,
                                         False, 0.5, 0.1, 1, False, False, 0, {"i": i}))
        sys.stdout.write(rid + "\\n")   # only once append has returned
        sys.stdout.flush()

    async def main():
        ledger = Ledger(sys.argv[1])
        i = 0
        while True:
            await asyncio.gather(*(one(ledger, i + k) for k in range(16)))
            i += 16

    asyncio.run(main())
    """
)


def test_records_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite3"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    printed: list[str] = []
    try:
        while len(printed) < 300:
            line = proc.stdout.readline()
            if not line:
                pytest.fail(f"child exited early: {proc.stderr.read()}")
            printed.append(line.strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed mid-workload, not finished
    printed += [line for line in rest.split("\n")[:-1] if line]  # whole lines only

    with Ledger(path) as ledger:
        stored = set(ledger.request_ids())
        assert set(printed) <= stored
        assert len(stored) >= len(printed) >= 300
        assert ledger.total_cost_usd() == pytest.approx(0.5 * len(stored))


async def test_a_file_locked_by_another_process_never_blocks_the_caller(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path, journal=False)
    writer = ledger._writer
    assert writer is not None
    other = sqlite3.connect(path, isolation_level=None)  # another notebook's client, mid-write
    other.execute("BEGIN IMMEDIATE")
    task = asyncio.ensure_future(ledger.append(rec(7)))
    await asyncio.sleep(0)  # the inline attempt gave up at once; the writer thread waits for the lock
    assert not task.done() and writer.inline_commits == 0
    other.execute("COMMIT")
    other.close()
    await task
    ledger.close()  # a write that met the lock may still wait in the writer's backlog: close writes it
    assert writer.commits == 1
    with Ledger(path) as reopened:
        assert reopened.request_ids() == ["req-7"]


def test_second_version_columns_round_trip_and_migrate_a_first_version_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "v1.sqlite3"
    db = sqlite3.connect(path, isolation_level=None)
    with monkeypatch.context() as m:
        m.setattr("llmkit.ledger.migrations.MIGRATIONS", [fn for fn in MIGRATIONS if fn.__name__ < "m003"])
        migrate(db)
    db.execute("INSERT INTO requests (request_id, time, started, requested_model, status, provider, model, cost_usd)"
               " VALUES ('old-1', 1700000000, 1699999999, 'gpt-4o', 'ok', 'openai', 'gpt-4o', 0.5)")
    db.close()
    with Ledger(path) as ledger:
        old = ledger.history_records()[0]
        assert old.request_id == "old-1"
        assert (old.session_id, old.kind, old.cached) == (None, "completion", False)
        new = rec(9, session_id="s-1", kind="embedding", cached=True, cost_saved_usd=0.25, usage_suspect=True,
                  status="cancelled", cost_usd=0.0)
        ledger.append_sync(new)
    with Ledger(path) as again:
        assert again.history_records()[1] == new
        assert "m003_session_kind_cache_columns" in applied(sqlite3.connect(path))


@pytest.mark.timeout(60)
async def test_a_relative_ledger_path_keeps_checkpointing_after_the_process_changes_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checkpoint connection opens the file again later: it must be the same file, whatever the
    current directory is by then (it was resolved against the new one, failed and retried silently, and
    the WAL grew without bound)."""
    from llmkit.ledger import store

    monkeypatch.setattr(store, "_CHECKPOINT_EVERY", 10)
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    ledger = Ledger("l.sqlite3", journal=False)
    monkeypatch.chdir(tmp_path / "elsewhere")
    writer = ledger._writer
    assert writer is not None
    for n in range(10):  # spaced out: each commits inline; the tenth asks the writer for a checkpoint
        writer.last_inline = -1.0
        await ledger.append(rec(n))
    for _ in range(30_000):
        if writer._checkpointed:
            break
        await asyncio.sleep(0.001)
    assert writer._checkpointed == 10
    assert not (tmp_path / "elsewhere" / "l.sqlite3").exists()
    ledger.close()
    with Ledger(tmp_path / "here" / "l.sqlite3") as reopened:
        assert len(reopened.request_ids()) == 10
