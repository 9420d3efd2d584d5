"""Embedding defects fixed in round 2: budget order, cancelled records, vector sizes and the cache, the
client's cache setting, base64 vectors, batched cache I/O off the loop, and the progress bar."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llmkit
from llmkit.cache import Entry, MemoryCache, SQLiteCache
from llmkit.embeddings import MemoryEmbeddingCache
from llmkit.testing import FakeOpenAIServer

KEY = "sk-embed-fix-0123456789"
PRICED: dict[str, Any] = {"pricing": {"*": {"input": 0.02, "output": 0.6}}}


def mock(name: str, models: list[str], dims: int, priority: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "adapter": "mock", "models": models, "priority": priority, "max_retries": 0,
            "options": {"embedding_dimensions": dims}, **extra}


# -- 4: record first, release after: the budget counts the reservation until the record is written


@pytest.mark.parametrize("call", ["stream", "embedding"])
def test_the_reservation_is_held_until_the_record_is_written(call: str) -> None:
    with llmkit.Client([mock("m", ["*"], 8, **PRICED)], ledger=None, health_interval=None,
                       budget_usd=10.0) as client:
        ledger = client._service.ledger
        seen: list[dict[str, Any]] = []
        append = ledger.append

        async def watched(record: Any) -> None:
            status = client._service.budget.status()  # type: ignore[union-attr]
            seen.append(status)
            await append(record)

        ledger.append = watched  # type: ignore[method-assign]
        if call == "stream":
            assert "".join(c.text for c in client.stream(model="gpt-4o", messages=[{"role": "user", "content": "hi"}]))
        else:
            client.embedding(model="emb", input=["hello there"])
        after = client.budget_status()
    assert len(seen) == 1 and seen[0]["reserved_usd"] > 0  # still held while the record is written
    assert after is not None and after["reserved_usd"] == 0 and after["spent_usd"] > 0


# -- 7: a cancelled embedding is recorded as cancelled


@pytest.mark.timeout(30)
async def test_a_cancelled_embedding_is_recorded_as_cancelled() -> None:
    client = llmkit.Client([{"name": "m", "adapter": "mock", "models": ["*"], "options": {"latency": 30.0}}],
                           ledger=None, health_interval=None)
    try:
        task = asyncio.ensure_future(client.aembedding(model="emb", input=["slow"]))
        while client.in_flight() == 0:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while client.in_flight():  # the request ends on the client's loop, just after its caller
            await asyncio.sleep(0.005)
        usage = client.usage()
    finally:
        await client.aclose()
    assert list(usage["status"]) == ["cancelled"] and list(usage["kind"]) == ["embedding"]
    assert list(usage["error_type"]) == ["CancelledError"]


# -- 8: fallback never mixes vector sizes; vectors are cached under the model that produced them


def test_same_model_fallback_to_another_size_is_refused_and_never_poisons_the_cache() -> None:
    providers = [mock("a", ["emb"], 8, priority=1), mock("b", ["emb"], 16, priority=2)]
    with llmkit.Client(providers, ledger=None, health_interval=None, cache=":memory:") as client:
        client.provider("a").set_down(True)  # type: ignore[attr-defined]
        with pytest.raises(llmkit.LLMError):
            client.embed(["old"], model="emb", progress=False)
        assert client.provider("b").calls == 0  # type: ignore[attr-defined]  # b (16 wide) is no candidate
        client.provider("a").set_down(False)  # type: ignore[attr-defined]
        out = client.embed(["old", "new"], model="emb", as_array=True, progress=False)
    assert out.shape == (2, 8)


def test_a_fallback_models_vectors_are_cached_under_its_own_name() -> None:
    providers = [mock("a", ["emb"], 8, priority=1), mock("b", ["other"], 8, priority=2)]
    with llmkit.Client(providers, fallbacks={"emb": ["other"]}, ledger=None, health_interval=None,
                       cache=":memory:") as client:
        a, b = client.provider("a"), client.provider("b")
        a.set_down(True)  # type: ignore[attr-defined]
        client.embed(["text"], model="emb", progress=False)  # served by "other"
        assert b.calls == 1  # type: ignore[attr-defined]
        a.set_down(False)  # type: ignore[attr-defined]
        again = client.embed(["text"], model="emb", progress=False)  # not a hit: "emb" never gave it
        mine = client.embed(["text"], model="other", progress=False)  # a hit under "other"
    assert a.calls == 2 and again.attrs["embed"]["cached"] == 0  # type: ignore[attr-defined]
    assert mine.attrs["embed"]["cached"] == 1 and b.calls == 1  # type: ignore[attr-defined]


class FixedCache:
    """A user's cache holding a 3-wide vector for "old" (e.g. written by another model before)."""

    def get_many(self, model: str, key: str, texts: Sequence[str]) -> list[Any]:
        return [np.ones(3, dtype=np.float32) if t == "old" else None for t in texts]

    def put_many(self, model: str, key: str, texts: Sequence[str], vectors: Any) -> None:
        pass


def test_vectors_of_different_sizes_are_a_provider_error_not_a_numpy_error() -> None:
    from llmkit.embeddings import as_matrix

    with llmkit.Client([mock("a", ["emb"], 8)], ledger=None, health_interval=None) as client:
        with pytest.raises(llmkit.ProviderError, match="differ in size"):
            client.embed(["old", "new"], model="emb", progress=False, cache=FixedCache())
    with pytest.raises(llmkit.ProviderError, match="malformed embeddings"):
        as_matrix([[1.0, 2.0], [1.0]], 2, "p")
    assert as_matrix([[1.0, 2.0], [3.0, 4.0]], 2, "p").shape == (2, 2)


# -- 9: the client's cache setting decides embed's per-text cache


