"""Embeddings end to end: ``embedding`` and ``embed`` over the mock and the loopback fakes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
import pytest

import llmkit
from llmkit.embeddings import MemoryEmbeddingCache
from llmkit.testing import FakeGeminiServer, FakeOpenAIServer

from .conftest import FakeTime

KEY = "sk-embed-test-0123456789"


def mock_client(**kw: Any) -> llmkit.Client:
    return llmkit.Client([{"name": "mock", "adapter": "mock", "models": ["mock-embed"],
                           "pricing": {"mock-embed": {"input": 0.02, "output": 0.0}}}],
                         ledger=None, health_interval=None, **kw)


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(api_key=KEY, embedding_dimensions=8) as server:
        yield server


def embedding_calls(server: Any) -> list[Any]:
    return [r for r in server.requests if r.path.endswith(("/embeddings", ":batchEmbedContents"))]


def test_embedding_mock_is_deterministic_and_unit_norm() -> None:
    with mock_client() as client:
        first = client.embedding(model="mock-embed", input=["the cat sat", "a dog ran", "the cat sat"])
        again = client.embedding(model="mock-embed", input="the cat sat")
        usage = client.usage()
    assert isinstance(first, llmkit.EmbeddingResponse)
    assert first.vectors.dtype == np.float32 and first.vectors.shape == (3, 256) and first.dimensions == 256
    assert np.allclose(np.linalg.norm(first.vectors, axis=1), 1.0, atol=1e-6)
    assert np.array_equal(first.vectors[0], first.vectors[2]) and np.array_equal(first.vectors[0], again.vectors[0])
    assert not np.array_equal(first.vectors[0], first.vectors[1])
    assert first.cost_usd == pytest.approx(first.usage.input_tokens * 0.02 / 1e6)
    assert list(usage["kind"]) == ["embedding", "embedding"]
    assert list(usage["status"]) == ["ok", "ok"] and usage["input_tokens"].iloc[0] == first.usage.input_tokens


def test_similar_texts_are_closer_on_the_mock() -> None:
    with mock_client() as client:
        v = client.embedding(model="mock-embed", input=["red apple pie", "apple pie recipe", "quantum physics"]).vectors
    assert float(v[0] @ v[1]) > float(v[0] @ v[2])


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"input": []}, "non-empty list"),
    ({"input": ["ok", 3]}, r"input\[1\]"),
    ({"input": ["ok", "  "]}, "empty text"),
    ({"input": ["\ud800"]}, "surrogate"),
    ({"input": ["x"], "temperature": 0.5}, "temperature"),
    ({"input": ["x"], "model": ""}, "model"),
])
def test_bad_input_fails_before_sending(kwargs: dict[str, Any], match: str) -> None:
    kwargs.setdefault("model", "mock-embed")
    with mock_client() as client:
        with pytest.raises(llmkit.InvalidRequestError, match=match):
            client.embedding(**kwargs)
        assert client.provider("mock").calls == 0  # type: ignore[attr-defined]
        assert client.usage().empty


def test_adapter_without_embeddings_is_refused(fake_time: FakeTime) -> None:
    from llmkit.testing import FakeAnthropicServer

    with FakeAnthropicServer() as server, llmkit.Client(
            [{"name": "a", "adapter": "anthropic", "api_key": KEY, "base_url": server.url}], ledger=None,
            health_interval=None) as client:
        with pytest.raises(llmkit.InvalidRequestError, match="supports embeddings"):
            client.embedding(model="claude-x", input=["hi"])
        assert server.requests == []


def test_embed_keeps_index_and_order_for_10000_texts(openai_server: FakeOpenAIServer) -> None:
    texts = pd.Series([f"document number {i} about topic {i % 97}" for i in range(10_000)],
                      index=pd.Index([f"row-{i}" for i in reversed(range(10_000))], name="doc_id"))
    with llmkit.Client([{"name": "openai", "adapter": "openai", "api_key": KEY, "base_url": openai_server.url,
                         "models": ["text-embedding-3-small"]}], ledger=None, health_interval=None) as client:
        out = client.embed(texts, model="text-embedding-3-small", batch_size=500, progress=False)
        usage = client.usage()
    calls = embedding_calls(openai_server)
    assert len(calls) == 20 and all(len(c.json["input"]) == 500 for c in calls)
    assert list(out.index) == list(texts.index) and out.index.name == "doc_id"
    assert list(out.columns) == ["embedding"]
    expected = np.asarray(llmkit.providers.mock.mock_embedding(texts.iloc[1234], 8), dtype=np.float32)
    assert np.allclose(out["embedding"].iloc[1234], expected)  # each row's own vector, in input order
    assert len(usage) == 20 and set(usage["kind"]) == {"embedding"}
    assert out.attrs["embed"]["requests"] == 20 and out.attrs["embed"]["cost_usd"] > 0


def test_embed_dedupes_caches_and_returns_arrays(openai_server: FakeOpenAIServer) -> None:
    texts = ["alpha", "beta", "alpha", "gamma", "beta"]
    with llmkit.Client([{"name": "openai", "adapter": "openai", "api_key": KEY, "base_url": openai_server.url,
                         "models": ["text-embedding-3-small"]}], ledger=None, health_interval=None) as client:
        arr = client.embed(texts, model="text-embedding-3-small", as_array=True, progress=False)
        assert embedding_calls(openai_server)[0].json["input"] == ["alpha", "beta", "gamma"]
        again = client.embed(texts[::-1], model="text-embedding-3-small", progress=False)  # all cached
        fresh = client.embed(texts, model="text-embedding-3-small", progress=False, cache=False)
        own = MemoryEmbeddingCache()
        client.embed(["delta"], model="text-embedding-3-small", progress=False, cache=own)
    assert isinstance(arr, np.ndarray) and arr.shape == (5, 8)
    assert np.array_equal(arr[0], arr[2]) and np.array_equal(arr[1], arr[4])
    assert len(embedding_calls(openai_server)) == 3  # first run, cache=False run, "delta"
    assert again.attrs["embed"]["cached"] == 3 and again.attrs["embed"]["requests"] == 0
    assert np.allclose(np.stack(again["embedding"].to_list()), arr[::-1])
    assert np.allclose(np.stack(fresh["embedding"].to_list()), arr)
    assert len(own) == 1


def test_embed_cache_persists_in_the_cache_file_across_clients(openai_server: FakeOpenAIServer,
                                                               tmp_path: Any) -> None:
    """``embed`` keeps each text's vector in the client's cache file: a new client asks only for new texts."""
    entry = [{"name": "openai", "adapter": "openai", "api_key": KEY, "base_url": openai_server.url,
              "models": ["text-embedding-3-small"]}]
    path = tmp_path / "answers.sqlite3"
    with llmkit.Client(entry, ledger=None, health_interval=None, cache=str(path)) as client:
        first = client.embed(["alpha", "beta"], model="text-embedding-3-small", as_array=True, progress=False)
    with llmkit.Client(entry, ledger=None, health_interval=None, cache=str(path)) as client:
        again = client.embed(["beta", "alpha", "gamma"], model="text-embedding-3-small", as_array=True,
                             progress=False)
        other = client.embed(["alpha"], model="text-embedding-3-small", as_array=True, progress=False,
                             dimensions=4)  # another parameter that changes the vector: a miss
    calls = embedding_calls(openai_server)
    assert [c.json["input"] for c in calls] == [["alpha", "beta"], ["gamma"], ["alpha"]]
    assert np.allclose(again[:2], first[::-1]) and again.dtype == np.float32
    assert other.shape[0] == 1


def test_batches_stay_within_the_provider_limit() -> None:
    with FakeGeminiServer(api_key="g") as server, llmkit.Client(
            [{"name": "g", "adapter": "gemini", "api_key": "g", "base_url": server.url,
              "models": ["gemini-embedding-001"]}], ledger=None, health_interval=None) as client:
        out = client.embed([f"t{i}" for i in range(250)], model="gemini-embedding-001", batch_size=1000,
                           progress=False)
    calls = embedding_calls(server)
    # batchEmbedContents takes at most 100 (the batches run concurrently: any arrival order)
    assert sorted(len(c.json["requests"]) for c in calls) == [50, 100, 100]
    assert out.shape == (250, 1) and len(out["embedding"].iloc[0]) == 32


def test_fallback_only_to_models_of_the_same_dimension(openai_server: FakeOpenAIServer,
                                                       fake_time: FakeTime) -> None:
    providers = [
        {"name": "openai", "adapter": "openai", "api_key": KEY, "base_url": openai_server.url, "priority": 0,
         "models": ["text-embedding-3-small"], "max_retries": 0},
        {"name": "backup", "adapter": "mock", "priority": 1, "models": ["mock-1536", "mock-64"],
         "options": {"embedding_dimensions": 1536}},
    ]
    fallbacks = {"text-embedding-3-small": ["text-embedding-3-large", "mock-1536"]}
    with llmkit.Client(providers, fallbacks=fallbacks, ledger=None, health_interval=None, sleep=fake_time.sleep,
                       clock=fake_time.clock) as client:
        openai_server.enqueue_error(503, path="/v1/embeddings")
        resp = client.embedding(model="text-embedding-3-small", input=["hello"])
    # text-embedding-3-large (3072) is skipped; the 1536-wide backup model is used
    assert resp.provider == "backup" and resp.model == "mock-1536" and resp.vectors.shape == (1, 1536)
    assert [(a.provider, a.outcome) for a in resp.attempts] == [("openai", "error"), ("backup", "ok")]


def test_retries_and_errors_are_recorded(openai_server: FakeOpenAIServer, fake_time: FakeTime) -> None:
    with llmkit.Client([{"name": "openai", "adapter": "openai", "api_key": KEY, "base_url": openai_server.url,
                         "models": ["text-embedding-3-small"], "max_retries": 1}], ledger=None,
                       health_interval=None, sleep=fake_time.sleep, clock=fake_time.clock) as client:
        openai_server.enqueue_error(429, retry_after=2, path="/v1/embeddings")
        ok = client.embedding(model="text-embedding-3-small", input=["x"])
        openai_server.enqueue_error(400, path="/v1/embeddings")
        with pytest.raises(llmkit.BadRequestError):
            client.embedding(model="text-embedding-3-small", input=["y"])
        usage = client.usage()
    assert [a.outcome for a in ok.attempts] == ["error", "ok"] and 2.0 in fake_time.sleeps
    assert list(usage["status"]) == ["ok", "error"] and list(usage["kind"]) == ["embedding", "embedding"]


def test_budget_counts_embeddings() -> None:
    with mock_client(budget_usd=1.0) as client:
        client.embedding(model="mock-embed", input=["a b c d"] * 10)
        status = client.budget_status()
    assert status is not None and math.isclose(status["spent_usd"], client.usage()["cost_usd"].sum())


async def test_aembed_and_aembedding() -> None:
    with mock_client() as client:
        resp = await client.aembedding(model="mock-embed", input=["x y"])
        frame = await client.aembed(pd.Series(["x y", "z"], index=[10, 20]), model="mock-embed", progress=False)
    assert list(frame.index) == [10, 20]
    assert np.array_equal(frame["embedding"].iloc[0], resp.vectors[0])


def test_progress_bar_counts_texts(capsys: pytest.CaptureFixture[str]) -> None:
    with mock_client() as client:
        client.embed([f"t {i}" for i in range(30)], model="mock-embed", batch_size=7, progress=True)
    assert "30/30" in capsys.readouterr().err


@pytest.mark.timeout(30)
def test_close_ends_a_running_embedding_with_one_record() -> None:
    import threading

    client = llmkit.Client([{"name": "mock", "adapter": "mock", "models": ["mock-embed"],
                             "options": {"latency": 5.0}}], ledger=None, health_interval=None)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.embedding(model="mock-embed", input=["slow"])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    while client.in_flight() == 0:
        thread.join(0.01)
    ledger = client._service.ledger
    client.close()
    thread.join(10)
    assert len(errors) == 1 and isinstance(errors[0], llmkit.ClientClosedError)
    assert len(ledger) == 1
