"""A client used before ``os.fork()`` keeps working in the child (issue 11, item 4).

A forked child has only the thread that forked: the client's event loop thread and its ledger writer are
gone, and the SQLite connection it inherits belongs to the parent. The child must not hang (before the
fix a burst of calls waited forever on the dead writer thread) and must not write through the parent's
connection. Children are started with multiprocessing's ``fork`` method and joined with a bound, so a
hang fails the test instead of stalling the run.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

import llmkit

pytestmark = pytest.mark.skipif(sys.platform == "win32" or "fork" not in multiprocessing.get_all_start_methods(),
                                reason="needs os.fork")

MSG = [{"role": "user", "content": "hello"}]
_CLIENT: llmkit.Client | None = None  # set before forking: the children use the parent's client


def _child(tag: str, out: Any) -> None:
    """In a forked child: sync, streamed and a burst of async calls on the inherited client."""
    try:
        client = _CLIENT
        assert client is not None
        ids = [client.completion("gpt-4o", MSG, metadata={"who": tag}).id]
        stream = client.stream("gpt-4o", MSG, metadata={"who": tag})
        text = "".join(chunk.text for chunk in stream)
        assert stream.response is not None
        ids.append(stream.response.id)

        async def burst() -> list[str]:
            got = await asyncio.gather(*(client.acompletion("gpt-4o", MSG, metadata={"who": tag})
                                         for _ in range(30)))
            return [r.id for r in got]

        ids += asyncio.run(burst())
        rid = client.completion_async("gpt-4o", MSG, metadata={"who": tag})
        ids.append(client.get_result(rid, timeout=20).id)
        usage = client.usage()
        client.close()
        out.put(("ok", os.getpid(), ids, text, len(usage)))
    except BaseException as exc:  # report it: a child's traceback is not the test's
        out.put(("error", os.getpid(), f"{type(exc).__name__}: {exc}", "", 0))


def _run_children(n: int) -> list[tuple[Any, ...]]:
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    children = [ctx.Process(target=_child, args=(f"child-{i}", out)) for i in range(n)]
    for child in children:
        child.start()
    results = []
    try:
        for _ in children:
            results.append(out.get(timeout=60))  # a hung child fails here instead of stalling
    finally:
        for child in children:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
    return results


@pytest.mark.timeout(120)
@pytest.mark.parametrize("loop", ["shared", "private"])
def test_a_client_used_before_fork_works_in_forked_children(tmp_path: Path, loop: str) -> None:
    global _CLIENT
    path = tmp_path / "ledger.sqlite3"
    options: dict[str, Any] = {} if loop == "shared" else {"loop_factory": asyncio.new_event_loop}
    client = llmkit.Client([{"name": "m", "adapter": "mock", "max_concurrency": 4}], ledger=str(path),
                           health_interval=30.0, **options)
    parent_ids = [client.completion("gpt-4o", MSG, metadata={"who": "parent"}).id]
    pending = client.completion_async("gpt-4o", MSG)  # the parent's own queued request stays the parent's
    _CLIENT = client
    try:
        results = _run_children(2)
    finally:
        _CLIENT = None
    assert [r[0] for r in results] == ["ok", "ok"], results
    assert all(r[3].startswith("Mock reply") for r in results)
    assert all(r[4] >= 33 for r in results)  # each child saw the parent's record(s) and its own
    parent_ids.append(client.get_result(pending, timeout=20).id)
    parent_ids.append(client.completion("gpt-4o", MSG, metadata={"who": "parent"}).id)  # the parent goes on
    client.close()
    db = sqlite3.connect(path)
    try:
        stored = [row[0] for row in db.execute("SELECT request_id FROM requests")]
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        db.close()
    assert len(stored) == len(set(stored))  # exactly once each
    wanted = set(parent_ids) | {rid for r in results for rid in r[2]}
    assert wanted <= set(stored)
    assert len(wanted) == 3 + 2 * 33


@pytest.mark.timeout(60)
def test_a_memory_only_client_works_in_a_forked_child() -> None:
    global _CLIENT
    client = llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=None)
    client.completion("gpt-4o", MSG)
    _CLIENT = client
    try:
        (result,) = _run_children(1)
    finally:
        _CLIENT = None
    assert result[0] == "ok", result
    assert result[4] == 33  # a memory-only ledger starts empty in the child
    assert len(client.usage()) == 1 and client.completion("gpt-4o", MSG).content
    client.close()


_LEDGER: Any = None


def _record(rid: str) -> Any:
    from llmkit.ledger.store import LedgerRecord

    return LedgerRecord(rid, 1.0, 0.0, "m", "m", "m", "ok", None, None, 1, 1, 0, 0, 0, False, 0.0, 0.1, 1, False,
                        False, 0, None)


def _ledger_child(out: Any) -> None:
    """In a forked child: a burst of appends on the parent's Ledger object (its writer thread is gone)."""
    async def burst() -> None:
        await asyncio.gather(*(_LEDGER.append(_record(f"child-{os.getpid()}-{i}")) for i in range(50)))

    try:
        asyncio.run(burst())
        _LEDGER.close()
        out.put(("ok", os.getpid()))
    except BaseException as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.timeout(60)
def test_a_ledger_opened_before_fork_reconnects_in_the_child(tmp_path: Path) -> None:
    global _LEDGER
    from llmkit.ledger.store import Ledger

    path = tmp_path / "l.sqlite3"
    _LEDGER = Ledger(path)
    try:
        ctx = multiprocessing.get_context("fork")
        out = ctx.Queue()
        child = ctx.Process(target=_ledger_child, args=(out,))
        child.start()
        try:
            result = out.get(timeout=30)  # before the fix: the burst waited forever on the dead writer
        finally:
            child.join(timeout=10)
            if child.is_alive():
                child.kill()
                child.join()
        assert result[0] == "ok", result
        assert len(_LEDGER) == 0  # the parent's ledger is untouched and still works
        _LEDGER.append_sync(_record("parent-1"))
    finally:
        _LEDGER.close()
        _LEDGER = None
    with Ledger(path) as reopened:
        ids = reopened.request_ids()
    assert len(ids) == len(set(ids)) == 51 and "parent-1" in ids
