"""A stored answer is served only while it still validates against the request's response_model/schema
(REVIEW item 3), and content-filtered answers are never stored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydantic
import pytest

import llmkit
from llmkit.testing import FakeOpenAIServer

from .conftest import MODEL, MSG, mock_client

GOOD = '{"label": "positive", "score": 5}'


class Loose(pydantic.BaseModel):
    label: str
    score: int


class Strict(pydantic.BaseModel):  # same JSON schema as Loose, a new validator
    label: str
    score: int

    @pydantic.field_validator("score")
    @classmethod
    def at_most_three(cls, value: int) -> int:
        if value > 3:
            raise ValueError("score must be at most 3")
        return value


Strict.__name__ = Loose.__name__  # the wire name is part of the key: same name, same schema -> same key


def test_the_two_models_share_a_cache_key() -> None:
    assert Loose.model_json_schema() == Strict.model_json_schema()


def _calls(client: llmkit.Client) -> int:
    return client.provider("m").calls  # type: ignore[attr-defined,no-any-return]


def test_a_stored_answer_that_no_longer_validates_is_a_miss_and_is_overwritten(cache_path: Path) -> None:
    replies = [GOOD, '{"label": "positive", "score": 2}']
    with mock_client(cache_path, options={"replies": replies}) as client:
        first = client.completion(MODEL, MSG, response_model=Loose)
        assert first.parsed == Loose(label="positive", score=5) and _calls(client) == 1
        again = client.completion(MODEL, MSG, response_model=Loose)
        assert again.cached and again.parsed == first.parsed and _calls(client) == 1
        # the validator changed: the stored answer fails it, so the provider is asked (not parsed=None)
        fresh = client.completion(MODEL, MSG, response_model=Strict)
        assert not fresh.cached and fresh.parsed == Strict(label="positive", score=2) and _calls(client) == 2
        # ... and the fresh, validated answer replaced the entry
        hit = client.completion(MODEL, MSG, response_model=Strict)
        assert hit.cached and hit.parsed == Strict(label="positive", score=2) and _calls(client) == 2
        info = client.cache_info()
        assert (info["hits"], info["misses"]) == (2, 2)


def test_a_stale_entry_gets_the_usual_validation_retries(cache_path: Path) -> None:
    replies = [GOOD, GOOD, '{"label": "positive", "score": 1}']
    with mock_client(cache_path, options={"replies": replies}) as client:
        client.completion(MODEL, MSG, response_model=Loose)
        resp = client.completion(MODEL, MSG, response_model=Strict)
        assert resp.parsed == Strict(label="positive", score=1) and not resp.cached
        assert _calls(client) == 3 and [a.error for a in resp.attempts] == ["OutputValidationError", None]


def test_a_stale_entry_streams_from_the_provider(cache_path: Path) -> None:
    replies = [GOOD, '{"label": "positive", "score": 3}']
    with mock_client(cache_path, options={"replies": replies}) as client:
        client.completion(MODEL, MSG, response_model=Loose)
        with client.stream(MODEL, MSG, response_model=Strict) as s:
            text = "".join(c.text for c in s)
        assert text == '{"label": "positive", "score": 3}' and _calls(client) == 2
        assert s.response is not None and not s.response.cached
        assert s.response.parsed == Strict(label="positive", score=3)
        with client.stream(MODEL, MSG, response_model=Strict) as s2:
            "".join(c.text for c in s2)
        assert s2.response is not None and s2.response.cached and _calls(client) == 2


def test_a_stale_entry_is_not_counted_as_cached_by_estimates(cache_path: Path) -> None:
    with mock_client(cache_path, options={"replies": [GOOD]}) as client:
        client.completion(MODEL, MSG, response_model=Loose)
        cache = client._service.cache
        assert cache.contains(client._request(MODEL, MSG, False, response_model=Loose))
        assert not cache.contains(client._request(MODEL, MSG, False, response_model=Strict))


@pytest.mark.parametrize("finish", ["content_filter", "refusal"])
def test_a_filtered_answer_is_not_stored(tmp_path: Path, finish: str) -> None:
    with FakeOpenAIServer() as server:
        providers: list[dict[str, Any]] = [{"name": "oai", "adapter": "openai", "api_key": "sk-test",
                                            "base_url": server.url}]
        with llmkit.Client(providers, ledger=None, health_interval=None, cache=tmp_path / "c.sqlite3") as client:
            server.enqueue("A partial ans", finish_reason=finish)
            server.enqueue("A complete answer.")
            server.enqueue("Never asked.")
            first = client.completion("gpt-4o", MSG)
            assert first.finish_reason == finish and first.content == "A partial ans"
            second = client.completion("gpt-4o", MSG)
            assert not second.cached and second.content == "A complete answer." and len(server.requests) == 2
            third = client.completion("gpt-4o", MSG)
            assert third.cached and third.content == "A complete answer." and len(server.requests) == 2


def test_a_length_cut_answer_is_stored(tmp_path: Path) -> None:
    """The key holds max_tokens: the same call would be cut the same way, so its answer is replayed."""
    with FakeOpenAIServer() as server:
        providers: list[dict[str, Any]] = [{"name": "oai", "adapter": "openai", "api_key": "sk-test",
                                            "base_url": server.url}]
        with llmkit.Client(providers, ledger=None, health_interval=None, cache=tmp_path / "c.sqlite3") as client:
            server.enqueue("Cut sh", finish_reason="length")
            client.completion("gpt-4o", MSG, max_tokens=2)
            again = client.completion("gpt-4o", MSG, max_tokens=2)
            assert again.cached and again.content == "Cut sh" and len(server.requests) == 1
