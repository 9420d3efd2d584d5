"""A real redis-server for the shared-state tests (``llmkit.testing.redis_server.RedisServer``): a free
127.0.0.1 port, persistence off, stopped after the session. Missing redis-server: the tests skip, except
in CI (``CI=true``), where that is a failure (``.ci/run`` installs it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from llmkit.testing.redis_server import RedisServer, free_port

__all__ = ["RedisServer", "free_port"]


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    if not RedisServer.available():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-server is missing; CI must install it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer().start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """A running server, emptied for this test."""
    if not redis_server.running:
        redis_server.start()
    redis_server.flush()
    return redis_server.url
