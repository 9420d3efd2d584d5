"""The ledger file under faults (issue 11, items 6, 7b, 22): a file locked by another process never holds
up a call nor loses its record, one bad row never rolls back the others, a corrupt file is a clear
``ConfigError``.

The lock is held by another SQLite connection for exactly as long as each test wants; records are
waited for by polling the file (with a bound), never by sleeping for a fixed time.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

import llmkit
from llmkit.ledger.store import Ledger, LedgerRecord

MSG = [{"role": "user", "content": "hello"}]


def rec(i: int, **kw: Any) -> LedgerRecord:
    values: dict[str, Any] = dict(
        request_id=f"req-{i}", time=1_700_000_000.0 + i, started=1_700_000_000.0 + i - 0.5, provider="mock",
        model="m", requested_model="m", status="ok", error_type=None, error_message=None, input_tokens=10,
        output_tokens=5, cache_read_tokens=0, cache_write_tokens=0, reasoning_tokens=0, usage_estimated=False,
        cost_usd=0.001, latency_s=0.5, attempts=1, fallback=False, stream=False, priority=0, metadata=None,
    )
    values.update(kw)
    return LedgerRecord(**values)


def ids_in_file(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return [row[0] for row in db.execute("SELECT request_id FROM requests ORDER BY id")]
    finally:
        db.close()


def wait_for_ids(path: Path, wanted: set[str], within: float = 10.0) -> set[str]:
    """Poll the file until every id in ``wanted`` is there (or ``within`` seconds pass); returns what is."""
    end = time.monotonic() + within
    while True:
        found = set(ids_in_file(path)) & wanted
        if found == wanted or time.monotonic() > end:
            return found
        time.sleep(0.02)


class Locker:
    """Another process's connection holding the ledger file's write lock until ``release()``."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.close()


# -- item 6: a locked ledger file -------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_calls_return_within_their_deadline_while_the_file_is_locked_and_records_land_later(
        tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    client = llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=str(path), health_interval=None)
    client.completion("gpt-4o", MSG)  # the file exists and is idle
    locker = Locker(path)
    try:
        deadline = 3.0
        start = time.monotonic()
        responses = [client.completion("gpt-4o", MSG, timeout=deadline) for _ in range(5)]
        async_ids = [client.completion_async("gpt-4o", MSG, timeout=deadline) for _ in range(5)]
        for rid in async_ids:
            client.get_result(rid, timeout=deadline)
        took = time.monotonic() - start
        # ten calls, each far inside its own deadline although the lock is never released meanwhile
        assert took < deadline, f"calls waited for the locked ledger file ({took:.1f}s)"
        wanted = {r.id for r in responses} | set(async_ids)
        assert len(client.usage()) == 11  # in memory at once
        assert not set(ids_in_file(path)) & wanted  # nothing could reach the file yet
    finally:
        locker.release()
    assert wait_for_ids(path, wanted) == wanted  # retried in the background until they land
    client.close()
    ids = ids_in_file(path)
    assert len(ids) == len(set(ids)) == 11


