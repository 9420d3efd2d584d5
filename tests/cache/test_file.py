"""The cache file: shared across clients and processes, safe with concurrent writers, bounded, and never fatal."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import llmkit
from llmkit.cache import Entry, MemoryCache, SQLiteCache, open_backend

from ..conftest import FakeTime
from .conftest import MODEL, MSG, PRICED, mock_client

ROOT = Path(__file__).resolve().parents[2]

# A process of its own: one question per argument, each asked with the cache on; prints "hit"/"miss" per call.
CHILD = """
import sys, llmkit
path, *prompts = sys.argv[1:]
client = llmkit.Client([{"name": "m", "adapter": "mock", "pricing": %r}], ledger=None, cache=path,
                       health_interval=None)
out = []
for prompt in prompts:
    mode = "refresh" if prompt.startswith("!") else True
    resp = client.completion(%r, [{"role": "user", "content": prompt.lstrip("!")}], cache=mode)
    out.append("hit" if resp.cached else "miss")
print(" ".join(out))
""" % (PRICED, MODEL)  # noqa: UP031 - the child's source, with the test's constants in it


def child(path: Path, *prompts: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), *prompts], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen[str]) -> list[str]:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out.split()


def check_file(path: Path) -> tuple[int, int]:
    """The file is intact and its totals row matches its entries; returns (entries, bytes)."""
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM entries").fetchone()
        assert db.execute("SELECT entries, bytes FROM totals").fetchone() == (count, size)
    return count, size


def test_answers_persist_across_clients(cache_path: Path) -> None:
    with mock_client(cache_path) as first:
        original = first.completion(MODEL, MSG)
    with mock_client(cache_path) as second:
        again = second.completion(MODEL, MSG)
        assert second.provider("m").calls == 0  # type: ignore[attr-defined]
    assert again.cached and again.content == original.content


def test_two_open_clients_see_each_others_answers_at_once(cache_path: Path) -> None:
    with mock_client(cache_path) as a, mock_client(cache_path) as b:
        a.completion(MODEL, MSG)
        assert b.completion(MODEL, MSG).cached  # same process: visible before it is committed
        a.close()
        assert b.completion(MODEL, MSG).cached  # one client closing leaves the file open for the other


@pytest.mark.timeout(180)
def test_answers_persist_across_processes(cache_path: Path) -> None:
    assert finish(child(cache_path, "one", "two", "one")) == ["miss", "miss", "hit"]  # exits without close()
    with mock_client(cache_path) as client:
        assert client.completion(MODEL, [{"role": "user", "content": "two"}]).cached
        client.completion(MODEL, [{"role": "user", "content": "three"}])
    assert finish(child(cache_path, "three", "one")) == ["hit", "hit"]


@pytest.mark.timeout(300)
def test_concurrent_writers_never_corrupt_the_file(cache_path: Path) -> None:
    """Four processes and four threads write the same keys (refresh: every call writes) and keys of their own."""
    shared = ["!same"] * 30 + ["!also the same"] * 30
    procs = [child(cache_path, *[p for pair in zip(shared, [f"p{n}-{i}" for i in range(60)], strict=True)
                                 for p in pair]) for n in range(4)]

    def writer(n: int) -> None:
        with mock_client(cache_path) as client:
            for i in range(60):
                client.completion(MODEL, [{"role": "user", "content": "same"}], cache="refresh")
                client.completion(MODEL, [{"role": "user", "content": f"t{n}-{i}"}])

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for proc in procs:
        assert finish(proc) == ["miss"] * 120
    count, _ = check_file(cache_path)
    assert count == 2 + 4 * 60 + 4 * 60
    assert finish(child(cache_path, "same", "also the same", "p3-59")) == ["hit", "hit", "hit"]


def test_a_corrupt_file_is_a_miss_and_a_warning(cache_path: Path) -> None:
    cache_path.write_bytes(b"this is not a database" * 500)
    with mock_client(cache_path) as client:
        first = client.completion(MODEL, MSG)
        second = client.completion(MODEL, MSG)
        warnings = client.event_list("cache_warning")
        assert first.cached is False and second.cached is False
        assert len(warnings) == 1 and "cannot be used" in warnings[0].detail["message"]
        assert client.events("cache_warning").shape[0] == 1
        info = client.cache_info()
        assert info["misses"] == 2 and info["entries"] == 0
        client.clear_cache()  # starts a fresh file
        client.completion(MODEL, MSG)
        assert client.completion(MODEL, MSG).cached
    check_file(cache_path)


def test_an_entry_that_no_longer_parses_is_a_miss_and_a_warning(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        client.completion(MODEL, MSG)
    with sqlite3.connect(cache_path) as db:
        db.execute("UPDATE entries SET payload = ?", (b"\xff{not json",))
    with mock_client(cache_path) as client:
        damaged = client.completion(MODEL, MSG)
        warnings = client.event_list("cache_warning")
        healed = client.completion(MODEL, MSG)
    assert damaged.cached is False and healed.cached is True
    assert len(warnings) == 1 and "no longer parses" in warnings[0].detail["message"]
    assert warnings[0].request_id == damaged.id


def test_a_file_from_a_newer_version_is_left_alone(cache_path: Path) -> None:
    with sqlite3.connect(cache_path) as db:
        db.execute("PRAGMA user_version = 99")
    with mock_client(cache_path) as client:
        assert client.completion(MODEL, MSG).cached is False
        assert client.completion(MODEL, MSG).cached is False
        assert "newer llmkit" in client.event_list("cache_warning")[0].detail["message"]
    with sqlite3.connect(cache_path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 99


def test_an_unwritable_file_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with mock_client(blocker / "cache.sqlite3") as client:  # its folder cannot be created
        assert client.completion(MODEL, MSG).content
        assert client.event_list("cache_warning")


def test_eviction_removes_the_least_recently_hit(cache_path: Path, fake_time: FakeTime) -> None:
    def ask(client: llmkit.Client, n: int) -> bool:
        fake_time.advance(1)
        return client.completion(MODEL, [{"role": "user", "content": f"question {n}"}]).cached

    with mock_client(cache_path, clock=fake_time.clock, sleep=fake_time.sleep, cache_max_bytes=10**6) as client:
        for n in range(4):
            ask(client, n)
        size = client.cache_info()["size_bytes"]
    bound = int(size * 1.2)  # room for 4 answers, not 5
    with mock_client(cache_path, clock=fake_time.clock, sleep=fake_time.sleep, cache_max_bytes=bound) as client:
        assert ask(client, 0)  # question 0 is now the most recently hit; 1 is the least
        assert not ask(client, 4)  # over the bound: evicts down to 90% of it
        info = client.cache_info()
        assert info["size_bytes"] <= bound * 0.9
        assert ask(client, 0) and ask(client, 4)
        assert not ask(client, 1)
    check_file(cache_path)


def test_the_backend_interface(tmp_path: Path) -> None:
    for location in (tmp_path / "b.sqlite3", ":memory:"):
        backend = open_backend(location)
        try:
            key = "ab" * 32
            assert backend.lookup(key, 1.0) is None
            backend.store(key, Entry(b"payload", 1.0, 0.5))
            assert backend.lookup(key, 2.0) == Entry(b"payload", 1.0, 0.5)
            backend.store(key, Entry(b"longer payload", 3.0, None))
            assert backend.info() == {"entries": 1, "size_bytes": len(b"longer payload") + 32}
            backend.discard(key)
            assert backend.lookup(key, 4.0) is None and backend.info()["entries"] == 0
            backend.store(key, Entry(b"x", 5.0))
            backend.clear()
            assert backend.info() == {"entries": 0, "size_bytes": 0}
        finally:
            backend.close()


def test_one_file_is_opened_once_per_process(tmp_path: Path) -> None:
    a, b = open_backend(tmp_path / "c.sqlite3"), open_backend(tmp_path / "c.sqlite3")
    shared = a.backend  # type: ignore[attr-defined]
    assert isinstance(shared, SQLiteCache) and b.backend is shared  # type: ignore[attr-defined]
    a.close()
    assert not shared.closed
    b.close()
    assert shared.closed
    c = open_backend(tmp_path / "c.sqlite3")
    assert c.backend is not shared  # type: ignore[attr-defined]
    c.close()


class CountingBackend(MemoryCache):
    """A backend of the user's own: any object with the six methods (a shared store, say) plugs in."""

    location = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.stores = 0
        self.closed = False

    def store(self, key: str, entry: Entry, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        self.stores += 1
        super().store(key, entry, ttl=ttl, max_bytes=max_bytes)

    def close(self) -> None:
        self.closed = True


def test_a_backend_object_of_ones_own() -> None:
    backend = CountingBackend()
    with mock_client(backend) as a:  # type: ignore[arg-type]
        a.completion(MODEL, MSG)
    with mock_client(backend) as b:  # type: ignore[arg-type]
        assert b.completion(MODEL, MSG).cached
        assert b.cache_info()["path"] == "counting" and b.cache_info()["entries"] == 1
    assert backend.stores == 1 and backend.closed is False  # the user's object: llmkit never closes it
    with pytest.raises(llmkit.ConfigError, match="cache backend"):
        mock_client(object())  # type: ignore[arg-type]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(60)
def test_a_forked_child_opens_the_file_afresh(cache_path: Path) -> None:
    from llmkit._config import parse_client_config
    from llmkit._events import EventLog
    from llmkit._types import Response
    from llmkit._validate import build_request
    from llmkit.cache import ResponseCache

    config = parse_client_config({"providers": [], "cache": str(cache_path), "ledger": None})
    cache = ResponseCache(config, EventLog(), lambda: 1.0)
    request = build_request(MODEL, MSG)
    cache.store(request, Response(id=request.id, content="from the parent", provider="m", model=MODEL))
    assert cache.info()["entries"] == 1  # opened and committed in the parent
    pid = os.fork()
    if pid == 0:  # the child: must not use the parent's connections or its (absent) writer thread
        code = 1
        try:
            hit = cache.lookup(build_request(MODEL, MSG))
            other = build_request(MODEL, [{"role": "user", "content": "asked in the child"}])
            cache.store(other, Response(id=other.id, content="from the child", provider="m", model=MODEL))
            cache.close()
            code = 0 if hit is not None and hit[0].content == "from the parent" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    found = cache.lookup(build_request(MODEL, [{"role": "user", "content": "asked in the child"}]))
    cache.close()
    assert found is not None and found[0].content == "from the child"
