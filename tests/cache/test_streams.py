"""Streams and the cache: a completed stream stores its answer, a hit replays it as chunks, a cut one stores nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import llmkit
from llmkit.testing import FakeOpenAIServer

from .conftest import MODEL, MSG, mock_client

LONG = " ".join(f"word{i}" for i in range(100))  # about 700 characters: several replayed chunks


def test_a_completed_stream_is_stored_and_replayed_as_chunks(cache_path: Path) -> None:
    with mock_client(cache_path, options={"replies": [LONG]}) as client:
        first = client.stream(MODEL, MSG)
        live = [c.text for c in first]
        second = client.stream(MODEL, MSG)
        replayed = [c for c in second]
        assert client.provider("m").calls == 1  # type: ignore[attr-defined]
        usage = client.usage()
    assert first.response is not None and first.response.cached is False
    assert second.response is not None and second.response.cached is True and second.response.cost_usd == 0.0
    texts = [c.text for c in replayed]
    assert "".join(texts) == "".join(live) == LONG
    assert len([t for t in texts if t]) > 5  # chunks, not one block
    assert replayed[-1].response is second.response  # the final chunk carries the Response, as usual
    assert second.response.usage == first.response.usage
    assert usage["stream"].tolist() == [True, True] and usage["cached"].tolist() == [False, True]
    assert usage["cost_saved_usd"].iloc[1] == pytest.approx(first.response.cost_usd)


def test_completion_and_stream_share_entries(cache_path: Path) -> None:
    with mock_client(cache_path) as client:
        answer = client.completion(MODEL, MSG)
        stream = client.stream(MODEL, MSG)
        assert stream.text == answer.content and stream.response is not None and stream.response.cached
        other = [{"role": "user", "content": "streamed first"}]
        streamed = client.stream(MODEL, other)
        text = streamed.text
        hit = client.completion(MODEL, other)
    assert hit.cached is True and hit.content == text


def test_astream_replays_a_hit(cache_path: Path) -> None:
    with mock_client(cache_path, options={"replies": [LONG]}) as client:
        client.completion(MODEL, MSG)

        async def read() -> tuple[str, llmkit.Response | None]:
            stream = client.astream(MODEL, MSG)
            parts = [c.text async for c in stream]
            return "".join(parts), stream.response

        text, response = asyncio.run(read())
    assert text == LONG and response is not None and response.cached is True


@pytest.mark.timeout(30)
def test_an_abandoned_stream_is_not_stored(cache_path: Path) -> None:
    with mock_client(cache_path, options={"replies": [LONG]}) as client:
        stream = client.stream(MODEL, MSG)
        next(iter(stream))
        stream.close()
        assert client.cache_info()["entries"] == 0
        again = client.stream(MODEL, MSG)
        assert again.text == LONG and again.response is not None and again.response.cached is False


@pytest.mark.timeout(30)
def test_a_truncated_stream_is_not_stored(cache_path: Path) -> None:
    with FakeOpenAIServer(reply=LONG) as server:
        server.enqueue_truncated(after=3)
        providers = [{"name": "oai", "adapter": "openai", "api_key": "sk-test", "base_url": server.url,
                      "max_retries": 0}]
        with llmkit.Client(providers, ledger=None, cache=cache_path, health_interval=None) as client:
            with pytest.raises(llmkit.LLMError):
                for _ in client.stream("gpt-4o", MSG):
                    pass
            assert client.cache_info()["entries"] == 0
            complete = client.stream("gpt-4o", MSG)
            assert complete.text == LONG and client.cache_info()["entries"] == 1
            replay = client.stream("gpt-4o", MSG)
            assert replay.text == LONG and replay.response is not None and replay.response.cached
        sent = [r for r in server.requests if r.path == "/v1/chat/completions"]
    assert len(sent) == 2


@pytest.mark.timeout(30)
def test_a_replay_abandoned_midway_is_recorded_once(cache_path: Path) -> None:
    with mock_client(cache_path, options={"replies": [LONG]}) as client:
        client.completion(MODEL, MSG)
        stream = client.stream(MODEL, MSG)
        next(iter(stream))
        stream.close()
        client.completion(MODEL, [{"role": "user", "content": "after"}])  # the loop has moved on
        usage = client.usage()
    assert len(usage) == 3 and usage["request_id"].is_unique