@pytest.mark.timeout(60)
async def test_appends_under_a_lock_return_and_close_writes_the_backlog(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    locker = Locker(path)
    try:
        for i in range(20):
            await asyncio.wait_for(ledger.append(rec(i)), 3.0)  # each returns, lock or not
        assert ids_in_file(path) == []
    finally:
        locker.release()
    ledger.close()  # writes what still waits
    assert ids_in_file(path) == [f"req-{i}" for i in range(20)]


@pytest.mark.timeout(60)
async def test_close_gives_up_on_a_file_locked_for_good_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import llmkit.ledger.store as store

    monkeypatch.setattr(store, "_CLOSE_PATIENCE_S", 0.3)
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    locker = Locker(path)
    try:
        await ledger.append(rec(1))
        ledger.close()  # returns (after its patience) although the lock is never released
        assert list(ledger.columns()["request_id"]) == ["req-1"]  # still readable in memory
    finally:
        locker.release()
    assert any(r.levelno == logging.ERROR and "1 record(s) were not written" in r.getMessage()
               for r in caplog.records)


# -- item 7b: one bad row never rolls back the others ------------------------------------------------


async def test_one_bad_row_in_a_group_commit_does_not_roll_back_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path)
    writer = ledger._writer
    assert writer is not None
    bad = rec(2, status="error", error_message="server said \ud800 (a lone surrogate from its JSON)")
    with writer.db_lock:  # nothing commits inline: the three rows go to the writer as one group commit
        tasks = [asyncio.ensure_future(ledger.append(r)) for r in (rec(1), bad, rec(3))]
        await asyncio.sleep(0)
    await asyncio.gather(*tasks)  # no error reaches the callers
    ledger.close()
    assert ids_in_file(path) == ["req-1", "req-2", "req-3"]
    db = sqlite3.connect(path)
    try:
        (message,) = db.execute("SELECT error_message FROM requests WHERE request_id = 'req-2'").fetchone()
    finally:
        db.close()
    assert message.startswith("server said ") and "(a lone surrogate from its JSON)" in message
    assert "req-2" in caplog.text and "scrubbed" in caplog.text


async def test_a_row_that_cannot_be_stored_at_all_is_logged_and_the_others_land(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    import llmkit.ledger.store as store

    monkeypatch.setattr(store, "_scrub", lambda row: row)  # as if scrubbing could not help
    path = tmp_path / "l.sqlite3"
    ledger = Ledger(path, journal=False)  # (journaled, the caller has returned already: only the log says it)
    writer = ledger._writer
    assert writer is not None
    with writer.db_lock:
        tasks = [asyncio.ensure_future(ledger.append(r))
                 for r in (rec(1), rec(2, error_message="\udfff"), rec(3), rec(4))]
        await asyncio.sleep(0)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "UnicodeEncodeError", "NoneType", "NoneType"]
    ledger.close()
    assert ids_in_file(path) == ["req-1", "req-3", "req-4"]
    assert writer.refused == 1
    assert any(r.levelno == logging.ERROR and "req-2" in r.getMessage() for r in caplog.records)


def test_a_server_error_text_with_a_lone_surrogate_is_recorded(tmp_path: Path) -> None:
    """End to end: a provider's error message carrying a lone surrogate still lands in the file."""
    path = tmp_path / "ledger.sqlite3"
    client = llmkit.Client([{"name": "m", "adapter": "mock", "max_retries": 0}], ledger=str(path),
                           health_interval=None)
    provider = client.provider("m")

    async def complete(request: Any) -> Any:
        raise llmkit.ServerError("upstream: \ud83d broken", provider="m", status=500)

    provider.complete = complete  # type: ignore[method-assign]
    for _ in range(3):
        with pytest.raises(llmkit.LLMError):
            client.completion("gpt-4o", MSG)
    client.close()
    assert len(ids_in_file(path)) == 3


# -- item 22: a corrupt or foreign ledger file ------------------------------------------------------


@pytest.mark.parametrize("content", [b"this is not a database at all\n" * 200,
                                     b"SQLite format 3\x00" + b"\xff" * 4096])
def test_a_corrupt_ledger_file_is_a_config_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "ledger.sqlite3"
    path.write_bytes(content)
    for make in (lambda: Ledger(path),
                 lambda: llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=str(path), health_interval=None)):
        with pytest.raises(llmkit.ConfigError) as info:
            make()
        message = str(info.value)
        assert str(path) in message and "move it aside" in message.lower()
        assert not isinstance(info.value, sqlite3.Error)
    assert path.read_bytes() == content  # left as it was, for the user to look at


def test_another_programs_sqlite_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE requests (url TEXT, body BLOB)")
    db.commit()
    db.close()
    with pytest.raises(llmkit.ConfigError, match=r"(?i)move it aside"):
        Ledger(path)


def test_a_folder_as_ledger_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(llmkit.ConfigError, match=str(tmp_path)):
        Ledger(tmp_path)