def test_client_cache_false_keeps_nothing_and_memory_clients_write_no_file(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMKIT_DATA_DIR", str(tmp_path))
    with llmkit.Client([mock("a", ["emb"], 8)], ledger=None, health_interval=None, cache=False) as client:
        client.embed(["hello"], model="emb", progress=False)
        client.embed(["hello"], model="emb", progress=False)
        assert client.provider("a").calls == 2  # type: ignore[attr-defined]  # nothing kept
    with llmkit.Client([mock("a", ["emb"], 8)], ledger=None, health_interval=None) as client:
        client.embed(["hello"], model="emb", progress=False)
        again = client.embed(["hello"], model="emb", progress=False)
        assert client.provider("a").calls == 1 and again.attrs["embed"]["cached"] == 1  # type: ignore[attr-defined]
    assert list(tmp_path.iterdir()) == []  # no cache file in the user's data folder


# -- 10: base64 vectors


def test_base64_vectors_are_decoded_and_other_formats_refused_before_sending() -> None:
    with FakeOpenAIServer(api_key=KEY, embedding_dimensions=8) as server, llmkit.Client(
            [{"name": "o", "adapter": "openai", "api_key": KEY, "base_url": server.url, "models": ["*"],
              "breaker": {"fail_max": 1, "reset_timeout": 600}}], ledger=None, health_interval=None) as client:
        plain = client.embedding(model="text-embedding-3-small", input=["a b", "c"])
        packed = client.embedding(model="text-embedding-3-small", input=["a b", "c"], encoding_format="base64")
        with pytest.raises(llmkit.InvalidRequestError, match="encoding_format"):
            client.embedding(model="text-embedding-3-small", input=["a"], encoding_format="int8")
        sent = [r.json.get("encoding_format") for r in server.requests if r.path.endswith("/embeddings")]
        health = client.health()
    assert sent == ["float", "base64"]
    assert packed.vectors.dtype == np.float32 and np.allclose(packed.vectors, plain.vectors)
    assert list(health["breaker_state"]) == ["closed"]


# -- 11: batched cache lookups, run off the loop thread


def test_sqlite_and_memory_backends_look_up_and_store_many(tmp_path: Path) -> None:
    keys = [f"{i:064x}" for i in range(1200)]  # more than one SELECT ... IN chunk
    for backend in (SQLiteCache(tmp_path / "c.sqlite3"), MemoryCache()):
        backend.store_many([(k, Entry(k.encode()[:8], 1.0)) for k in keys[::2]], max_bytes=None)
        found = backend.lookup_many(keys, 2.0)
        assert [e.payload if e else None for e in found] == [k.encode()[:8] if i % 2 == 0 else None
                                                             for i, k in enumerate(keys)]
        if isinstance(backend, SQLiteCache):
            backend.flush()
            backend._pending.clear()  # read back from the file, not the pending writes
            assert sum(e is not None for e in backend.lookup_many(keys, 3.0)) == 600
        backend.close()


class PerKeyBackend:
    """A user's backend with only the six required methods (no ``lookup_many``/``store_many``)."""

    location = "per-key"

    def __init__(self) -> None:
        self.inner = MemoryCache()
        self.lookups = 0

    def lookup(self, key: str, now: float) -> Entry | None:
        self.lookups += 1
        return self.inner.lookup(key, now)

    def store(self, key: str, entry: Entry, *, ttl: float | None = None, max_bytes: int | None = None) -> None:
        self.inner.store(key, entry)

    def discard(self, key: str) -> None:
        self.inner.discard(key)

    def clear(self) -> None:
        self.inner.clear()

    def info(self) -> dict[str, Any]:
        return self.inner.info()

    def close(self) -> None:
        pass


def test_a_backend_without_many_methods_is_called_per_key() -> None:
    backend = PerKeyBackend()
    with llmkit.Client([mock("a", ["emb"], 8)], ledger=None, health_interval=None, cache=backend) as client:
        first = client.embed(["x", "y", "z"], model="emb", as_array=True, progress=False)
        again = client.embed(["z", "y", "x"], model="emb", as_array=True, progress=False)
    assert backend.lookups == 6 and np.allclose(again, first[::-1])


class ThreadCache(MemoryEmbeddingCache):
    """Notes the thread each call runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[threading.Thread] = []

    def get_many(self, model: str, key: str, texts: Sequence[str]) -> list[Any]:
        self.threads.append(threading.current_thread())
        return super().get_many(model, key, texts)

    def put_many(self, model: str, key: str, texts: Sequence[str], vectors: Any) -> None:
        self.threads.append(threading.current_thread())
        super().put_many(model, key, texts, vectors)


def test_embed_cache_io_runs_off_the_loop_thread() -> None:
    cache = ThreadCache()
    with llmkit.Client([mock("a", ["emb"], 8)], ledger=None, health_interval=None) as client:
        client.embed([f"t{i}" for i in range(10)], model="emb", batch_size=4, progress=False, cache=cache)
        loop_thread = client._loop.thread._thread
    assert len(cache.threads) == 4 and loop_thread is not None  # one lookup, three stores
    assert all(t is not loop_thread for t in cache.threads)


# -- the progress bar counts every text, duplicates included


def test_progress_bar_reaches_the_total_with_duplicate_texts(capsys: pytest.CaptureFixture[str]) -> None:
    with llmkit.Client([mock("a", ["emb"], 8)], ledger=None, health_interval=None) as client:
        client.embed(["a", "a", "b", "a", "b"], model="emb", progress=True)
        client.embed(["a", "c", "a", "c"], model="emb", progress=True)  # "a" cached, "c" fresh
    err = capsys.readouterr().err
    assert "5/5" in err and "4/4" in err
