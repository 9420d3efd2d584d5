"""Managing a response cache whose Redis is away: warnings and a reported state, never an error."""

from __future__ import annotations

from typing import Any

import pytest

import llmkit

from .conftest import free_port


def _client(url: str) -> llmkit.Client:
    providers: list[dict[str, Any]] = [{"name": "m", "adapter": "mock", "models": ["*"]}]
    return llmkit.Client(providers, ledger=None, health_interval=None, shared_state=url, cache="redis")


@pytest.mark.timeout(60)
def test_clear_cache_with_redis_away_is_a_warning_not_an_error() -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    with _client(url) as client:
        client.clear_cache()  # never raises (the builtin ConnectionError used to escape)
        client.clear_cache()  # again, inside the retry pause
        warnings = " ".join(map(str, client.events("cache_warning")["message"]))
        assert "could not be cleared" in warnings and "s3cret-pw" not in warnings
        info = client.cache_info()
        assert info["warning"] and "could not be read" in info["warning"] and "s3cret-pw" not in info["warning"]
        assert (info["entries"], info["hits"], info["misses"]) == (0, 0, 0)


def test_a_working_cache_reports_no_warning() -> None:
    with llmkit.Client([{"name": "m", "adapter": "mock"}], ledger=None, health_interval=None,
                       cache=":memory:") as client:
        client.clear_cache()
        assert client.cache_info()["warning"] is None
